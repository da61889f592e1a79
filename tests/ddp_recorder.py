"""A test callback that records, per process, what each training and validation batch held (for tests/test_ddp.py).

Passed to `train.py` runs with `--trainer.callbacks+={"class_path": "tests.ddp_recorder.BatchRecorder", ...}`; at
the end of `fit` every rank writes `<out_dir>/rank<global rank>.json`:
- `train`: per training batch: epoch, batch_idx, global_step before the batch, `example_index` list (where the
  batch has one), the loss `training_step` returned (undivided by accumulation), real and padded token counts,
  each example's real length, and whether the trained model ran compiled (callbacks/compile.py);
- `val`: per validation epoch (sanity check excluded): the `example_index` of every batch, and for GLUE modules the
  number of examples the first metric collection counted, summed over ranks (`val_metric_examples`), and the
  `val*` figures logged (`metrics`);
- `world_size`, `global_step`, `accumulate_grad_batches`, `train_batches_per_epoch` (Lightning's count).
"""
from __future__ import annotations

import json
from pathlib import Path

from lightning.pytorch import Callback


class BatchRecorder(Callback):
    def __init__(self, out_dir: str):
        self.out_dir = Path(out_dir)
        self.train: list[dict] = []
        self.val: list[dict] = []
        self._val_epoch: dict | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        mask = batch["attention_mask"]
        self.train.append({
            "epoch": trainer.current_epoch, "batch_idx": batch_idx,
            "indices": batch["example_index"].tolist() if "example_index" in batch else None,
            "loss": float(loss) * trainer.accumulate_grad_batches,  # Lightning divides it by the accumulation
            "tokens": int(mask.sum()), "padded": int(mask.numel()), "lengths": mask.sum(1).tolist(),
            "compiled": getattr(getattr(pl_module, "model", None), "_compiled_call_impl", None) is not None,
        })

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._val_epoch = None if trainer.sanity_checking else {"step": trainer.global_step, "indices": []}

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self._val_epoch is not None and "example_index" in batch:
            self._val_epoch["indices"].extend(batch["example_index"].tolist())

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        # Callbacks run before the module's hook, so the metric states still hold this epoch's updates.
        if self._val_epoch is None:
            return
        collections = getattr(pl_module, "val_metrics", None)
        if collections is not None:
            for metric in collections[0].values():
                if hasattr(metric, "tp") and hasattr(metric, "fn"):  # micro accuracy: tp + fn = examples seen
                    local = (metric.tp + metric.fn).sum().float().reshape(())
                    self._val_epoch["val_metric_examples"] = float(
                        trainer.strategy.reduce(local.clone(), reduce_op="sum"))
                    break
        self.val.append(self._val_epoch)

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._val_epoch is not None:  # after the module's epoch-end hook: what it logged (rank 0's view)
            self._val_epoch["metrics"] = {k: float(v) for k, v in trainer.callback_metrics.items()
                                          if k.startswith("val")}

    def on_fit_end(self, trainer, pl_module) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        record = {"world_size": trainer.world_size, "rank": trainer.global_rank, "global_step": trainer.global_step,
                  "accumulate_grad_batches": trainer.accumulate_grad_batches,
                  "train_batches_per_epoch": trainer.num_training_batches, "train": self.train, "val": self.val}
        (self.out_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


def padding_fraction(batches: list[dict]) -> float:
    """Padded positions / all positions over recorded training batches."""
    return 1 - sum(b["tokens"] for b in batches) / sum(b["padded"] for b in batches)


def load_records(out_dir: str | Path) -> list[dict]:
    """The per-rank records of a run, in rank order."""
    files = sorted(Path(out_dir).glob("rank*.json"), key=lambda p: int(p.stem[4:]))
    return [json.loads(p.read_text()) for p in files]

