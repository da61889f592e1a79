"""FastCPUDropout: the trained model's dropout drawn with `models.cpu_dropout` when training runs on the CPU.

torch's CPU dropout samples its mask one element at a time; `models.cpu_dropout` draws the same Bernoulli mask
2.5-3.2x faster (17% of a bf16 MLM step of `roberta_small` on 2 cores went to dropout; benchmarks/README.md). train.py
adds this callback to every run unless the config lists it (`add_default_callbacks`); on a GPU it does nothing. A
model compiled by `callbacks.compile.TorchCompile` draws the same masks through an operator the compiler leaves
alone (`models.cpu_dropout.fill_keep_mask_`). The results command (`scripts/results.py`) turns it off: its committed
records were measured with torch's dropout.

YAML (under `trainer:`), to keep torch's dropout on the CPU:

    callbacks:
      - class_path: callbacks.cpu_dropout.FastCPUDropout
        init_args: {enabled: false}
"""
from __future__ import annotations

from lightning.pytorch import Callback

from models.cpu_dropout import use_cpu_dropout


class FastCPUDropout(Callback):
    """Switch `pl_module.model` to `models.cpu_dropout` before fitting on the CPU.

    Args:
        enabled: False keeps torch's own dropout.
    """

    def __init__(self, enabled: bool = True):
        self.enabled = enabled

    def setup(self, trainer, pl_module, stage: str) -> None:
        model = getattr(pl_module, "model", None)
        if self.enabled and stage == "fit" and model is not None and trainer.strategy.root_device.type == "cpu":
            use_cpu_dropout(model)
