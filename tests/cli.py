"""Arguments every in-process `train.main` test run shares."""
import os
from pathlib import Path

from lightning.pytorch import Callback


def quiet_run_args(tmp_path: Path) -> list[str]:
    """Outputs (checkpoints, TensorBoard logs) under `tmp_path`; no progress bar or model summary."""
    return [f"--trainer.default_root_dir={tmp_path}", f"--trainer.logger.init_args.save_dir={tmp_path}",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


def model_data_args(data_dir: Path, model_dir: Path) -> list[str]:
    """Data read from the fixture `data_dir`; model and tokenizer from the same tiny model directory."""
    return [f"--data.init_args.data_dir={data_dir}", f"--data.init_args.tokenizer={model_dir}",
            f"--model.init_args.pretrained={model_dir}"]



class SignalAt(Callback):
    """A callback (`--trainer.callbacks+=tests.cli.SignalAt`) that sends `signum` to this process once training reaches
    optimiser step `step`, as a scheduler preempting the job (SIGTERM, 15) or a Ctrl+C (SIGINT, 2) would; `times`
    signals at once (two Ctrl+C: abort)."""

    def __init__(self, step: int = 2, signum: int = 15, times: int = 1):
        self.step, self.signum, self.times, self.sent = step, signum, times, False

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step and not self.sent:
            self.sent = True
            for _ in range(self.times):
                os.kill(os.getpid(), self.signum)


class LossLog(Callback):
    """A callback (`--trainer.callbacks+=tests.cli.LossLog`) that appends every training batch's (epoch, batch_idx,
    global_step, loss, example_index or SQuAD's feature_index) to the JSON-lines file `path` as it goes (so a run
    killed by a signal keeps its lines)."""

    def __init__(self, path: str):
        self.path = Path(path)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        import json

        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        rows = batch["example_index"] if "example_index" in batch else batch["feature_index"]  # GLUE / SQuAD
        record = {"epoch": trainer.current_epoch, "batch_idx": batch_idx, "step": trainer.global_step,
                  "loss": float(loss), "examples": rows.tolist()}
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
