"""The self-attention's query/key/value projections of an encoder, captured with forward hooks. Plain model code.

Layer-wise distillation (TinyBERT's attention scores, MiniLM's attention and value relations, MiniLMv2's q/k/v
relations) needs what the attention computes from, not its output: with SDPA (litbert's default attention) the
model returns no attention weights at all. Every encoder layer computes q, k and v with three Linear modules, so a
forward hook on each records its output ([B, L, H], heads side by side: head j is features j*d .. (j+1)*d - 1); the
scores are then q_h k_h^T / sqrt(d) per head, whatever attention implementation runs. The hooks change nothing in
the forward and are removed when the `capture_qkv` block ends.

Layouts (q/k/v found by name inside each layer's module):
    BERT, RoBERTa, ELECTRA, XLM-R ...   encoder.layer[i].attention.self.{query,key,value}
    DistilBERT                          transformer.layer[i].attention.{q_lin,k_lin,v_lin}
    ALBERT                              encoder.albert_layer_groups[g].albert_layers[0].attention.{query,key,value},
                                        one group shared by consecutive layers: its n-th call in a forward is the
                                        n-th layer it serves
    DeBERTa-v2                          encoder.layer[i].attention.self.{query,key,value}_proj; the projections are
                                        called again on the relative position embeddings, so only the FIRST call of a
                                        layer in a forward (its hidden states) is recorded
    ModernBERT                          layers[i].attn.Wqkv, one fused Linear: its output [B, L, 3H] is q, k, v side by
                                        side (transformers' view(..., 3, heads, d)), split into three thirds
The attention scores are q k^T / sqrt(d) only with absolute positions: DeBERTa's relative terms and BERT's
`relative_key` add to them, and ModernBERT's rotary positions rotate q and k after the projection, so
`check_attention_scores` refuses those for the score-based objectives (attention_mse, attention_kl); the relations
(q-q, k-k, v-v) need the projections alone and work with every layout above.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

QKV_NAMES = (("query", "key", "value"), ("q_lin", "k_lin", "v_lin"), ("query_proj", "key_proj", "value_proj"))
FUSED_QKV_NAMES = ("Wqkv",)  # one Linear computing [q | k | v] (ModernBERT)
ROLES = (0, 1, 2)  # query, key, value
# model types whose attention score is not q k^T of the projections alone (relative terms, rotary positions)
NOT_ABSOLUTE_TYPES = ("deberta", "modernbert")


def encoder_layers(model: nn.Module) -> list[nn.Module]:
    """The module of each encoder layer, in order (ALBERT: its shared group's layer, repeated)."""
    base = getattr(model, "base_model", model)
    if isinstance(getattr(base, "layers", None), nn.ModuleList) and len(base.layers) > 0:  # ModernBERT
        return list(base.layers)
    for owner in ("encoder", "transformer"):
        layers = getattr(getattr(base, owner, None), "layer", None)
        if isinstance(layers, nn.ModuleList) and len(layers) > 0:
            return list(layers)
    groups = getattr(getattr(base, "encoder", None), "albert_layer_groups", None)
    if isinstance(groups, nn.ModuleList):
        config = model.config
        if config.inner_group_num != 1:
            raise ValueError(f"ALBERT with inner_group_num {config.inner_group_num}: one layer per group is supported")
        per_group = config.num_hidden_layers / config.num_hidden_groups
        return [groups[int(i / per_group)].albert_layers[0] for i in range(config.num_hidden_layers)]
    raise ValueError(f"{type(model).__name__}: no encoder layer list (encoder.layer, transformer.layer, "
                     "albert_layer_groups, layers) for the layer-wise distillation objectives")


def qkv_projections(layer: nn.Module) -> list[tuple[nn.Linear, tuple[int, ...]]]:
    """The Linear modules computing one encoder layer's query, key and value, each with the roles (0 query, 1 key,
    2 value) its output holds side by side: three of one role each, or one fused of all three (ModernBERT)."""
    for module in layer.modules():
        for names in QKV_NAMES:
            found = [getattr(module, n, None) for n in names]
            if all(isinstance(m, nn.Linear) for m in found):
                return [(linear, (role,)) for role, linear in zip(ROLES, found)]
        for name in FUSED_QKV_NAMES:
            if isinstance(getattr(module, name, None), nn.Linear):
                return [(getattr(module, name), ROLES)]
    raise ValueError(f"{type(layer).__name__}: no query/key/value projections ({QKV_NAMES} or fused "
                     f"{FUSED_QKV_NAMES}) found")


def check_attention_scores(model: nn.Module) -> None:
    """Raise unless the model's attention scores are q k^T / sqrt(d) alone (absolute position embeddings)."""
    kind = getattr(model.config, "position_embedding_type", "absolute")
    if kind != "absolute" or model.config.model_type.startswith(NOT_ABSOLUTE_TYPES):
        raise ValueError(f"{type(model).__name__} ({model.config.model_type}, position_embedding_type {kind!r}): "
                         "attention_mse and attention_kl need absolute positions (q k^T is the whole score; "
                         "DeBERTa adds relative terms, ModernBERT rotates q and k); the relations "
                         "(value_relation_kl, qkv_relation_kl) and hidden_mse work with relative ones")


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
    None: all) during the FIRST forward run inside the block (later calls of the projections are ignored)."""
    stack = encoder_layers(model)
    n = len(stack)
    wanted = set(range(n)) if layers is None else {i % n for i in layers}
    record = QKVRecord({i: [None, None, None] for i in sorted(wanted)})
    # id(linear) -> (linear, its roles, the layers it computes)
    served: dict[int, tuple[nn.Linear, tuple[int, ...], list[int]]] = {}
    for index, layer in enumerate(stack):
        for linear, roles in qkv_projections(layer):
            served.setdefault(id(linear), (linear, roles, []))[2].append(index)
    handles = []
    for linear, roles, indices in served.values():
        if not wanted & set(indices):
            continue
        calls = [0]  # this projection's calls so far: call c computes layer indices[c]

        def hook(_module, _inputs, output, roles=roles, indices=indices, calls=calls):
            c = calls[0]
            calls[0] += 1
            if c < len(indices) and indices[c] in record.layers:
                # [B, L, H] each, in the graph when the model is trained (a fused output: its thirds)
                for role, part in zip(roles, output.chunk(len(roles), dim=-1)):
                    record.layers[indices[c]][role] = part
        handles.append(linear.register_forward_hook(hook))
    try:
        yield record
    finally:
        for handle in handles:
            handle.remove()
