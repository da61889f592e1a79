"""Multi-process training: `strategy: ddp` with 2 CPU processes (gloo) through train.py, on the tiny fixtures.

Lightning's DDP launcher re-runs the script for rank 1, so each 2-process run is `python train.py fit ...` in a
subprocess; the 1-process reference runs go through `train.main` in this process. `tests.ddp_recorder.BatchRecorder`
writes what every rank trained and validated on. Checked, per recipe (configs/mlm/roberta_small.yaml,
configs/finetune/glue.yaml, configs/distill/roberta_general.yaml, configs/distill/glue.yaml):
- each rank trains on its own shard (disjoint at every step; over an epoch they cover what is not dropped);
- 2 processes with batch B see at every step exactly the examples 1 process with batch 2B sees, and give the same
  per-step losses (mean over ranks; dropout 0) for MLM, GLUE fine-tuning and general distillation;
- length grouping survives DDP; validation counts every dev example exactly once (no repeats, unequal shards);
- with gradient accumulation no optimiser step is cut short at an epoch end;
- GLUE fine-tuning with the training step compiled (callbacks/compile.py) gives one eager process's steps and losses.
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

import train
from tests.conftest import TINY
from tests.ddp_recorder import load_records, padding_fraction

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
DDP = ["--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu"]
# fp32 on any machine: one process and two are compared at float rounding, far below bf16-mixed's (the default
# where the CPU has bf16)
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", "--trainer.precision=32-true"]
TINY_MLM = ["--model.init_args.hidden_size=32", "--model.init_args.num_hidden_layers=2",
            "--model.init_args.num_attention_heads=4", "--model.init_args.intermediate_size=64",
            "--model.init_args.max_seq_length=32", "--model.init_args.hidden_dropout_prob=0",
            "--model.init_args.attention_probs_dropout_prob=0"]
LOSS_TOLERANCE = 1e-5


def recorder(out_dir: Path) -> str:
    spec = {"class_path": "tests.ddp_recorder.BatchRecorder", "init_args": {"out_dir": str(out_dir)}}
    return f"--trainer.callbacks+={json.dumps(spec)}"


def run_two_processes(args: list[str], cwd: Path) -> None:
    """`python train.py fit ARGS` with 2 CPU processes (the launcher starts rank 1 with the same command line)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run([sys.executable, str(REPO / "train.py"), "fit", *args, *DDP, *QUIET], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-8000:]}"


def run_one_process(args: list[str], cwd: Path, monkeypatch) -> None:
    monkeypatch.chdir(cwd)  # the configs' relative artifact paths land under cwd
    train.main(args=["fit", *args, "--trainer.accelerator=cpu", "--trainer.devices=1", *QUIET])


def steps(records: list[dict]) -> list[list[dict]]:
    """Training batches grouped by step: steps(records)[k][r] is rank r's k-th batch."""
    per_rank = [r["train"] for r in records]
    assert len({len(batches) for batches in per_rank}) == 1, "ranks ran different numbers of batches"
    return [list(batch) for batch in zip(*per_rank)]


def assert_same_steps_and_losses(single: list[dict], double: list[dict], n_loss_steps: int = 3,
                                 tolerance: float = LOSS_TOLERANCE) -> None:
    """Step k of the 2-process run = step k of the 1-process run: the same examples, the same loss."""
    (one,) = single
    two = steps(double)
    assert len(one["train"]) == len(two) >= n_loss_steps
    for k, (batch, shards) in enumerate(zip(one["train"], two)):
        a, b = shards[0]["indices"], shards[1]["indices"]
        assert not set(a) & set(b), f"step {k}: ranks share examples"
        assert a + b == batch["indices"], f"step {k}: 2 processes saw {a} + {b}, 1 process {batch['indices']}"
    for k in range(n_loss_steps):
        mean_over_ranks = sum(s["loss"] for s in two[k]) / 2
        assert mean_over_ranks == pytest.approx(one["train"][k]["loss"], abs=tolerance), f"step {k}"


