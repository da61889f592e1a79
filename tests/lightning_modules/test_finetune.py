"""GLUE fine-tuning module through train.py: config, metrics per task, regression head, prediction files, export."""
import csv

import pytest
import torch

import train
from tests.cli import model_data_args, quiet_run_args

CONFIG = "configs/finetune/glue.yaml"


def run_cli(subcommand, data_dir, model_dir, tmp_path, task, *extra):
    """train.main in-process on the tiny fixtures (tiny BERT, tiny GLUE files), everything written under tmp_path."""
    return train.main(args=[
        subcommand, "--config", CONFIG, f"--data.init_args.task_name={task}", *model_data_args(data_dir, model_dir),
        "--data.init_args.batch_size=8", *quiet_run_args(tmp_path), *extra,
    ])


def metrics(cli):
    return {k: float(v) for k, v in cli.trainer.callback_metrics.items()}


def test_print_config(capsys):
    with pytest.raises(SystemExit):
        train.main(args=["fit", "--config", CONFIG, "--print_config"])
    out = capsys.readouterr().out
    assert "lightning_modules.finetune.SequenceClassificationModule" in out and "monitor: val/score" in out


def test_fast_dev_run_sst2(data_dir, tiny_bert_dir, tmp_path):
    cli = run_cli("fit", data_dir, tiny_bert_dir, tmp_path, "sst2", "--trainer.fast_dev_run=true")
    model = cli.model
    assert model.model.training  # dropout on: from_pretrained's eval mode must not leak into training
    # The files say 0/1; the model (and its export) says what they mean, as the hub's glue/sst2 does.
    assert model.model.config.id2label == {0: "negative", 1: "positive"}
    assert model.label_names == ["0", "1"]  # prediction files keep the data's label strings
    assert {"train/loss", "val/accuracy", "val/score"} <= set(metrics(cli))
    assert metrics(cli)["val/score"] == metrics(cli)["val/accuracy"]


def test_mnli_two_dev_sets_and_export_with_label_names(data_dir, tiny_bert_dir, tmp_path):
    cli = run_cli("fit", data_dir, tiny_bert_dir, tmp_path, "mnli", "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
                  "--trainer.limit_val_batches=1", "--trainer.num_sanity_val_steps=0")
    m = metrics(cli)
    assert m["val/score"] == pytest.approx((m["val/matched/accuracy"] + m["val/mismatched/accuracy"]) / 2)
    export = next(tmp_path.rglob("hf_export/last"))
    from transformers import AutoConfig, AutoModelForSequenceClassification
    config = AutoConfig.from_pretrained(export)
    assert config.id2label == {0: "contradiction", 1: "entailment", 2: "neutral"}
    assert config.label2id["neutral"] == 2
    reloaded = AutoModelForSequenceClassification.from_pretrained(export)
    assert torch.equal(reloaded.classifier.weight, cli.model.model.classifier.weight.cpu())
    card = cli.model.model_card_info()
    assert card["task"] == "mnli" and card["recipe"]["lr"] == 5e-5 and "val/score" in card["metrics"]


def test_stsb_regression_head_and_correlations(data_dir, tiny_bert_dir, tmp_path):
    cli = run_cli("fit", data_dir, tiny_bert_dir, tmp_path, "stsb", "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
                  "--trainer.num_sanity_val_steps=0")
    config = cli.model.model.config
    assert config.num_labels == 1 and config.problem_type == "regression"
    m = metrics(cli)
    assert m["val/score"] == pytest.approx((m["val/pearson"] + m["val/spearman"]) / 2)
    # The checkpoint re-loads through the CLI (its hparams hold no linked data facts) and scores the same.
    ckpt = next(tmp_path.rglob("checkpoints/best-*.ckpt"))
    again = run_cli("validate", data_dir, tiny_bert_dir, tmp_path, "stsb", f"--ckpt_path={ckpt}")
    assert metrics(again)["val/pearson"] == pytest.approx(m["val/pearson"], abs=1e-4)
    out = tmp_path / "pred"
    run_cli("predict", data_dir, tiny_bert_dir, tmp_path, "stsb", f"--model.init_args.output_dir={out}")
    rows = (out / "STS-B.tsv").read_text().splitlines()
    assert rows[0] == "index\tprediction" and len(rows) == 1 + 12
    assert [int(r.split("\t")[0]) for r in rows[1:]] == list(range(12))
    float(rows[1].split("\t")[1])  # a float score


