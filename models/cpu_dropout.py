"""Dropout on the CPU with a cheaper random mask: the same Bernoulli(1 - p) keep mask and 1 / (1 - p) scaling as
`torch.nn.functional.dropout`, drawn from torch's global generator (so `torch.manual_seed` and callbacks/step_seed.py
govern it), 2.5-3.2x faster (benchmarks/cpu_ops.py, two runs).

Why by hand: torch's CPU dropout draws one Bernoulli sample per element through its serial generator (6-8 ns an
element on the project's 2-core Zen 4, against 2-3 ns here: benchmarks/cpu_ops.py), and SDPA with dropout on a CPU
runs its math path with the same draw. In a bf16 MLM step of `roberta_small` that is 85 ms of 490 (17%: 17M elements
a step); the matrix products are what remains. Here one 64-bit draw gives four 15-bit uniform integers (`random_` on
int64 fills 63 bits: the top bit of each 16-bit quarter is masked off), and an element is kept when its integer is at
least round(p * 2^15): p is rounded to a multiple of 2^-15 (0.1 -> 0.100006). Nothing changes on a GPU (its dropout
kernel is fast), in eval mode, or at p = 0: those take torch's own path.

`use_cpu_dropout(model)` puts this into a Hugging Face model in place: every `nn.Dropout` becomes a `CPUDropout` (no
parameters: state dicts and exports are unchanged), and an SDPA model's attention becomes "sdpa_cpu_dropout", which is
SDPA's CPU math path with this mask (torch's SDPA runs that same math path on a CPU whenever dropout is on) and SDPA
itself everywhere else. `save_pretrained` does not record an attention implementation: an export loads as SDPA.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

KEEP_BITS = 15  # uniform bits per element: p is rounded to a multiple of 2^-15
ATTENTION = "sdpa_cpu_dropout"  # the attention implementation's registered name


def keep_mask(shape: torch.Size | tuple[int, ...], p: float) -> torch.Tensor:
    """[*shape] bool on the CPU, each element True (kept) with probability 1 - p, from torch's global generator."""
    mask = torch.empty(shape, dtype=torch.bool)
    _fill_keep_mask(mask, p)
    return mask


def _fill_keep_mask(mask: torch.Tensor, p: float) -> None:
    """Draw `keep_mask`'s values into `mask` (a contiguous bool CPU tensor)."""
    n = mask.numel()
    words = torch.empty((n + 3) // 4, dtype=torch.int64).random_()  # 63 random bits each, in [0, 2^63)
    quarters = words.view(torch.int16)[:n] & (2 ** KEEP_BITS - 1)  # [n] uniform in [0, 2^15)
    torch.ge(quarters, round(p * 2 ** KEEP_BITS), out=mask.view(-1))


# Under torch.compile, `random_` breaks the graph (dynamo does not trace in-place random ops), and inductor's own
# random numbers cost more per element (README "Speed"). So a compiled model draws its masks through this custom
# operator, which the compiler leaves opaque and runs as `_fill_keep_mask`. It writes into a fresh mask: an operator
# that mutates its argument is never merged with another call of the same arguments nor recomputed in the backward
# pass (which must see the forward's mask), as a pure one would be by the compiler's common-subexpression pass.
@torch.library.custom_op("litbert::fill_keep_mask_", mutates_args=("mask",))
def fill_keep_mask_(mask: torch.Tensor, p: float) -> None:
    """Draw `keep_mask`'s values into `mask`, as one operator a compiled graph calls."""
    _fill_keep_mask(mask, p)


def masked_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Training-mode dropout of a CPU tensor with a `keep_mask`: x / (1 - p) where kept, 0 elsewhere (x's dtype)."""
    if torch.compiler.is_compiling():
        mask = torch.empty(x.shape, dtype=torch.bool)
        fill_keep_mask_(mask, p)
    else:
        mask = keep_mask(x.shape, p)
    return torch.where(mask, x * (1.0 / (1.0 - p)), 0.0)


class CPUDropout(nn.Dropout):
    """`nn.Dropout` whose training-mode forward on a CPU tensor draws its mask with `keep_mask`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and 0.0 < self.p < 1.0 and x.device.type == "cpu" and not self.inplace:
            return masked_dropout(x, self.p)
        return super().forward(x)


def sdpa_cpu_dropout_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                               attention_mask: torch.Tensor | None, dropout: float = 0.0,
                               scaling: float | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' SDPA attention (`sdpa_attention_forward`: [B, heads, L, d] in, [B, L, heads, d] out), with the
    attention-probability dropout of a CPU training step drawn by `keep_mask`. The rest is delegated: no dropout,
    another device, a causal or biased attention, grouped key/value heads."""
    plain = (dropout == 0.0 or query.device.type != "cpu" or kwargs.get("is_causal")
             or kwargs.get("position_bias") is not None or getattr(module, "num_key_value_groups", 1) > 1)
    if plain:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling  # [B, heads, Lq, Lk]
    if attention_mask is not None:  # sdpa_mask's bool (True: attend) or an additive float mask
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask
    probs = F.softmax(scores, dim=-1)
    probs = masked_dropout(probs, dropout)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), None  # [B, Lq, heads, d]


AttentionInterface.register(ATTENTION, sdpa_cpu_dropout_attention)
AttentionMaskInterface.register(ATTENTION, sdpa_mask)  # the masks SDPA gets


def use_cpu_dropout(model: nn.Module) -> int:
    """Switch `model` (a Hugging Face model, in place) to `CPUDropout` and, if it runs SDPA attention, to
    "sdpa_cpu_dropout". Returns how many dropout modules were replaced."""
    replaced = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.Dropout:
                setattr(module, name, CPUDropout(child.p, child.inplace).train(child.training))
                replaced += 1
    config = getattr(model, "config", None)
    if getattr(config, "_attn_implementation", None) == "sdpa" and hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(ATTENTION)
    return replaced
