"""The last encoder layer only at the positions the head reads: the first token (sequence classification) or the
masked positions (sparse MLM prediction).

A sequence-classification head reads the final hidden state of the first token alone (BERT's pooler, RoBERTa's
classification head and DistilBERT's pre_classifier all take `hidden[:, 0]`); litbert's sparse MLM head reads the
masked positions alone (15%). So in the LAST layer only those rows are needed: their queries, their attention over
all keys and values, the output projection, the feed-forward block and the LayerNorms; only the key and value
projections still run at every position. That removes about 10/12 of the last layer (6 layers: ~14% of the encoder's
matrix FLOPs; 4 layers with 15% masked: ~18%), in the forward and the backward, exactly: the head sees the vectors the
full layer gives at those positions (the other positions' outputs are never read). Hugging Face has no switch for this
(its layers always return every position), so `last_layer_at` puts a thin stand-in for the last layer into the
encoder's layer list for the duration of one call and restores it after; the stand-in uses the layer's own modules
(and the model's attention implementation: eager or SDPA), so parameters, state-dict keys and exports are untouched.

Layouts handled: BERT-style layers (`attention.self.{query,key,value}`, `attention.output`, `feed_forward_chunk`:
BERT, RoBERTa, ELECTRA, XLM-R, ...) and DistilBERT's `TransformerBlock`. Anything else (or a layer wrapped by FSDP or
activation checkpointing) runs the full layer: same result, no gain. The stand-in returns [B, M, H] (M positions per
row), so the context must not be used when hidden states of every position are wanted (`output_hidden_states`, a
cosine loss). Attention is bidirectional (an encoder's): every query row sees the same key padding mask.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.bert.modeling_bert import eager_attention_forward


def _layer_list(model: nn.Module) -> nn.ModuleList | None:
    """The encoder's list of layers (`encoder.layer` in BERT-style models, `transformer.layer` in DistilBERT)."""
    base = getattr(model, "base_model", model)
    for owner in ("encoder", "transformer"):
        layers = getattr(getattr(base, owner, None), "layer", None)
        if isinstance(layers, nn.ModuleList) and len(layers) > 0:
            return layers
    return None


def _projections(layer: nn.Module) -> tuple[nn.Module, nn.Linear, nn.Linear, nn.Linear] | None:
    """(attention module, query, key, value) of a BERT-style or DistilBERT layer; None for another layout."""
    attention = getattr(layer, "attention", None)
    self_attention = getattr(attention, "self", None)
    if self_attention is not None and all(hasattr(self_attention, n) for n in ("query", "key", "value")) \
            and hasattr(attention, "output") and hasattr(layer, "feed_forward_chunk"):
        return self_attention, self_attention.query, self_attention.key, self_attention.value
    if attention is not None and all(hasattr(attention, n) for n in ("q_lin", "k_lin", "v_lin", "out_lin")) \
            and hasattr(layer, "sa_layer_norm") and hasattr(layer, "ffn"):
        return attention, attention.q_lin, attention.k_lin, attention.v_lin
    return None


