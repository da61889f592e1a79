"""TorchCompile: `torch.compile` the trained model(s) of any recipe, as a switch (off in the shipped configs).

Measured on the 2-core CPU (MiniLM-L6 fine-tuning on SST-2-length batches, benchmarks/README.md): no gain per step
(331 ms compiled against 330 ms eager) for 170 s of compilation, so it is not a default; on a GPU the fused
element-wise kernels usually pay. The model is compiled in place (`nn.Module.compile`), so parameter names, checkpoints
and exports stay those of the plain model. A compiled model runs its full last layer (`models.last_layer` leaves it
alone: swapping a layer would recompile every step).

YAML (under `trainer:`):

    callbacks:
      - class_path: callbacks.compile.TorchCompile
        init_args: {dynamic: true}
"""
from __future__ import annotations

from lightning.pytorch import Callback


class TorchCompile(Callback):
    """Compile `pl_module.model` (and a distillation teacher, `pl_module.teacher`) before fitting starts.

    Args:
        dynamic: compile for varying batch shapes (dynamic padding changes the length every step).
        mode: torch.compile's mode (None, "reduce-overhead", "max-autotune", ...).
        backend: torch.compile's backend ("inductor"; "aot_eager" to check a model without generating code).
        teacher: compile the teacher too (its forward only).
    """

    def __init__(self, dynamic: bool = True, mode: str | None = None, backend: str = "inductor", teacher: bool = True):
        self.options = {"dynamic": dynamic, "mode": mode, "backend": backend}
        self.teacher = teacher

    def setup(self, trainer, pl_module, stage: str) -> None:
        names = ["model"] + (["teacher"] if self.teacher else [])
        for name in names:
            model = getattr(pl_module, name, None)
            if model is not None and getattr(model, "_compiled_call_impl", None) is None:
                model.compile(**self.options)
