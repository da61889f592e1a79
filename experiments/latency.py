"""Table 1's CPU inference time: each model over the whole dev set of a GLUE task, the models taking turns."""
from __future__ import annotations

from datamodules.glue import GLUEDataModule
from evaluation.latency import alternating_pass_seconds
from transformers import AutoModelForSequenceClassification

from models.pretrained import load_pretrained


def dev_set_seconds(models: dict[str, str], task: str, data_dir: str | None = None,
                    max_eval_samples: int | None = None, rounds: int = 3, batch_size: int = 64) -> dict:
    """name -> seconds of one pass over `task`'s dev set (batches of `batch_size` as validation builds them, 1
    thread, median of `rounds` alternating passes); the models share the first model's tokenizer."""
    first = next(iter(models.values()))
    dm = GLUEDataModule(first, task_name=task, data_dir=data_dir, eval_batch_size=batch_size,
                        max_eval_samples=max_eval_samples)
    dm.prepare_data()
    dm.setup("validate")
    loader = dm.val_dataloader()
    batches = list(loader[0] if isinstance(loader, (list, tuple)) else loader)
    loaded = {name: load_pretrained(AutoModelForSequenceClassification, path) for name, path in models.items()}
    return alternating_pass_seconds(loaded, batches, rounds=rounds)
