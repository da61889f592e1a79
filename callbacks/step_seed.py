"""StepSeed: dropout (and every other use of torch's global random generator in a training step) becomes a pure
function of (seed, epoch, batch index, rank), so a resumed run draws what the uninterrupted run drew.

Lightning's checkpoints do not hold the random generators' states, so after `--ckpt_path` the dropout masks of every
later step differ from those of the run that was never stopped, and the two trajectories part at the first step.
Saving the states would not be enough under DDP (each rank has its own, rank 0 writes the checkpoint). Instead,
before every training batch this callback seeds torch's generators (CPU and every GPU) with a hash of (seed, epoch,
batch index in the epoch, global rank). Masks and data order are already functions of (seed, epoch, example); the
learning-rate and temperature schedules are in the checkpoint: with this, an interrupted run continues the same
trajectory (tests/test_exact_resume.py). Validation and the other loops are left alone.

YAML (under `trainer:`; the shipped configs have it):

    callbacks:
      - class_path: callbacks.step_seed.StepSeed
        init_args: {seed: null}      # null: the run's `seed_everything` value
"""
from __future__ import annotations

import hashlib
import os

import torch
from lightning.pytorch import Callback


def step_seed(seed: int, epoch: int, batch_idx: int, rank: int) -> int:
    """A 63-bit seed from (seed, epoch, batch index, rank)."""
    digest = hashlib.blake2b(f"{seed}/{epoch}/{batch_idx}/{rank}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class StepSeed(Callback):
    """Seed torch's generators per training batch from (seed, epoch, batch index, rank).

    Args:
        seed: the base seed; None takes the run's `seed_everything` value (PL_GLOBAL_SEED), else 0.
    """

    def __init__(self, seed: int | None = None):
        self.seed = seed

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        seed = self.seed if self.seed is not None else int(os.environ.get("PL_GLOBAL_SEED", 0))
        torch.manual_seed(step_seed(seed, trainer.current_epoch, batch_idx, trainer.global_rank))
