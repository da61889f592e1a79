"""The one optimiser/schedule helper every LightningModule uses.

AdamW with two parameter groups (no weight decay on biases and LayerNorm weights, as in BERT/RoBERTa), and a linear
warmup followed by a linear decay to zero, stepped once per optimiser step (not per epoch, which is what
LightningCLI's automatic --lr_scheduler would do).
"""
from __future__ import annotations

import torch
from torch import nn
from transformers import get_linear_schedule_with_warmup

NO_DECAY_NORMS = (nn.LayerNorm,)


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
    optimizer = torch.optim.AdamW(weight_decay_groups(model, weight_decay), lr=lr, betas=tuple(betas), eps=eps)
    warmup = resolve_warmup_steps(total_steps, warmup_steps, warmup_ratio)
    scheduler = get_linear_schedule_with_warmup(optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}
