"""The self-attention's query/key/value projections of an encoder, captured with forward hooks. Plain model code.

Layer-wise distillation (TinyBERT's attention scores, MiniLM's attention and value relations, MiniLMv2's q/k/v
relations) needs what the attention computes from, not its output: with SDPA (litbert's default attention) the
model returns no attention weights at all. Every encoder layer computes q, k and v with three Linear modules, so a
forward hook on each records its output ([B, L, H], heads side by side: head j is features j*d .. (j+1)*d - 1); the
scores are then q_h k_h^T / sqrt(d) per head, whatever attention implementation runs. The hooks change nothing in
the forward and are removed when the `capture_qkv` block ends.

Layouts (found by name inside each layer of the encoder's layer list):
    BERT, RoBERTa, ELECTRA, XLM-R ...   attention.self.{query,key,value}
    DistilBERT                          attention.{q_lin,k_lin,v_lin}
Absolute positions only: relative ones (DeBERTa, BERT's relative_key) add terms to the scores that q k^T misses.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

QKV_NAMES = (("query", "key", "value"), ("q_lin", "k_lin", "v_lin"))


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    """The encoder's list of layers (`encoder.layer`: BERT-likes; `transformer.layer`: DistilBERT)."""
    base = getattr(model, "base_model", model)
    for owner in ("encoder", "transformer"):
        layers = getattr(getattr(base, owner, None), "layer", None)
        if isinstance(layers, nn.ModuleList) and len(layers) > 0:
            return layers
    raise ValueError(f"{type(model).__name__}: no encoder layer list (encoder.layer / transformer.layer) for the "
                     "layer-wise distillation objectives")


def qkv_projections(layer: nn.Module) -> tuple[nn.Linear, nn.Linear, nn.Linear]:
    """(query, key, value) Linear modules of one encoder layer."""
    for module in layer.modules():
        for names in QKV_NAMES:
            found = [getattr(module, n, None) for n in names]
            if all(isinstance(m, nn.Linear) for m in found):
                return found[0], found[1], found[2]
    raise ValueError(f"{type(layer).__name__}: no query/key/value projections ({QKV_NAMES}) found")


def check_absolute_positions(model: nn.Module) -> None:
    """Raise unless the model's attention scores are q k^T / sqrt(d) alone (absolute position embeddings)."""
    kind = getattr(model.config, "position_embedding_type", "absolute")
    if kind != "absolute" or model.config.model_type.startswith("deberta"):
        raise ValueError(f"{type(model).__name__} ({model.config.model_type}, position_embedding_type {kind!r}): "
                         "the attention-based objectives need absolute positions (q k^T is the whole score)")


def attention_heads(model: nn.Module) -> int:
    return int(model.config.num_attention_heads)


@dataclass
class QKVRecord:
    """layer index -> (query, key, value) outputs [B, L, H] of the layers asked for, filled during one forward."""

    layers: dict[int, list] = field(default_factory=dict)

    def qkv(self, layer: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v = self.layers[layer]
        return q, k, v

    def as_dict(self) -> dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        return {i: self.qkv(i) for i in self.layers}


@contextmanager
def capture_qkv(model: nn.Module, layers: Iterable[int] | None = None) -> Iterator[QKVRecord]:
    """Record the query, key and value projections of the encoder layers `layers` (0-based, negative from the end;
    None: all) during the forwards run inside the block. Run ONE forward per block: a second overwrites the first."""
    stack = encoder_layers(model)
    n = len(stack)
    wanted = set(range(n)) if layers is None else {i % n for i in layers}
    record = QKVRecord({i: [None, None, None] for i in sorted(wanted)})
    handles = []
    for index in sorted(wanted):
        for role, linear in enumerate(qkv_projections(stack[index])):
            def hook(_module, _inputs, output, index=index, role=role):
                record.layers[index][role] = output  # [B, L, H], in the graph when the model is trained
            handles.append(linear.register_forward_hook(hook))
    try:
        yield record
    finally:
        for handle in handles:
            handle.remove()
