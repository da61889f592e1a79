"""Exact resume, per recipe: a run stopped mid-epoch by SIGTERM (which saves `last.ckpt`) and resumed with
`--ckpt_path last` trains on the same batches with the same losses as the run that was never stopped.

What makes it exact: the training loader's position is in the checkpoint (`datamodules/loaders.py`), the data order
and the masks are functions of (seed, epoch, example), dropout is a function of (seed, epoch, batch, rank)
(`callbacks/step_seed.py`), and the learning-rate and temperature schedules are restored by Lightning. The tiny
models here have dropout 0.1, so a resumed run with other dropout masks would show.
"""
from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertForMaskedLM, BertForSequenceClassification

import train
from tests.conftest import TINY

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DROPOUT = {**TINY, "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1}
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", "--trainer.accelerator=cpu",
         "--trainer.limit_val_batches=0", "--trainer.num_sanity_val_steps=0", "--trainer.max_time=null"]
STOP_AT, MAX_STEPS = 3, 6


def save(model, tok, out: Path) -> Path:
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture
def bert_mlm_dir(tmp_path, wordpiece_tokenizer_dir) -> Path:
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(wordpiece_tokenizer_dir)
    return save(BertForMaskedLM(BertConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, **DROPOUT)), tok,
                tmp_path / "bert-mlm")


@pytest.fixture
def bert_classifier_dir(tmp_path, wordpiece_tokenizer_dir) -> Path:
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(wordpiece_tokenizer_dir)
    config = BertConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, num_labels=2,
                        id2label={0: "0", 1: "1"}, label2id={"0": 0, "1": 1}, **{**DROPOUT, "num_hidden_layers": 6})
    model = BertForSequenceClassification(config)
    model.config.architectures = ["BertForSequenceClassification"]
    return save(model, tok, tmp_path / "bert-classifier")


@pytest.fixture
def roberta_mlm_dir(tmp_path, bpe_tokenizer_dir) -> Path:
    from transformers import RobertaConfig, RobertaForMaskedLM

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(bpe_tokenizer_dir)
    config = RobertaConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                           eos_token_id=tok.eos_token_id, type_vocab_size=1,
                           **{**DROPOUT, "num_hidden_layers": 4, "max_position_embeddings": 132})
    return save(RobertaForMaskedLM(config), tok, tmp_path / "roberta-mlm")


def recipe_args(recipe: str, data_dir: Path, models: dict) -> list[str]:
    data = [f"--data.init_args.data_dir={data_dir}", "--data.init_args.batch_size=2", "--data.init_args.max_seq_length=32"]
    if recipe == "mlm":
        return ["--config", str(CONFIGS / "mlm" / "roberta_small.yaml"), *data,
                f"--data.init_args.tokenizer={models['roberta']}", "--model.init_args.hidden_size=32",
                "--model.init_args.num_hidden_layers=2", "--model.init_args.num_attention_heads=4",
                "--model.init_args.intermediate_size=64", "--model.init_args.max_seq_length=32",
                "--model.init_args.hidden_dropout_prob=0.1", "--model.init_args.attention_probs_dropout_prob=0.1"]
    if recipe == "finetune":
        return ["--config", str(CONFIGS / "finetune" / "glue.yaml"), *data, "--data.init_args.task_name=sst2",
                f"--data.init_args.tokenizer={models['bert']}", f"--model.init_args.pretrained={models['bert']}"]
    if recipe == "general_distillation":
        return ["--config", str(CONFIGS / "distill" / "roberta_general.yaml"), *data,
                f"--data.init_args.tokenizer={models['roberta']}", f"--model.init_args.teacher={models['roberta']}"]
    if recipe == "layerwise_distillation":  # a narrower student: the learned projection and its optimiser state resume
        return ["--config", str(CONFIGS / "distill" / "tinybert_general.yaml"), *data,
                f"--data.init_args.tokenizer={models['roberta']}", f"--model.init_args.teacher={models['roberta']}",
                "--model.init_args.student_size={num_hidden_layers: 2, hidden_size: 16, num_attention_heads: 4, "
                "intermediate_size: 32}"]
    # 10 rows: 5 batches an epoch, so the 6 steps are more than an epoch and the teacher's logits come from the cache
    # that fit builds (lightning_modules/distill_tasks.py), again on resume
    return ["--config", str(CONFIGS / "distill" / "glue.yaml"), *data, "--data.init_args.task_name=sst2",
            "--data.init_args.max_train_samples=10", f"--data.init_args.tokenizer={models['classifier']}",
            f"--model.init_args.teacher={models['classifier']}"]


def losses(path: Path) -> dict[int, tuple]:
    """Step -> (epoch, batch_idx, loss, examples) of each logged batch (a resumed run's lines replace the first's)."""
    out = {}
    for line in path.read_text().splitlines():
        r = json.loads(line)
        out[r["step"]] = (r["epoch"], r["batch_idx"], r["loss"], r["examples"])
    return out


@pytest.mark.parametrize("recipe", ["mlm", "finetune", "general_distillation", "task_distillation",
                                    "layerwise_distillation"])
def test_interrupted_run_continues_the_same_trajectory(recipe, tmp_path, monkeypatch, data_dir, bert_mlm_dir,
                                                       bert_classifier_dir, roberta_mlm_dir):
    monkeypatch.chdir(tmp_path)  # the configs' relative artifact folders land here
    models = {"bert": bert_mlm_dir, "classifier": bert_classifier_dir, "roberta": roberta_mlm_dir}
    base = recipe_args(recipe, data_dir, models) + QUIET + [f"--trainer.max_steps={MAX_STEPS}"]

    def run(name: str, *extra: str) -> int:
        root = tmp_path / name
        return train.run(["fit", *base, f"--trainer.default_root_dir={root}",
                          f"--trainer.logger.init_args.save_dir={root}", "--trainer.callbacks+=tests.cli.LossLog",
                          f"--trainer.callbacks.init_args.path={root}.jsonl", *extra])

    assert run("straight") == 0
    with pytest.raises(SystemExit) as stopped:
        run("stopped", "--trainer.callbacks+=tests.cli.SignalAt", f"--trainer.callbacks.init_args.step={STOP_AT}")
    assert stopped.value.code == 128 + signal.SIGTERM
    assert (tmp_path / "stopped.jsonl").read_text().count("\n") == STOP_AT
    assert run("stopped", "--ckpt_path=last") == 0

    straight, resumed = losses(tmp_path / "straight.jsonl"), losses(tmp_path / "stopped.jsonl")
    assert sorted(straight) == sorted(resumed) == list(range(1, MAX_STEPS + 1))
    assert straight[STOP_AT + 1][1] > 0  # the stop and the resume fall inside an epoch
    for step in range(1, MAX_STEPS + 1):
        a, b = straight[step], resumed[step]
        assert a[:2] == b[:2] and a[3] == b[3], f"step {step}: other batch {a[:2]} {a[3]} vs {b[:2]} {b[3]}"
        assert b[2] == pytest.approx(a[2], abs=1e-5), f"step {step}: loss {b[2]} vs {a[2]}"
