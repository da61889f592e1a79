"""Interrupted and failing runs (docs/interrupted.md): SIGTERM / Ctrl+C save a resumable last.ckpt and exit non-zero,
a NaN loss stops the run before it reaches a checkpoint or an export, a resume with another schedule length is
refused, stale temporaries of killed exports/cache builds are removed, every config keeps a `last` checkpoint."""
from __future__ import annotations

import signal
import subprocess
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel

import cli_errors
import train
from callbacks.nonfinite import NonFiniteWeightsError, StopOnNonFinite
from callbacks.preemption import PreemptionCheckpoint
from callbacks.temperature import TemperatureAnnealing
from lightning_modules.optim import ScheduleMismatchError, configure_adamw_with_warmup
from tests.cli import SignalAt, model_data_args, quiet_run_args

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(ROOT.glob("configs/*/*.yaml"))


# ---- every shipped config -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_config_saves_last_and_guards_the_run(config):
    callbacks = yaml.safe_load(config.read_text())["trainer"]["callbacks"]
    names = [c["class_path"].rsplit(".", 1)[-1] for c in callbacks]
    assert {"StopOnNonFinite", "PreemptionCheckpoint"} <= set(names)
    checkpoint = next(c.get("init_args", {}) for c in callbacks if c["class_path"].endswith("ModelCheckpoint"))
    assert checkpoint["save_last"] is True
    if "every_n_train_steps" in checkpoint:  # periodic checkpoints: several kept, not only the newest
        assert checkpoint["save_top_k"] >= 2 and checkpoint["monitor"] == "step"
    if "HFExport" in names:  # `--trainer.callbacks.init_args.dirpath` (scripts/main_job.sh) addresses the last one
        assert names[-1] == "HFExport"


# ---- SIGTERM through the CLI: last.ckpt, exports untouched, exit 143, `--ckpt_path last` resumes ---------------------
def test_sigterm_saves_last_checkpoint_keeps_exports_and_resume_finishes(data_dir, tiny_bert_dir, tmp_path):
    export = tmp_path / "export"
    (export / "last").mkdir(parents=True)
    (export / "last" / "previous.txt").write_text("the previous export")
    args = ["fit", "--config", "configs/finetune/glue.yaml", *model_data_args(data_dir, tiny_bert_dir),
            *quiet_run_args(tmp_path), "--data.init_args.batch_size=4", "--trainer.max_epochs=1",
            "--trainer.limit_val_batches=1", "--trainer.num_sanity_val_steps=0",
            f"--trainer.callbacks.init_args.dirpath={export}"]  # HFExport: the last callback of the config
    with pytest.raises(SystemExit) as stopped:
        train.run(args + ["--trainer.callbacks+=tests.cli.SignalAt", "--trainer.callbacks.init_args.step=2"])
    assert stopped.value.code == 128 + signal.SIGTERM
    last = tmp_path / "checkpoints" / "last.ckpt"  # <default_root_dir>/checkpoints: where `--ckpt_path last` looks
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == 2
    assert sorted(p.name for p in export.rglob("*")) == ["last", "previous.txt"]  # nothing exported, nothing lost

    assert train.run(args + ["--ckpt_path=last"]) == 0
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == 6  # 24 rows / 4, one epoch
    assert (export / "last" / "model.safetensors").is_file() and not (export / "last" / "previous.txt").exists()


# ---- Ctrl+C: the first saves and exits 130, a second aborts without saving -------------------------------------------
def error_line(captured) -> str:
    """The `error: ...` line train.run printed (stderr also holds logs and progress bars)."""
    return next(line for line in captured.err.splitlines() if line.startswith("error: "))


def _boring_fit(tmp_path, *callbacks, max_steps=6, ckpt_path=None, module=None):
    trainer = pl.Trainer(default_root_dir=tmp_path, max_steps=max_steps, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0,
                         callbacks=[ModelCheckpoint(dirpath=tmp_path / "checkpoints", save_last=True), *callbacks])
    module = module or BoringModel()
    trainer.fit(module, ckpt_path=ckpt_path)
    return trainer, module


@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_once_saves_and_exits_130_twice_aborts(presses, tmp_path):
    previous = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit) as stopped:
            _boring_fit(tmp_path, PreemptionCheckpoint(), SignalAt(step=3, signum=signal.SIGINT, times=presses))
    finally:
        signal.signal(signal.SIGINT, previous)  # Lightning ignores SIGINT after a KeyboardInterrupt
    last = tmp_path / "checkpoints" / "last.ckpt"
    if presses == 1:
        assert stopped.value.code == 128 + signal.SIGINT
        assert torch.load(last, weights_only=False)["global_step"] == 3
    else:
        assert stopped.value.code == 1 and not last.exists()


