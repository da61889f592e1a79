"""The one optimiser/schedule helper every LightningModule uses.

AdamW with two parameter groups (no weight decay on biases and LayerNorm weights, as in BERT/RoBERTa), and a linear
warmup followed by a linear decay to zero, stepped once per optimiser step (not per epoch, which is what
LightningCLI's automatic --lr_scheduler would do).

The schedule's plan (total and warmup optimiser steps) is part of its state in the checkpoint. A run resumed with a
different plan (a larger `trainer.max_steps` or `max_epochs`, another `limit_train_batches` or number of devices)
is refused with `ScheduleMismatchError` before its first step: the learning rate would otherwise jump to the new
plan's value while the step counter (and the temperature schedule of a distillation run, which keeps the plan of
its checkpoint) continue the old one. `max_time` is not part of the plan: extend a time-capped run freely.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

NO_DECAY_NORMS = (nn.LayerNorm,)
FUSED_ADAMW_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def weight_decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Split trainable parameters: decay for weight matrices/embeddings, none for biases and LayerNorm weights."""
    no_decay = set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if name.endswith("bias") or isinstance(module, NO_DECAY_NORMS) or "LayerNorm" in type(module).__name__:
                no_decay.add(id(param))
    decay_params, no_decay_params = [], []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        (no_decay_params if id(param) in no_decay else decay_params).append(param)
    return [
        {"params": decay_params, "weight_decay": weight_decay},
        {"params": no_decay_params, "weight_decay": 0.0},
    ]


def resolve_warmup_steps(total_steps: int, warmup_steps: int | None = None, warmup_ratio: float | None = None) -> int:
    """Warmup length from an absolute count (wins) or a ratio of the total optimiser steps."""
    if warmup_steps is not None:
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        return int(warmup_steps)
    if warmup_ratio is not None:
        if not 0.0 <= warmup_ratio <= 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1], got {warmup_ratio}")
        return int(round(warmup_ratio * total_steps))
    return 0


class ScheduleMismatchError(ValueError):
    """Resuming a checkpoint whose learning-rate schedule was planned for another number of optimiser steps."""


class LinearWarmupDecay(LambdaLR):
    """Linear warmup from 0 to the peak over `warmup_steps`, then linear decay to 0 at `total_steps` (the schedule of
    `transformers.get_linear_schedule_with_warmup`), with the plan kept in `state_dict` and checked on load."""

    def __init__(self, optimizer, warmup_steps: int, total_steps: int, last_epoch: int = -1):
        self.warmup_steps, self.total_steps = int(warmup_steps), int(total_steps)
        super().__init__(optimizer, self._factor, last_epoch=last_epoch)

    def _factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return step / max(1, self.warmup_steps)
        return max(0.0, (self.total_steps - step) / max(1, self.total_steps - self.warmup_steps))

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["lr_lambdas"] = [None] * len(self.lr_lambdas)  # the plan below is the schedule; nothing else to keep
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        planned = (state_dict.get("total_steps"), state_dict.get("warmup_steps"))
        if planned[0] is not None and planned != (self.total_steps, self.warmup_steps):
            raise ScheduleMismatchError(
                f"cannot resume: the checkpoint's learning-rate schedule was planned for {planned[0]} optimiser steps "
                f"(warmup {planned[1]}), this run plans {self.total_steps} (warmup {self.warmup_steps}); resuming "
                f"would make the learning rate jump. Resume with the original length (--trainer.max_steps "
                f"{planned[0]}, or the original max_epochs, limit_train_batches, accumulate_grad_batches and "
                f"devices), or train longer as a new run that starts from the checkpoint's weights (its export, "
                f"as model.init_args.pretrained) with a schedule of its own")
        state = dict(state_dict)
        state.pop("lr_lambdas", None)
        state.update(total_steps=self.total_steps, warmup_steps=self.warmup_steps)
        self.__dict__.update(state)


def adamw_implementation(groups: list[dict]) -> dict:
    """`{"fused": True}` where torch has a fused AdamW kernel for every parameter (plain float tensors on the CPU or a
    GPU), else `{}` (torch's default, the foreach implementation; e.g. FSDP's sharded DTensor parameters).

    Why: the fused kernel makes one pass over each parameter's memory per step instead of a dozen foreach kernels;
    for MiniLM-L6 (22.7M parameters) on 2 CPU cores it is 15 ms a step instead of 75 ms (benchmarks/README.md), the
    same update up to float rounding (tests/lightning_modules/test_optim.py). The Hugging Face Trainer uses it too
    (its default optim is "adamw_torch_fused" with torch >= 2.8).
    """
    params = [p for group in groups for p in group["params"]]
    fusable = all(type(p) in (torch.Tensor, nn.Parameter) and p.dtype in FUSED_ADAMW_DTYPES
                  and p.device.type in ("cpu", "cuda") for p in params)
    return {"fused": True} if params and fusable else {}


def configure_adamw_with_warmup(
    module,
    model: nn.Module | None = None,
    lr: float = 5e-4,
    weight_decay: float = 0.01,
    betas: tuple[float, float] = (0.9, 0.98),
    eps: float = 1e-6,
    warmup_steps: int | None = None,
    warmup_ratio: float | None = None,
    total_steps: int | None = None,
) -> dict:
    """Return Lightning's optimiser dict for `module` (a LightningModule) training `model` (default: the module).

    `total_steps` defaults to `trainer.estimated_stepping_batches` (optimiser steps, so gradient accumulation and
    max_steps/max_epochs are accounted for).
    """
    model = module if model is None else model
    if total_steps is None:
        total_steps = int(module.trainer.estimated_stepping_batches)
    if total_steps <= 0 or total_steps == float("inf"):
        raise ValueError("cannot schedule the learning rate: set trainer.max_steps or trainer.max_epochs")
    groups = weight_decay_groups(model, weight_decay)
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, **adamw_implementation(groups))
    # Lightning's mixed precision refuses gradient clipping when the optimizer says it unscales fp16 gradients inside
    # its step (torch's `_step_supports_amp_scaling`, True for fused AdamW), even under bf16-mixed, which has no
    # GradScaler. Without the flag a GradScaler (fp16) unscales before clipping and the step instead: the same update.
    optimizer._step_supports_amp_scaling = False
    warmup = resolve_warmup_steps(total_steps, warmup_steps, warmup_ratio)
    scheduler = LinearWarmupDecay(optimizer, warmup_steps=warmup, total_steps=total_steps)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}
