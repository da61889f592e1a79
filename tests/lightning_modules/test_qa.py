"""Extractive QA module: config through train.py, post-processing over the DataModule's windows, prediction files."""
import json

import pytest
import torch

import train
from tests import fixtures
from tests.cli import model_data_args, quiet_run_args

CONFIG = "configs/finetune/squad.yaml"


def run_cli(subcommand, data_dir, model_dir, tmp_path, *extra, eval_file="squad/dev-v1.1.json"):
    return train.main(args=[
        subcommand, "--config", CONFIG, *model_data_args(data_dir, model_dir),
        f"--data.init_args.train_file={eval_file}", f"--data.init_args.eval_file={eval_file}",
        "--data.init_args.train_articles=[0, 1]", "--data.init_args.eval_articles=[1, 2]",
        "--data.init_args.max_seq_length=64", "--data.init_args.doc_stride=16", "--data.init_args.batch_size=4",
        *quiet_run_args(tmp_path), *extra,
    ])


def test_print_config(capsys):
    with pytest.raises(SystemExit):
        train.main(args=["fit", "--config", CONFIG, "--print_config"])
    out = capsys.readouterr().out
    assert "lightning_modules.qa.QuestionAnsweringModule" in out and "- 38" in out


def test_fast_dev_run_then_predict_files(data_dir, tiny_bert_dir, tmp_path):
    cli = run_cli("fit", data_dir, tiny_bert_dir, tmp_path, "--trainer.fast_dev_run=true")
    m = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    assert {"train/loss", "val/exact_match", "val/f1", "val/score"} <= set(m) and m["val/score"] == m["val/f1"]
    assert cli.model.model.training and not cli.model.version_2
    out = tmp_path / "pred"
    run_cli("predict", data_dir, tiny_bert_dir, tmp_path, f"--model.init_args.output_dir={out}")
    predictions = json.loads((out / "predictions.json").read_text())
    eval_ids = [qa["id"] for p in fixtures.squad_json()["data"][1]["paragraphs"] for qa in p["qas"]]
    assert sorted(predictions) == sorted(eval_ids) and all(isinstance(v, str) for v in predictions.values())
    assert not (out / "null_odds.json").exists()


def test_v2_predict_writes_null_odds(data_dir, tiny_bert_dir, tmp_path):
    out = tmp_path / "pred"
    cli = run_cli("predict", data_dir, tiny_bert_dir, tmp_path, f"--model.init_args.output_dir={out}",
                  eval_file="squad/dev-v2.0.json")
    assert cli.model.version_2
    predictions = json.loads((out / "predictions.json").read_text())
    odds = json.loads((out / "null_odds.json").read_text())
    assert sorted(odds) == sorted(predictions) and len(predictions) == 4  # 2 paragraphs x (answerable + not)


@pytest.mark.parametrize("version_2", [False, True])
def test_oracle_logits_over_windows_score_100(tmp_path, wordpiece_tokenizer_dir, tiny_bert_dir, version_2):
    """Logits peaked at the DataModule's gold positions give every answer back, across overflowing windows."""
    from datamodules.squad import SQuADDataModule
    from lightning_modules.qa import QuestionAnsweringModule

    name = "dev-v2.0.json" if version_2 else "dev-v1.1.json"
    fixtures.write_squad(tmp_path / "squad" / name, n_articles=1, n_paragraphs=3, long_context=True,
                         with_impossible=version_2, seed=3)
    dm = SQuADDataModule(str(wordpiece_tokenizer_dir), train_file=None, eval_file=f"squad/{name}",
                         train_articles=None, eval_articles=None, data_dir=str(tmp_path), max_seq_length=64,
                         doc_stride=16, cache_dir=str(tmp_path / "cache"))
    dm.setup("validate")
    features = dm.eval_features
    assert len(features) > 2 * len(dm.eval_examples)  # long contexts: several windows per question
    module = QuestionAnsweringModule(str(tiny_bert_dir), task_name=dm.task_name)
    for f, (s, e, ids) in enumerate(zip(features["start_positions"], features["end_positions"],
                                        features["input_ids"])):
        start, end = torch.zeros(len(ids)), torch.zeros(len(ids))
        start[s] += 10.0
        end[e] += 10.0
        module._outputs.append((f, start, end))
    predictions, null_odds, golds = module._predictions(dm)
    from evaluation.squad import squad_scores
    scores = squad_scores(predictions, golds, version_2=version_2)
    assert scores["exact_match"] == 100.0 and scores["total"] == len(dm.eval_examples)
    assert bool(null_odds) == version_2
    if version_2:
        assert scores["NoAns_total"] == 3 and scores["HasAns_exact_match"] == 100.0


def test_task_name_must_be_squad(tiny_bert_dir):
    from lightning_modules.qa import QuestionAnsweringModule

    with pytest.raises(ValueError, match="squad_v2"):
        QuestionAnsweringModule(str(tiny_bert_dir), task_name="sst2")