def assert_validation_once(records: list[dict], dev_size: int) -> None:
    """Every validation epoch: ranks' examples disjoint, together the whole dev set, none repeated."""
    n_epochs = {len(r["val"]) for r in records}
    assert len(n_epochs) == 1 and n_epochs.pop() >= 1
    for epoch in zip(*[r["val"] for r in records]):
        shards = [e["indices"] for e in epoch]
        assert sum(map(len, shards)) == dev_size and set().union(*shards) == set(range(dev_size))
        for e in epoch:
            if "val_metric_examples" in e:
                assert e["val_metric_examples"] == dev_size  # the metric counted each example once


def assert_same_val_metrics(single: list[dict], double: list[dict], keys: list[str], tolerance: float = 1e-4) -> None:
    """The validation figures of both runs agree (same weights up to float error; each example counted once)."""
    for one, two in zip(single[0]["val"], double[0]["val"], strict=True):
        for key in keys:
            # relative too: perplexity is exp(loss), so a 1e-6 difference in the loss shows as 4e-4 at 400
            assert two["metrics"][key] == pytest.approx(one["metrics"][key], abs=tolerance, rel=tolerance), key


def glue_args(out: Path, batch_size: int, data_dir: Path, classifier: Path) -> list[str]:
    """configs/finetune/glue.yaml on SST-2 with a local classifier, logging every step into `out`, recorded."""
    return ["--config", str(CONFIGS / "finetune" / "glue.yaml"), f"--model.init_args.pretrained={classifier}",
            f"--data.init_args.tokenizer={classifier}", f"--data.init_args.data_dir={data_dir}",
            "--data.init_args.task_name=sst2", f"--data.init_args.batch_size={batch_size}",
            "--trainer.log_every_n_steps=1", f"--trainer.default_root_dir={out}",
            f"--trainer.logger.init_args.save_dir={out}", recorder(out)]


# ---- fixtures ----------------------------------------------------------------------------------------------------
@pytest.fixture
def tiny_classifier_dir(tmp_path, wordpiece_tokenizer_dir) -> Path:
    """A random-init 2-layer BERT sequence classifier (dropout 0) with its tokenizer; teacher of the task student."""
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(wordpiece_tokenizer_dir)
    config = BertConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, num_labels=2,
                        id2label={0: "0", 1: "1"}, label2id={"0": 0, "1": 1}, **TINY)
    model = BertForSequenceClassification(config)
    model.config.architectures = ["BertForSequenceClassification"]
    out = tmp_path / "classifier"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


# ---- MLM pretraining ---------------------------------------------------------------------------------------------
def test_mlm_two_processes_match_one_with_the_double_batch(tmp_path, monkeypatch, data_dir, bpe_tokenizer_dir):
    def args(out: Path, batch_size: int) -> list[str]:
        return ["--config", str(CONFIGS / "mlm" / "roberta_small.yaml"), *TINY_MLM,
                f"--data.init_args.tokenizer={bpe_tokenizer_dir}", f"--data.init_args.data_dir={data_dir}",
                "--data.init_args.max_seq_length=32", f"--data.init_args.batch_size={batch_size}",
                "--data.init_args.eval_batch_size=5", "--trainer.max_steps=3", "--trainer.val_check_interval=3",
                "--trainer.limit_val_batches=1.0", "--trainer.log_every_n_steps=1",
                f"--trainer.default_root_dir={out}", f"--trainer.logger.init_args.save_dir={out}", recorder(out)]

    run_one_process(args(tmp_path / "one", 8), tmp_path, monkeypatch)
    run_two_processes(args(tmp_path / "two", 4), tmp_path)
    single, double = load_records(tmp_path / "one"), load_records(tmp_path / "two")
    assert [r["world_size"] for r in double] == [2, 2] and all(r["global_step"] == 3 for r in single + double)
    assert_same_steps_and_losses(single, double)
    n_val = len(single[0]["val"][0]["indices"])  # one process validates every block once, in order
    assert single[0]["val"][0]["indices"] == list(range(n_val))
    assert_validation_once(double, n_val)
    assert_same_val_metrics(single, double, ["val/loss", "val/perplexity", "val/accuracy"])