# ---- the schedules on resume ---------------------------------------------------------------------------------------
class ScheduledModule(BoringModel):
    """BoringModel with litbert's optimiser/schedule and a temperature to anneal; records lr and T per step."""

    def __init__(self):
        super().__init__()
        self.temperature, self.seen = 1.0, []

    def training_step(self, batch, batch_idx):
        self.seen.append((self.trainer.global_step, self.trainer.optimizers[0].param_groups[0]["lr"], self.temperature))
        return super().training_step(batch, batch_idx)

    def configure_optimizers(self):
        return configure_adamw_with_warmup(self, lr=1e-3, warmup_steps=2)


def test_resume_continues_lr_and_temperature_and_refuses_another_length(tmp_path):
    def annealing():
        return TemperatureAnnealing("linear", t_start=4.0, t_end=1.0)

    _, whole = _boring_fit(tmp_path / "whole", annealing(), module=ScheduledModule())
    with pytest.raises(SystemExit):
        _boring_fit(tmp_path / "cut", annealing(), PreemptionCheckpoint(), SignalAt(step=3),
                    module=ScheduledModule())
    last = tmp_path / "cut" / "checkpoints" / "last.ckpt"
    _, resumed = _boring_fit(tmp_path / "cut", annealing(), ckpt_path=last, module=ScheduledModule())
    assert resumed.seen == whole.seen[3:]  # steps 3..5: the same learning rates and temperatures

    with pytest.raises(ScheduleMismatchError) as refused:
        _boring_fit(tmp_path / "cut", annealing(), max_steps=12, ckpt_path=last, module=ScheduledModule())
    assert str(refused.value).startswith(
        "cannot resume: the checkpoint's learning-rate schedule was planned for 6 optimiser steps (warmup 2), this "
        "run plans 12 (warmup 2); resuming would make the learning rate jump. Resume with the original length "
        "(--trainer.max_steps 6,")


# ---- NaN / inf -----------------------------------------------------------------------------------------------------
@pytest.fixture
def tiny_classifier_teacher(tmp_path, wordpiece_tokenizer_dir):
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from tests.conftest import TINY

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(wordpiece_tokenizer_dir)
    model = BertForSequenceClassification(BertConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, **TINY))
    model.config.architectures = ["BertForSequenceClassification"]
    model.save_pretrained(tmp_path / "teacher")
    tok.save_pretrained(tmp_path / "teacher")
    return tmp_path / "teacher"


def test_nan_distillation_term_stops_naming_it_and_keeps_the_good_checkpoint_and_export(
        data_dir, tiny_classifier_teacher, tmp_path, monkeypatch, capsys):
    from lightning_modules.distill_tasks import GLUEDistillationModule

    original = GLUEDistillationModule.distillation_terms

    def poisoned(self, batch):  # the soft term diverges from step 3 on
        terms = original(self, batch)
        if self.trainer.global_step >= 3:
            terms.pop("total")
            terms = self.weighted_total({**terms, "ce": terms["ce"] * float("nan")})
        return terms

    monkeypatch.setattr(GLUEDistillationModule, "distillation_terms", poisoned)
    export = tmp_path / "export"
    code = train.run(["fit", "--config", "configs/distill/glue.yaml", f"--data.init_args.data_dir={data_dir}",
                      f"--model.init_args.teacher={tiny_classifier_teacher}",
                      f"--data.init_args.tokenizer={tiny_classifier_teacher}", "--model.init_args.student_layers=[0]",
                      *quiet_run_args(tmp_path),
                      "--data.init_args.batch_size=4", "--trainer.max_epochs=1", "--trainer.val_check_interval=3",
                      "--trainer.limit_val_batches=1", "--trainer.num_sanity_val_steps=0",
                      f"--trainer.callbacks.init_args.dirpath={export}"])
    assert code == cli_errors.EXIT_NON_FINITE
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert error_line(capsys.readouterr()) == (
        "error: training stopped at global step 3 (epoch 0, batch 3): non-finite loss terms: train/loss=nan, "
        "train/loss_ce=nan (finite: train/loss_hard). Nothing was applied to the weights, "
        f"checkpointed or exported after it; the last good checkpoint is {last}. Lower the learning rate or clip "
        "gradients (--trainer.gradient_clip_val 1.0), then start again or resume from that checkpoint")
    checkpoint = torch.load(last, map_location="cpu", weights_only=False)
    assert checkpoint["global_step"] == 3
    assert all(torch.isfinite(v).all() for v in checkpoint["state_dict"].values() if v.is_floating_point())
    assert sorted(p.name for p in export.iterdir()) == ["best"]  # validated at step 3; no `last` export


