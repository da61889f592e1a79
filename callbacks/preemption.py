"""PreemptionCheckpoint: on SIGTERM or Ctrl+C, save a resumable `last.ckpt`, keep the exports, exit non-zero.

Lightning already catches SIGTERM (`lightning.pytorch.trainer.connectors.signal_connector`): it sets
`trainer.received_sigterm`, the training loop finishes the current batch and raises `SIGTERMException`, a SystemExit
with status 0, and nothing is saved since the last periodic checkpoint. Under SLURM with auto-requeue it also saves
`hpc_ckpt_<n>.ckpt` on the requeue signal (SIGUSR1) and requeues the job (docs/scale.md). This callback builds on
that:

- on the `SIGTERMException` (SIGTERM: preemption, `scancel`, a Kubernetes eviction, SLURM's kill after a requeue)
  it saves a checkpoint with the whole training state to `last.ckpt` in the run's checkpoint directory (the
  ModelCheckpoint's `dirpath`), which `--ckpt_path last` resumes;
- a first Ctrl+C (SIGINT) does the same as SIGTERM: the batch in flight finishes, the checkpoint is saved; a second
  Ctrl+C aborts at once without saving (Lightning's KeyboardInterrupt handling, exit status 1);
- exports are left as they are: HFExport writes `last` only at the end of a completed fit, and every export is
  atomic, so an interrupted run never replaces a previous export;
- the process exits with 128 + the signal number (143 for SIGTERM, 130 for SIGINT), so a scheduler or a shell
  script sees that the run did not finish.

YAML (under `trainer:`; the shipped configs have it):

    callbacks:
      - class_path: callbacks.preemption.PreemptionCheckpoint
"""
from __future__ import annotations

import os
import signal
import threading

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException


class PreemptionCheckpoint(Callback):
    """Save `<dirpath>/last.ckpt` when the run is stopped by SIGTERM or a first Ctrl+C, then exit 128 + signal.

    Args:
        dirpath: where to save; None -> the first ModelCheckpoint's dirpath, else `<default_root_dir>/checkpoints`.
        handle_sigint: treat the first Ctrl+C like SIGTERM (stop after the batch, save); False leaves Ctrl+C to
            Lightning (immediate KeyboardInterrupt, nothing saved).
    """

    def __init__(self, dirpath: str | None = None, handle_sigint: bool = True):
        self.dirpath = dirpath
        self.handle_sigint = handle_sigint
        self.saved_path: str | None = None
        self._signal = signal.SIGTERM
        self._trainer: Trainer | None = None
        self._previous_sigint = None

    # ---- Ctrl+C: the same graceful stop as SIGTERM --------------------------------------------------------------
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._signal, self.saved_path, self._trainer = signal.SIGTERM, None, trainer
        if self.handle_sigint and threading.current_thread() is threading.main_thread():
            self._previous_sigint = signal.signal(signal.SIGINT, self._on_sigint)

    def _on_sigint(self, signum, frame) -> None:
        trainer = self._trainer
        if trainer is None or self._signal == signal.SIGINT:  # the second Ctrl+C: abort now
            self._restore_sigint()
            raise KeyboardInterrupt
        self._signal = signal.SIGINT
        trainer._signal_connector.received_sigterm = True  # Lightning's graceful stop, as after SIGTERM
        rank_zero_info("Received SIGINT: stopping after the current batch to save a resumable checkpoint "
                       "(press Ctrl+C again to abort without saving)")

    def _restore_sigint(self) -> None:
        if self._previous_sigint is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._previous_sigint)
        self._previous_sigint = None

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._restore_sigint()

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._restore_sigint()

    # ---- the checkpoint ------------------------------------------------------------------------------------------
    def checkpoint_path(self, trainer: Trainer) -> str:
        """`last.ckpt` in `dirpath`, the ModelCheckpoint's directory, or `<default_root_dir>/checkpoints`."""
        checkpoints = [cb for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint)]
        if self.dirpath is not None:
            directory = self.dirpath
        elif checkpoints and checkpoints[0].dirpath:
            directory = checkpoints[0].dirpath
            last = checkpoints[0].last_model_path  # e.g. last-v1.ckpt of this run: keep writing that one
            if last and os.path.dirname(last) == os.path.normpath(directory):
                return last
        else:
            directory = os.path.join(trainer.default_root_dir, "checkpoints")
        return os.path.join(directory, ModelCheckpoint.CHECKPOINT_NAME_LAST + ModelCheckpoint.FILE_EXTENSION)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._restore_sigint()
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != "fit":
            return
        name = signal.Signals(self._signal).name
        path = self.checkpoint_path(trainer)
        try:
            for callback in trainer.checkpoint_callbacks:  # recorded in the checkpoint: a resume keeps this file
                if isinstance(callback, ModelCheckpoint) and callback.dirpath \
                        and os.path.dirname(path) == os.path.normpath(callback.dirpath):
                    callback.last_model_path = path
            if trainer.is_global_zero and os.path.islink(path):  # save_last: link -> a file of its own now
                os.remove(path)
            trainer.save_checkpoint(path)  # all processes take part; written atomically by rank 0
            self.saved_path = path
            rank_zero_info(f"{name}: saved a resumable checkpoint at global step {trainer.global_step} to {path}; "
                           f"exports were left as they were. Resume with the same command and --ckpt_path last")
        except Exception as err:  # noqa: BLE001 (still exit non-zero; the previous checkpoints are kept)
            rank_zero_warn(f"{name}: could not save a checkpoint to {path}: {type(err).__name__}: {err}")
        exception.code = 128 + int(self._signal)  # SIGTERMException is a SystemExit with status 0 otherwise
