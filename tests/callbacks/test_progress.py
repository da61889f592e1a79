"""ProgressLog: the lines it prints (format, ETA from a fake clock), and a real run with stdout captured."""
from __future__ import annotations

import re
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.demos.boring_classes import BoringModel

from callbacks.progress import ProgressLog, batch_examples, format_duration, format_number


def test_formats():
    assert format_duration(0) == "0:00:00" and format_duration(3725.4) == "1:02:05"
    assert format_duration(27 * 3600 + 3 * 60 + 9) == "27:03:09"
    assert format_number(0.64213) == "0.6421" and format_number(84.98) == "84.98" and format_number(1505.2) == "1505"
    assert format_number(6e-5) == "6.000e-05" and format_number(0) == "0"
    assert batch_examples({"input_ids": torch.zeros(32, 7), "labels": torch.zeros(32)}) == 32
    assert batch_examples([torch.zeros(5, 2)]) == 5 and batch_examples({}) == 0


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def fake_trainer(**overrides):
    optimizer = SimpleNamespace(param_groups=[{"lr": 8.4e-5}])
    trainer = SimpleNamespace(is_global_zero=True, progress_bar_callback=None, estimated_stepping_batches=500,
                              global_step=0, max_epochs=2, max_steps=-1, world_size=2, current_epoch=0,
                              accumulate_grad_batches=2, optimizers=[optimizer], callbacks=[], callback_metrics={},
                              sanity_checking=False, state=SimpleNamespace(fn=SimpleNamespace(value="fit")))
    trainer.__dict__.update(overrides)
    return trainer


def test_training_lines_with_a_fake_clock(capsys):
    progress, clock, trainer = ProgressLog(every_n_steps=10), FakeClock(), fake_trainer()
    progress.clock = clock
    progress.on_train_start(trainer, None)
    progress.on_train_epoch_start(trainer, None)
    batch = {"input_ids": torch.zeros(16, 8)}
    for batch_idx in range(20):  # 20 batches, accumulation 2: 10 optimiser steps, 4 s each
        clock.now += 2.0
        trainer.global_step = (batch_idx + 1) // 2
        # Lightning hands the hooks the loss divided by accumulate_grad_batches: 0.3 and 0.35 are 0.6 and 0.7
        progress.on_train_batch_end(trainer, None, {"loss": torch.tensor(0.3 if batch_idx % 2 else 0.35)}, batch,
                                    batch_idx)
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "train start: 500 optimiser steps, 2 epoch(s), 2 process(es)",
        # 20 batches of 16 examples on each of 2 processes in 40 s: 16 samples/s; 490 steps left at 4 s each
        "train step 10/500 (2%) epoch 1/2 | loss 0.65 | lr 8.40e-05 | 16.0 samples/s | elapsed 0:00:40 | ETA 0:32:40",
    ]
    trainer.global_step = 250  # end of the first epoch, at 1,000 s: the ETA follows the mean pace, 4 s per step
    clock.now = 1000.0 + 1000.0
    progress.on_train_epoch_end(trainer, None)
    assert capsys.readouterr().out.splitlines() == [
        "train epoch 1/2 done: step 250/500 | loss 0.65 (epoch mean) | elapsed 0:16:40 | ETA 0:16:40"]

    trainer.callback_metrics = {"val/score": torch.tensor(84.98), "val/loss": torch.tensor(0.35123),
                                "train/loss": torch.tensor(0.6)}
    progress.on_validation_start(trainer, None)
    clock.now += 6.2
    progress.on_validation_end(trainer, None)
    assert capsys.readouterr().out.splitlines() == ["val step 250/500 | val/loss 0.3512 | val/score 84.98 | 6.2 s"]


def test_a_line_once_every_n_seconds_passed_and_samples_per_second_without_validation(capsys):
    progress, clock, trainer = ProgressLog(every_n_steps=1000, every_n_seconds=30), FakeClock(), fake_trainer()
    progress.clock = clock
    progress.on_train_start(trainer, None)
    for step in range(1, 17):  # one batch of 8 per step (accumulation 1 here), 4 s each
        clock.now += 4.0
        trainer.global_step, trainer.accumulate_grad_batches = step, 1
        if step == 10:  # a 20 s validation: not training time for samples/s
            progress.on_validation_start(trainer, None)
            clock.now += 20.0
            progress.on_validation_end(trainer, None)
        progress.on_train_batch_end(trainer, None, {"loss": torch.tensor(1.0)}, torch.zeros(8, 3), step - 1)
    lines = [line.split(" | ") for line in capsys.readouterr().out.splitlines() if line.startswith("train step")]
    # a line at the first step 30 s after the previous one: step 8 (32 s), then step 11 (12 s of training and the
    # validation's 20 s); 8 examples x 2 processes per 4 s of training either way
    assert [(parts[0], parts[3]) for parts in lines] == [("train step 8/500 (2%) epoch 1/2", "4.0 samples/s"),
                                                         ("train step 11/500 (2%) epoch 1/2", "4.0 samples/s")]