def test_predict_tsv_matches_validation_accuracy(data_dir, tiny_bert_dir, tmp_path):
    """RTE: label strings in the submission file, and the file agrees with the logged dev accuracy."""
    out = tmp_path / "pred"
    run_cli("predict", data_dir, tiny_bert_dir, tmp_path, "rte", f"--model.init_args.output_dir={out}")
    with open(out / "RTE.tsv", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    assert rows[0] == ["index", "prediction"] and len(rows) == 13
    assert {r[1] for r in rows[1:]} <= {"entailment", "not_entailment"}
    # Same seed, same initial head: `validate` scores the same predictions against the dev labels.
    with open(data_dir / "glue" / "RTE" / "dev.tsv", newline="") as f:
        gold = [r["label"] for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]
    accuracy = 100 * sum(p[1] == g for p, g in zip(rows[1:], gold)) / len(gold)
    cli = run_cli("validate", data_dir, tiny_bert_dir, tmp_path, "rte")
    assert metrics(cli)["val/accuracy"] == pytest.approx(accuracy)


def test_mnli_predict_writes_matched_and_mismatched(data_dir, tiny_bert_dir, tmp_path):
    out = tmp_path / "pred"
    run_cli("predict", data_dir, tiny_bert_dir, tmp_path, "mnli", f"--model.init_args.output_dir={out}")
    assert sorted(p.name for p in out.iterdir()) == ["MNLI-m.tsv", "MNLI-mm.tsv"]
    labels = {line.split("\t")[1] for line in (out / "MNLI-mm.tsv").read_text().splitlines()[1:]}
    assert labels <= {"contradiction", "entailment", "neutral"}


def test_label_names_must_match_num_labels(tiny_bert_dir):
    from lightning_modules.finetune import SequenceClassificationModule

    with pytest.raises(ValueError, match="num_labels is 3"):
        SequenceClassificationModule(str(tiny_bert_dir), num_labels=3, label_names=["a", "b"])


def own_files(tmp_path, codes):
    """Your own CSVs: train (24 rows), dev (8), and an unlabelled test file (no label column)."""
    words = ["film", "city", "river", "king"]
    for name, n in (("train", 24), ("dev", 8)):
        rows = [f"the {words[i % len(codes)]} was good,{codes[i % len(codes)]}" for i in range(n)]
        (tmp_path / f"{name}.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    (tmp_path / "test.csv").write_text("text\nthe film\nthe king was bad\n")
    return [f"--data.init_args.{k}_file={tmp_path / f'{n}.csv'}" for k, n in
            (("train", "train"), ("validation", "dev"), ("test", "test"))] + [
        "--data.init_args.text_columns=[text]", "--data.init_args.label_column=label"]


def test_coded_labels_export_names_and_max_steps_mid_epoch_validates(data_dir, tiny_bert_dir, tmp_path, capsys):
    """Labels 1..4 named by label_map: the export says "Sports", the prediction file keeps "2". max_steps=2 stops
    inside the 3-batch epoch: the run still validates there, so `best` (checkpoint and export) exists."""
    files = own_files(tmp_path, codes=(1, 2, 3, 4))
    label_map = "--data.init_args.label_map={1: World, 2: Sports, 3: Business, 4: Sci/Tech}"
    cli = run_cli("fit", data_dir, tiny_bert_dir, tmp_path, "custom", *files, label_map, "--trainer.max_steps=2",
                  "--trainer.num_sanity_val_steps=0")
    assert cli.trainer.global_step == 2 and "val/score" in metrics(cli)
    from transformers import AutoConfig
    config = AutoConfig.from_pretrained(next(tmp_path.rglob("hf_export/best")))
    assert config.id2label == {0: "World", 1: "Sports", 2: "Business", 3: "Sci/Tech"}
    ckpt = next(tmp_path.rglob("checkpoints/best-*.ckpt"))
    assert "step2" in ckpt.name
    out = capsys.readouterr().out
    assert "final metrics of fit (step 2)" in out and "best val/score" in out
    assert any(line.split()[:1] == ["val/accuracy"] for line in out.splitlines())
    run_cli("predict", data_dir, tiny_bert_dir, tmp_path, "custom", *files, label_map, f"--ckpt_path={ckpt}",
            "--data.init_args.predict_split=test")
    rows = (tmp_path / "predictions" / "custom.tsv").read_text().splitlines()
    assert rows[0] == "index\tprediction" and len(rows) == 3
    assert {r.split("\t")[1] for r in rows[1:]} <= {"1", "2", "3", "4"}


def test_binary_own_task_scores_f1_and_validate_prints_the_table(data_dir, tiny_bert_dir, tmp_path, capsys):
    files = own_files(tmp_path, codes=(0, 1))
    cli = run_cli("validate", data_dir, tiny_bert_dir, tmp_path, "custom", *files)
    m = metrics(cli)
    assert m["val/score"] == pytest.approx((m["val/accuracy"] + m["val/f1"]) / 2)
    out = capsys.readouterr().out
    assert "final metrics of validate" in out and "val/f1" in out
    assert "Validate metric" not in out  # Lightning's own table is off by default (--verbose true brings it back)