# ---- GLUE fine-tuning --------------------------------------------------------------------------------------------
def test_glue_finetune_shards_keeps_length_groups_counts_dev_once_and_never_cuts_a_step(
        tmp_path, monkeypatch, data_dir, tiny_classifier_dir):
    # 20 train rows, global batch 4: 5 batches per rank per epoch, accumulation 2 -> 4 kept, 2 optimiser steps.
    # 11 dev rows, eval batch 5: rank 0 gets 6 (2 batches), rank 1 gets 5 (1 batch); one process: 3 batches.
    def args(out: Path, batch_size: int) -> list[str]:
        return glue_args(out, batch_size, data_dir, tiny_classifier_dir) + [
            "--data.init_args.group_by_length=true", "--data.init_args.max_train_samples=20",
            "--data.init_args.max_eval_samples=11", "--data.init_args.eval_batch_size=5",
            "--trainer.accumulate_grad_batches=2", "--trainer.max_epochs=2"]

    run_one_process(args(tmp_path / "one", 4), tmp_path, monkeypatch)
    run_two_processes(args(tmp_path / "two", 2), tmp_path)
    single, double = load_records(tmp_path / "one"), load_records(tmp_path / "two")

    # accumulation: 4 of the 5 batches per epoch kept, so 2 full optimiser steps per epoch and none cut short
    for record in single + double:
        assert record["train_batches_per_epoch"] == 4 and record["global_step"] == 2 * (4 // 2)
    # sharding: at each step the 2 ranks hold the halves of the 1-process batch; losses agree
    assert_same_steps_and_losses(single, double)
    per_epoch = [[b for b in steps(double) if b[0]["epoch"] == e] for e in (0, 1)]
    kept = []
    for epoch in per_epoch:
        shards = [[i for b in epoch for i in b[r]["indices"]] for r in (0, 1)]
        assert len(shards[0]) == len(shards[1]) == 8 and not set(shards[0]) & set(shards[1])
        kept.append(set(shards[0]) | set(shards[1]))
    assert all(len(k) == 16 for k in kept) and kept[0] != kept[1]  # a different 4 dropped each epoch (reshuffled)

    # length grouping survives DDP: per-rank padding near the 1-process figure, far below random batches of 2
    lengths = {i: n for b in single[0]["train"] for i, n in zip(b["indices"], b["lengths"])}
    rng, values, random_padding = random.Random(0), list(lengths.values()), []
    for _ in range(200):
        rng.shuffle(values)
        pairs = [values[i:i + 2] for i in range(0, len(values) - 1, 2)]
        random_padding.append(1 - sum(map(sum, pairs)) / sum(2 * max(p) for p in pairs))
    random_padding = sum(random_padding) / len(random_padding)
    one_process = padding_fraction(single[0]["train"])
    for record in double:
        assert padding_fraction(record["train"]) <= one_process + 0.02
        assert padding_fraction(record["train"]) < random_padding / 2, (one_process, random_padding)
    print(f"padding: 1 process {one_process:.3f}, ranks {[round(padding_fraction(r['train']), 3) for r in double]}, "
          f"random batches of 2 {random_padding:.3f}")

    # validation: every dev example once per epoch, on ranks with different numbers of batches
    assert_validation_once(double, 11)
    assert_validation_once(single, 11)
    assert_same_val_metrics(single, double, ["val/loss", "val/accuracy"])


def test_glue_finetune_compiled_on_two_processes_matches_one_eager(tmp_path, monkeypatch, data_dir,
                                                                     tiny_classifier_dir):
    """The compiled training step (callbacks/compile.py, what glue.yaml does in long fits) under DDP: the same steps
    and losses as one eager process with the double batch."""
    def args(out: Path, batch_size: int) -> list[str]:
        return glue_args(out, batch_size, data_dir, tiny_classifier_dir) + [
            "--data.init_args.max_train_samples=16", "--data.init_args.max_eval_samples=4", "--trainer.max_steps=3",
            "--model.init_args.warmup_ratio=0"]

    # a second TorchCompile beside the config's (whose min_steps leaves a 3-step fit eager), compiling every fit;
    # aot_eager traces as inductor does (dynamo + AOTAutograd) without generating code: quick in a test
    compiled = ['--trainer.callbacks+={"class_path": "callbacks.compile.TorchCompile", '
                '"init_args": {"backend": "aot_eager"}}']
    run_one_process(args(tmp_path / "one", 4), tmp_path, monkeypatch)
    run_two_processes(args(tmp_path / "two", 2) + compiled, tmp_path)
    single, double = load_records(tmp_path / "one"), load_records(tmp_path / "two")
    assert not any(b["compiled"] for b in single[0]["train"])  # 3 steps: below glue.yaml's min_steps, eager
    assert all(b["compiled"] for record in double for b in record["train"])
    assert_same_steps_and_losses(single, double)


# ---- distillation ------------------------------------------------------------------------------------------------
def test_general_distillation_two_processes_match_one(tmp_path, monkeypatch, data_dir, tiny_roberta_dir):
    def args(out: Path, batch_size: int) -> list[str]:
        return ["--config", str(CONFIGS / "distill" / "roberta_general.yaml"),
                f"--model.init_args.teacher={tiny_roberta_dir}", f"--data.init_args.tokenizer={tiny_roberta_dir}",
                f"--data.init_args.data_dir={data_dir}", "--data.init_args.max_seq_length=32",
                f"--data.init_args.batch_size={batch_size}", "--data.init_args.eval_batch_size=5",
                "--trainer.max_steps=3", "--trainer.val_check_interval=3", "--trainer.limit_val_batches=1.0",
                "--trainer.log_every_n_steps=1", f"--trainer.default_root_dir={out}",
                f"--trainer.logger.init_args.save_dir={out}", recorder(out)]

    run_one_process(args(tmp_path / "one", 8), tmp_path, monkeypatch)
    run_two_processes(args(tmp_path / "two", 4), tmp_path)
    single, double = load_records(tmp_path / "one"), load_records(tmp_path / "two")
    # the KL, MLM and cosine terms are token means: normalised by the global token count, the sum matches
    assert_same_steps_and_losses(single, double)
    n_val = len(single[0]["val"][0]["indices"])
    assert_validation_once(double, n_val)
    assert_same_val_metrics(single, double, ["val/loss", "val_distill/loss"])


def test_task_distillation_on_two_processes_matches_one(tmp_path, monkeypatch, data_dir, wordpiece_tokenizer_dir):
    from transformers import BertForSequenceClassification

    from tests.lightning_modules.test_teacher_cache import save_teacher

    # a teacher whose logits differ by O(1) between examples: logits of the wrong example would show in the losses
    teacher = save_teacher(BertForSequenceClassification, tmp_path / "teacher", wordpiece_tokenizer_dir,
                           num_labels=2, id2label={0: "0", 1: "1"}, label2id={"0": 0, "1": 1})

    def args(out: Path, batch_size: int, *extra: str) -> list[str]:
        return ["--config", str(CONFIGS / "distill" / "glue.yaml"), f"--model.init_args.teacher={teacher}",
                "--model.init_args.student_layers=[0]", f"--data.init_args.tokenizer={teacher}",
                f"--data.init_args.data_dir={data_dir}", "--data.init_args.task_name=sst2",
                "--data.init_args.max_seq_length=32", f"--data.init_args.batch_size={batch_size}",
                "--data.init_args.eval_batch_size=5", "--data.init_args.max_eval_samples=11", "--trainer.max_epochs=1",
                "--trainer.log_every_n_steps=1", f"--trainer.default_root_dir={out}",
                f"--trainer.logger.init_args.save_dir={out}", recorder(out), *extra]

    # 2 processes: each computes the cached teacher logits of half the rows, all-gathered; 1 process: the teacher's
    # forward at every step
    run_two_processes(args(tmp_path / "two", 3), tmp_path)
    run_one_process(args(tmp_path / "one", 6, "--model.init_args.cache_teacher_logits=false"), tmp_path, monkeypatch)
    records, single = load_records(tmp_path / "two"), load_records(tmp_path / "one")
    # 24 train rows, global batch 6: 4 steps, each rank its own 3 examples, together the whole epoch
    shards = [[i for b in r["train"] for i in b["indices"]] for r in records]
    assert [len(s) for s in shards] == [12, 12] and set(shards[0]) | set(shards[1]) == set(range(24))
    assert all(r["global_step"] == 4 for r in records)
    # the soft and hard terms are means over examples; the teacher's logits differ by float rounding between the
    # cache's batches and the training batches (tests/lightning_modules/test_teacher_cache.py)
    assert_same_steps_and_losses(single, records, n_loss_steps=4, tolerance=1e-4)
    assert_validation_once(records, 11)


# ---- MLM pretraining in streaming mode -----------------------------------------------------------------------------
def test_mlm_streaming_each_rank_reads_its_own_shard(tmp_path, data_dir, bpe_tokenizer_dir):
    """Two files, two ranks: rank r streams file r (whole shards), block after block as one process reading that
    file alone would; the blocks' example indices (content hashes, the masks' key) never repeat across ranks."""
    import itertools

    from datamodules.streaming import StreamingBlocks
    from datamodules.text import TextCorpusDataModule

    files = ["wikitext-2/train.txt", "wikitext-2/valid.txt"]
    data = [f"--data.init_args.tokenizer={bpe_tokenizer_dir}", f"--data.init_args.data_dir={data_dir}",
            "--data.init_args.max_seq_length=32", "--data.init_args.batch_size=4", "--data.init_args.eval_batch_size=5",
            "--data.init_args.streaming=true", "--data.init_args.shuffle_buffer=0",
            f"--data.init_args.train_files={json.dumps(files)}"]
    out = tmp_path / "two"
    run_two_processes(["--config", str(CONFIGS / "mlm" / "roberta_small.yaml"), *TINY_MLM, *data,
                       "--trainer.max_steps=3", "--trainer.limit_val_batches=0", f"--trainer.default_root_dir={out}",
                       f"--trainer.logger.init_args.save_dir={out}", recorder(out)], tmp_path)
    double = load_records(out)
    seen = [[i for batch in record["train"] for i in batch["indices"]] for record in double]
    assert [len(s) for s in seen] == [12, 12] and not set(seen[0]) & set(seen[1])
    for rank, f in enumerate(files):
        alone = TextCorpusDataModule(str(bpe_tokenizer_dir), train_files=[f], data_dir=str(data_dir), streaming=True,
                                     shuffle_buffer=0, max_seq_length=32, cache_dir=str(tmp_path / "cache"))
        blocks = StreamingBlocks(alone, alone.sources("train"))
        assert seen[rank] == [b["example_index"] for b in itertools.islice(blocks, 12)]


def test_mlm_streaming_resumes_each_rank_at_its_own_position(tmp_path, data_dir, bpe_tokenizer_dir):
    """2 processes streaming 2 files (each rank its own): a run resumed from its step-2 checkpoint trains steps 3-4
    on the same blocks per rank as the run that went straight to step 4 (each rank's reader position is in the
    checkpoint, gathered from every rank)."""
    files = ["wikitext-2/train.txt", "wikitext-2/valid.txt"]
    every_2 = {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
               "init_args": {"dirpath": str(tmp_path / "every2"), "every_n_train_steps": 2, "save_top_k": -1}}

    def args(out: Path) -> list[str]:
        return ["--config", str(CONFIGS / "mlm" / "roberta_small.yaml"), *TINY_MLM,
                f"--data.init_args.tokenizer={bpe_tokenizer_dir}", f"--data.init_args.data_dir={data_dir}",
                "--data.init_args.max_seq_length=32", "--data.init_args.batch_size=4", "--data.init_args.streaming=true",
                "--data.init_args.shuffle_buffer=0", f"--data.init_args.train_files={json.dumps(files)}",
                "--trainer.max_steps=4", "--trainer.limit_val_batches=0", f"--trainer.default_root_dir={out}",
                f"--trainer.logger.init_args.save_dir={out}", recorder(out)]

    run_two_processes([*args(tmp_path / "straight"), f"--trainer.callbacks+={json.dumps(every_2)}"], tmp_path)
    step2 = tmp_path / "every2" / "epoch=0-step=2.ckpt"
    assert len(torch.load(step2, map_location="cpu", weights_only=False)["TextCorpusDataModule"]["train_loader"]) == 2
    run_two_processes([*args(tmp_path / "resumed"), f"--ckpt_path={step2}"], tmp_path)
    straight, resumed = load_records(tmp_path / "straight"), load_records(tmp_path / "resumed")
    for rank in (0, 1):
        assert [b["indices"] for b in resumed[rank]["train"]] == [b["indices"] for b in straight[rank]["train"][2:]]