def test_quiet_on_other_ranks_and_under_a_terminal_bar(capsys, monkeypatch):
    for trainer in (fake_trainer(is_global_zero=False), fake_trainer(progress_bar_callback=object())):
        monkeypatch.setattr("sys.stdout.isatty", lambda: True)
        progress = ProgressLog(every_n_steps=1)
        progress.on_train_start(trainer, None)
        trainer.global_step = 1
        progress.on_train_batch_end(trainer, None, {"loss": torch.tensor(1.0)}, torch.zeros(4, 2), 0)
        assert capsys.readouterr().out == ""
    trainer = fake_trainer(progress_bar_callback=object())  # `always`: lines beside the bar
    progress = ProgressLog(every_n_steps=1, always=True)
    progress.on_train_start(trainer, None)
    assert capsys.readouterr().out.startswith("train start")


def test_a_real_run_prints_steps_validation_and_epoch_ends(tmp_path, capsys):
    trainer = pl.Trainer(default_root_dir=tmp_path, max_epochs=2, limit_train_batches=6, limit_val_batches=2,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, callbacks=[ProgressLog(every_n_steps=4)])
    trainer.fit(BoringModel())
    lines = capsys.readouterr().out.splitlines()
    number = r"-?[0-9.e+-]+"
    expected = [
        r"train start: 12 optimiser steps, 2 epoch\(s\), 1 process\(es\)",
        rf"train step 4/12 \(33%\) epoch 1/2 \| loss {number} \| lr 1\.00e-01 \| [0-9.]+ samples/s \| "
        r"elapsed 0:00:\d\d \| ETA 0:00:\d\d",
        r"val step 6/12 \| [0-9.]+ s",  # BoringModel logs no val/ figures
        rf"train epoch 1/2 done: step 6/12 \| loss {number} \(epoch mean\) \| elapsed 0:00:\d\d \| ETA 0:00:\d\d",
        r"train step 8/12 \(67%\) epoch 2/2 .*",
        r"train step 12/12 \(100%\) epoch 2/2 .* \| ETA 0:00:00",
        r"val step 12/12 \| [0-9.]+ s",
        rf"train epoch 2/2 done: step 12/12 \| loss {number} \(epoch mean\) \| elapsed 0:00:\d\d",
    ]
    progress_lines = [line for line in lines if re.match(r"(train|val) ", line)]
    assert len(progress_lines) == len(expected), lines
    for line, pattern in zip(progress_lines, expected):
        assert re.fullmatch(pattern, line), (line, pattern)


def test_intervals_must_be_positive():
    with pytest.raises(ValueError, match="every_n_steps must be a positive number of steps, got 0"):
        ProgressLog(every_n_steps=0)
    with pytest.raises(ValueError, match="every_n_seconds must be positive"):
        ProgressLog(every_n_seconds=0)


def test_first_tokenization_prints_a_line_per_cache_build(data_dir, wordpiece_tokenizer_dir, tmp_path, capsys):
    from datamodules.glue import GLUEDataModule

    def setup():
        dm = GLUEDataModule(str(wordpiece_tokenizer_dir), "sst2", data_dir=str(data_dir), cache_dir=str(tmp_path))
        dm.setup("fit")

    setup()
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("data: ")]
    assert [re.sub(r"[0-9.]+ s$", "T s", line) for line in lines] == [
        f"data: building sst2-train-train (first use of these settings; cached in {tmp_path})",
        "data: built sst2-train-train: 24 rows in T s",
        f"data: building sst2-dev-dev (first use of these settings; cached in {tmp_path})",
        "data: built sst2-dev-dev: 12 rows in T s",
    ]
    setup()  # cache hits: nothing to report
    assert "data: " not in capsys.readouterr().out