class PartialLayer(nn.Module):
    """Stand-in for an encoder layer that computes its output at `positions` only: [B, L, H] in, [B, M, H] out.

    positions: [B, M] indices into the sequence (None: the first token, M = 1).
    """

    def __init__(self, layer: nn.Module, positions: torch.Tensor | None = None):
        super().__init__()
        self.layer = layer
        self.positions = positions

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, *args, **kwargs):
        batch, length, _ = hidden_states.shape
        layer = self.layer
        attention, query, key, value = _projections(layer)
        head_dim = attention.attention_head_size
        if self.positions is None:
            first = hidden_states[:, :1]  # [B, 1, H]
        else:  # [B, M, H]: the rows at the positions
            first = hidden_states.gather(1, self.positions[..., None].expand(-1, -1, hidden_states.shape[-1]))

        def heads(x: torch.Tensor) -> torch.Tensor:  # [B, n, H] -> [B, heads, n, head_dim]
            return x.view(batch, x.shape[1], -1, head_dim).transpose(1, 2)

        if attention_mask is not None and attention_mask.dim() == 4 and attention_mask.shape[-2] == length:
            # the first query's row of a [B, 1|heads, L, L] mask: every (real) query row of an encoder's mask is
            # the key padding mask, so it serves all M queries
            attention_mask = attention_mask[:, :, :1]
        interface = ALL_ATTENTION_FUNCTIONS.get_interface(attention.config._attn_implementation,
                                                          eager_attention_forward)
        context, _ = interface(attention, heads(query(first)), heads(key(hidden_states)),
                               heads(value(hidden_states)), attention_mask,
                               dropout=attention.dropout.p if attention.training else 0.0, scaling=attention.scaling)
        context = context.reshape(batch, first.shape[1], -1)  # [B, M, H]
        if hasattr(layer, "feed_forward_chunk"):  # BERT-style: output projection + dropout + residual LayerNorm
            hidden = layer.attention.output(context, first)
            return layer.feed_forward_chunk(hidden)
        hidden = layer.sa_layer_norm(attention.out_lin(context) + first)  # DistilBERT
        return layer.output_layer_norm(layer.ffn(hidden) + hidden)


# Families whose *ForSequenceClassification head reads the first token alone (pooler / classification head on
# hidden[:, 0]); ModernBERT (mean pooling is an option), GPT-style (last token) and others are not listed.
FIRST_TOKEN_HEAD_TYPES = {"bert", "roberta", "xlm-roberta", "camembert", "distilbert", "electra"}


def trimmable(model: nn.Module, first_token_head: bool = False) -> bool:
    """Whether `last_layer_at` can trim `model`'s last layer (else it runs the model unchanged); with
    `first_token_head`, also whether the model's own classification head reads the first token alone."""
    if first_token_head and (getattr(getattr(model, "config", None), "model_type", None) not in FIRST_TOKEN_HEAD_TYPES
                             or not type(model).__name__.endswith("ForSequenceClassification")):
        return False
    layers = _layer_list(model)
    return layers is not None and _projections(layers[-1]) is not None


@contextmanager
def last_layer_at(model: nn.Module, positions: torch.Tensor | None = None) -> Iterator[bool]:
    """Within the block, `model`'s last encoder layer computes only `positions` ([B, M] indices; None: the first
    token, for the model's own sequence-classification head), so its last hidden state is [B, M, H].

    Yields whether it did (False: an unknown layout, M = 0, or a compiled model given `positions`; the model runs
    unchanged). Never with `output_hidden_states`.
    """
    compiled = getattr(model, "_compiled_call_impl", None) is not None
    if (compiled and positions is not None) or not trimmable(model, first_token_head=positions is None) \
            or (positions is not None and positions.shape[1] == 0):
        yield False  # a compiled model would be recompiled for each step's new positions tensor
        return
    layers = _layer_list(model)
    original = layers[-1]
    if positions is None:
        # the first-token stand-in has no state of its own: one per layer, kept, so a compiled model (whose guards
        # check the module they traced) sees the same module every call and is compiled once
        if getattr(original, "_first_token_layer", None) is None:
            object.__setattr__(original, "_first_token_layer", PartialLayer(original))  # not a submodule
        layers[-1] = original._first_token_layer
    else:
        layers[-1] = PartialLayer(original, positions)
    try:
        yield True
    finally:
        layers[-1] = original


def selected_positions(selected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """([B, M] indices of the True entries of a [B, L] mask, each row in increasing order and padded with 0,
    [B, M] validity), M the largest count in a row; `out[valid]` is then in the row-major order of `x[selected]`."""
    counts = selected.sum(dim=1)  # [B]
    width = int(counts.max()) if selected.numel() else 0
    # a stable descending sort of the 0/1 mask puts each row's selected indices first, in increasing order
    positions = torch.sort(selected.to(torch.int8), dim=1, descending=True, stable=True).indices[:, :width]
    valid = torch.arange(width, device=selected.device)[None, :] < counts[:, None]
    return positions.masked_fill(~valid, 0), valid