def test_learning_rate_1e6_stops_with_status_3_without_nan_checkpoints(data_dir, tiny_bert_dir, tmp_path, capsys):
    code = train.run(["fit", "--config", "configs/finetune/glue.yaml", *model_data_args(data_dir, tiny_bert_dir),
                      *quiet_run_args(tmp_path), "--data.init_args.batch_size=4", "--model.init_args.lr=1e6",
                      "--trainer.max_epochs=1", "--trainer.val_check_interval=2", "--trainer.limit_val_batches=1",
                      "--trainer.num_sanity_val_steps=0"])
    assert code == 3
    assert error_line(capsys.readouterr()).startswith("error: training stopped at global step ")
    for path in tmp_path.rglob("*.ckpt"):
        state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()), path
    for path in tmp_path.rglob("model.safetensors"):
        from safetensors.torch import load_file

        assert all(torch.isfinite(v).all() for v in load_file(path).values()), path


def test_non_finite_weights_are_never_checkpointed_or_exported(tmp_path, tiny_bert_dir):
    from transformers import AutoModelForMaskedLM

    from callbacks.hf_export import HFExport

    strategy = SimpleNamespace(reduce_boolean_decision=lambda decision, all=True: decision)
    trainer = SimpleNamespace(strategy=strategy, global_step=7, is_global_zero=True, datamodule=None)
    state = {"model.w": torch.tensor([1.0, float("nan")]), "model.b": torch.zeros(2), "step": torch.tensor(3)}
    with pytest.raises(NonFiniteWeightsError, match=r"^not writing a checkpoint at global step 7: the weights hold "
                                                    r"NaN or infinite values \(model.w\); the checkpoints"):
        StopOnNonFinite().on_save_checkpoint(trainer, None, {"state_dict": state})
    StopOnNonFinite().on_save_checkpoint(trainer, None, {"state_dict": {"model.b": torch.zeros(2)}})

    model = AutoModelForMaskedLM.from_pretrained(tiny_bert_dir)
    with torch.no_grad():
        model.bert.embeddings.word_embeddings.weight[0, 0] = float("inf")
    with pytest.raises(NonFiniteWeightsError, match=r"^HFExport: not exporting .*export/last \(end of fit\): the "
                                                    r"weights hold NaN or infinite values \(bert.embeddings"):
        HFExport(dirpath=str(tmp_path / "export")).export(trainer, SimpleNamespace(model=model), "last", "end of fit")
    assert not (tmp_path / "export").exists()


# ---- temporaries of killed processes ---------------------------------------------------------------------------------
def test_stale_temporaries_of_killed_exports_and_cache_builds_are_removed(tmp_path, tiny_bert_dir, data_dir):
    import os

    from transformers import AutoModelForMaskedLM

    from datamodules.glue import GLUEDataModule
    from datamodules.atomic import _host
    from models.convert import save_export

    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that no longer runs
    exports = tmp_path / "export"
    stale = [exports / f".best.tmp-{dead.pid}@{_host()}-0123abcd", exports / f".step-2.tmp-{dead.pid}-89abcdef"]
    kept = [exports / f".best.tmp-{os.getpid()}@{_host()}-00000000",  # a live process's
            exports / f".best.tmp-{dead.pid}@another-host-11111111"]  # another machine's (shared folder)
    for path in stale + kept:
        (path / "sub").mkdir(parents=True)
    (exports / f".last.old-{dead.pid}@{_host()}-22222222").mkdir()  # killed between its two renames
    save_export(AutoModelForMaskedLM.from_pretrained(tiny_bert_dir), exports / "best")
    assert sorted(p.name for p in exports.iterdir()) == sorted(["best", "last"] + [p.name for p in kept])

    cache = tmp_path / "cache"
    (cache / f".sst2-train-train-0123.tmp-{dead.pid}@{_host()}-33333333" / "data").mkdir(parents=True)
    GLUEDataModule(str(tiny_bert_dir), "sst2", data_dir=str(data_dir), cache_dir=str(cache)).setup("fit")
    assert not any(p.name.startswith(".") for p in cache.iterdir())


# ---- SQuAD answers: whitespace offsets corrected ---------------------------------------------------------------------
def test_squad_answer_whitespace_offsets_are_corrected():
    from datamodules.squad import align_answer

    context = "The tower was built in 1889, by Eiffel."
    at = context.index("1889")
    assert align_answer(context, "1889", at) == ("1889", at)
    assert align_answer(context, " 1889", at - 1) == (" 1889", at - 1)  # exact, whitespace included
    assert align_answer(context, "1889 ", at) == ("1889", at)  # trailing whitespace in the text
    assert align_answer(context, " 1889", at) == ("1889", at)  # leading whitespace not counted in answer_start
    assert align_answer(context, "1889", at - 1) == ("1889", at)  # answer_start on the space before
    assert align_answer(context, "1889", at + 1) is None and align_answer(context, "1889", 4) is None
