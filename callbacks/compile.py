"""TorchCompile: `torch.compile` the trained model(s) of any recipe for the training steps of a long enough fit.

Measured on the 2-core Xeon (MiniLM-L6 fine-tuning on SST-2's length-grouped batches, `benchmarks/finetune_glue.py`,
README "Speed"): the compiled step is 1.24x faster than the eager one (0.097 against 0.120 s), with less fixed cost
(the Python and dispatch of hundreds of small operators) and less per token (fused element-wise work), for about a
minute of compilation in the first step (61.6 s with an empty compile cache; 12-16 s when torch's compile cache holds
the graphs of an earlier run). So configs/finetune/glue.yaml compiles fits of at least `min_steps` optimiser steps
(SST-2's three epochs: 6,315) and leaves short ones (RTE, MRPC: a few hundred steps) eager, where compilation would
cost more than it saves.

What stays as in the eager model: the parameter names (`nn.Module.compile` compiles in place, so checkpoints and
exports are the plain model's), the last encoder layer run at the first token only (`models.last_layer`: the same
stand-in module each step, so it is traced once), the CPU dropout's masks (`models.cpu_dropout`: drawn by one operator
the compiler leaves alone). What changes: the input embedding's gradient is torch's dense one
(`callbacks.cpu_embedding_grad` leaves a compiled model alone: its sparse backward breaks the graph), and the
element-wise work is fused, so bf16 results differ from the eager ones by rounding. Validation, test and prediction
run the eager model unless `evaluation` is set (a model in eval mode is traced again: seconds to minutes of
compilation for a few eval batches). On a CPU, inductor's `cpp_wrapper` is on (`cpu_options`): the compiled graph
calls its kernels from generated C++ instead of Python, 3% faster a step on that Xeon (103.7 against 107.1 ms,
`benchmarks/finetune_step.py --variants compiled compiled_python_wrapper`, three alternated rounds), for about the
same compilation (the first step of a fit 61-67 s with an empty cache in two runs, 14 s warm); a GPU gets inductor's
defaults (untried there).

YAML (under `trainer:`):

    callbacks:
      - class_path: callbacks.compile.TorchCompile
        init_args: {dynamic: true, min_steps: 0}
"""
from __future__ import annotations

import torch
from lightning.pytorch import Callback
from lightning.pytorch.utilities import rank_zero_info

MODELS = ("model", "teacher")  # the LightningModule attributes compiled (a distillation teacher: its forward only)
CPU_OPTIONS = {"cpp_wrapper": True}  # inductor's options on a CPU unless `cpu_options` says otherwise


class TorchCompile(Callback):
    """Compile `pl_module.model` (and a distillation teacher, `pl_module.teacher`) for the training steps.

    Args:
        dynamic: compile for varying batch shapes (dynamic padding changes the length every step).
        mode: torch.compile's mode (None, "reduce-overhead", "max-autotune", ...).
        backend: torch.compile's backend ("inductor"; "aot_eager" to check a model without generating code).
        teacher: compile the teacher too (its forward only).
        options: the backend's options (inductor: `{cpp_wrapper: true}` calls the kernels from generated C++).
        cpu_options: inductor options added when the model trains on a CPU and `mode` is unset (None: cpp_wrapper).
        min_steps: compile only fits of at least this many optimiser steps (0: every fit).
        evaluation: also run validation, test and prediction compiled (and compile `validate`/`test`/`predict` runs).
    """

    def __init__(self, dynamic: bool = True, mode: str | None = None, backend: str = "inductor", teacher: bool = True,
                 options: dict | None = None, cpu_options: dict | None = None, min_steps: int = 0,
                 evaluation: bool = False):
        if min_steps < 0:
            raise ValueError(f"TorchCompile: min_steps must be 0 or more, got {min_steps}")
        self.options = {"dynamic": dynamic, "mode": mode, "backend": backend, "options": options}
        self.cpu_options = CPU_OPTIONS if cpu_options is None else cpu_options
        self.names = MODELS if teacher else MODELS[:1]
        self.min_steps, self.evaluation = min_steps, evaluation
        self.compiled: dict = {}  # name -> the compiled call of the model this callback compiled

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit" and self.evaluation:  # validate / test / predict
            self._compile(trainer, pl_module)

    def on_fit_start(self, trainer, pl_module) -> None:
        # Not in `setup`: the fit's step count sets up the training data, which must wait until a resumed run has
        # restored its sampler's state (exact resume); the compiled call is made lazily at the first step anyway.
        if self.min_steps and trainer.estimated_stepping_batches < self.min_steps:
            rank_zero_info(f"TorchCompile: {trainer.estimated_stepping_batches:,} optimiser steps, fewer than "
                           f"min_steps={self.min_steps:,}: the model runs eager (compiling would cost more)")
            return
        self._compile(trainer, pl_module)

    def compile_options(self, device: torch.device) -> dict:
        """torch.compile's arguments for a model on `device` (`cpu_options` added on a CPU: torch.compile takes
        `mode` or `options`, not both)."""
        options = dict(self.options)
        if device.type == "cpu" and options["backend"] == "inductor" and options["mode"] is None:
            options["options"] = {**self.cpu_options, **(options["options"] or {})} or None
        return options

    def _compile(self, trainer, pl_module) -> None:
        options = self.compile_options(trainer.strategy.root_device)
        for name in self.names:
            model = getattr(pl_module, name, None)
            if model is not None and getattr(model, "_compiled_call_impl", None) is None:
                model.compile(**options)
                self.compiled[name] = model._compiled_call_impl

    def _eager(self, pl_module, eager: bool) -> None:
        """Run the models this callback compiled eager (True) or compiled again (False)."""
        if self.evaluation:
            return
        for name, call in self.compiled.items():
            getattr(pl_module, name)._compiled_call_impl = None if eager else call

    def on_validation_start(self, trainer, pl_module) -> None:
        self._eager(pl_module, True)

    def on_validation_end(self, trainer, pl_module) -> None:
        self._eager(pl_module, False)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._eager(pl_module, True)  # a later `trainer.test` or `validate` in this process runs the eager model
        self.compiled = {}
