"""Layer-wise distillation objectives (TinyBERT, MiniLM, MiniLMv2): pure functions of hidden states and of the
attention's query/key/value projections, plus the table (`OBJECTIVES`) the distillation modules read.

Shapes: hidden states and projections are [B, L, H] (H = the model's width: heads x head size); attention scores
and relations are [B, h, L, L] (h heads or relation heads, queries x keys); `attention_mask` is [B, L] (1 = token).
Padded positions are excluded everywhere: as queries (rows) and as keys (columns). Every loss is computed in fp32.

Adding an objective: one function of `LayerwiseInputs` in `OBJECTIVES` (with the layers whose q/k/v it reads), then
`layerwise: {name: weight}` in a config; the term is logged as `train/loss_<name>`.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

MASKED_SCORE = torch.finfo(torch.float32).min  # a padded key's score: no probability after the softmax


def _zero(like: torch.Tensor) -> torch.Tensor:
    """A zero that keeps the autograd graph (nothing to compare, e.g. an all-padding batch)."""
    return like.float().sum() * 0.0


def hidden_mse(student_hidden: Sequence[torch.Tensor], teacher_hidden: Sequence[torch.Tensor],
               attention_mask: torch.Tensor, projection: nn.Module | None = None) -> torch.Tensor:
    """TinyBERT's hidden-state loss: mean over (student, teacher) pairs of MSE(projection(h_s), h_t), averaged over
    the non-padded tokens and the teacher's features. `projection` (H_s -> H_t, learned) maps a narrower student into
    the teacher's width; None when the widths match."""
    keep = attention_mask.bool()  # [B, L]
    losses = []
    for s, t in zip(student_hidden, teacher_hidden, strict=True):
        s_tok, t_tok = s[keep], t[keep]  # [n, H_s], [n, H_t]
        if projection is not None:
            s_tok = projection(s_tok)
        if s_tok.shape[-1] != t_tok.shape[-1]:
            raise ValueError(f"hidden_mse: student width {s_tok.shape[-1]} != teacher width {t_tok.shape[-1]} "
                             "without a projection")
        losses.append(F.mse_loss(s_tok.float(), t_tok.float()) if s_tok.shape[0] else _zero(s))
    return torch.stack(losses).mean()


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, L, H] -> [B, heads, L, H / heads] (the attention's own split: head j is features j*d .. (j+1)*d - 1)."""
    batch, length, width = x.shape
    if width % heads:
        raise ValueError(f"a width of {width} does not split into {heads} heads")
    return x.view(batch, length, heads, width // heads).transpose(1, 2)


def scaled_dot_scores(a: torch.Tensor, b: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, heads, L, L] = a_h b_h^T / sqrt(d_h) per head: the attention's pre-softmax scores for (a, b) = (q, k),
    a relation for a = b (MiniLM's value-value, MiniLMv2's q-q, k-k, v-v)."""
    a_h, b_h = split_heads(a.float(), heads), split_heads(b.float(), heads)
    return a_h @ b_h.transpose(-1, -2) / math.sqrt(a_h.shape[-1])


def pair_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, 1, L, L]: True where both the query (row) and the key (column) are tokens."""
    keep = attention_mask.bool()
    return keep[:, None, :, None] & keep[:, None, None, :]


def attention_mse(student_scores: Sequence[torch.Tensor], teacher_scores: Sequence[torch.Tensor],
                  attention_mask: torch.Tensor) -> torch.Tensor:
    """TinyBERT's attention loss: mean over layer pairs of the MSE between pre-softmax scores [B, h, L, L] (same head
    count), averaged over heads and (query, key) pairs of tokens (padded queries and keys excluded)."""
    valid = pair_mask(attention_mask)
    losses = []
    for s, t in zip(student_scores, teacher_scores, strict=True):
        if s.shape != t.shape:
            raise ValueError(f"attention_mse: student scores {tuple(s.shape)} vs teacher {tuple(t.shape)}: the head "
                             "counts must match")
        mask = valid.expand_as(s)
        losses.append(F.mse_loss(s[mask], t[mask]) if mask.any() else _zero(s))
    return torch.stack(losses).mean()


def masked_log_softmax(scores: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """log softmax over the keys of [B, h, L, L] scores, padded keys given no probability."""
    keys = attention_mask.bool()[:, None, None, :]  # [B, 1, 1, L]
    return scores.float().masked_fill(~keys, MASKED_SCORE).log_softmax(dim=-1)


def attention_kl(student_scores: torch.Tensor, teacher_scores: torch.Tensor,
                 attention_mask: torch.Tensor) -> torch.Tensor:
    """MiniLM's self-attention transfer: KL(softmax(S_t) || softmax(S_s)) over the keys, for [B, h, L, L] scores of the
    same head count, summed over keys and averaged over heads and non-padded queries."""
    if student_scores.shape != teacher_scores.shape:
        raise ValueError(f"attention_kl: student scores {tuple(student_scores.shape)} vs teacher "
                         f"{tuple(teacher_scores.shape)}: the head counts must match")
    log_p = masked_log_softmax(teacher_scores, attention_mask)
    log_q = masked_log_softmax(student_scores, attention_mask)
    keys = attention_mask.bool()[:, None, None, :]
    # padded keys: p = 0, and log p - log q is not meaningful there, so they add nothing
    kl = torch.where(keys, log_p.exp() * (log_p - log_q), 0.0).sum(-1)  # [B, h, L] per query
    queries = attention_mask.bool()[:, None, :].expand_as(kl)
    return kl[queries].mean() if queries.any() else _zero(student_scores)


def relation_kl(student_x: torch.Tensor, teacher_x: torch.Tensor, attention_mask: torch.Tensor,
                student_heads: int, teacher_heads: int) -> torch.Tensor:
    """KL between the relations softmax(x_h x_h^T / sqrt(d_h)) of teacher and student ([B, L, H] each), per head:
    `attention_kl` on the relation scores (the widths may differ, the head counts must be equal)."""
    return attention_kl(scaled_dot_scores(student_x, student_x, student_heads),
                        scaled_dot_scores(teacher_x, teacher_x, teacher_heads), attention_mask)


def qkv_relation_kl(student_qkv: Sequence[torch.Tensor], teacher_qkv: Sequence[torch.Tensor],
                    attention_mask: torch.Tensor, relation_heads: int) -> torch.Tensor:
    """MiniLMv2's multi-head self-attention relation transfer: the mean over q-q, k-k and v-v of `relation_kl`, both
    models' projections split into `relation_heads` heads (so their attention head counts need not match)."""
    terms = [relation_kl(s, t, attention_mask, relation_heads, relation_heads)
             for s, t in zip(student_qkv, teacher_qkv, strict=True)]
    return torch.stack(terms).mean()


# ---- the objectives the distillation modules switch on (`layerwise: {name: weight}`) --------------------------------
@dataclass
class LayerwiseInputs:
    """What one training step gives the objectives.

    hidden_pairs: (student, teacher) indices into the hidden states (0 = embeddings, i = output of layer i).
    layer_pairs: (student, teacher) layer indices (0-based) of the mapped layers (hidden pairs without embeddings).
    last_pair: the last layers of both (MiniLM). relation_pair: the student's last layer and the chosen teacher layer.
    student_qkv / teacher_qkv: layer index -> (query, key, value) projections, [B, L, H] each, of the layers asked for.
    """

    student_hidden: Sequence[torch.Tensor]
    teacher_hidden: Sequence[torch.Tensor]
    student_qkv: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    teacher_qkv: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    attention_mask: torch.Tensor
    hidden_pairs: list[tuple[int, int]]
    layer_pairs: list[tuple[int, int]]
    last_pair: tuple[int, int]
    relation_pair: tuple[int, int]
    student_heads: int
    teacher_heads: int
    relation_heads: int
    projection: nn.Module | None = None

    def scores(self, pair: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The pre-softmax attention scores [B, h, L, L] of a (student, teacher) layer pair."""
        (s_q, s_k, _), (t_q, t_k, _) = self.student_qkv[pair[0]], self.teacher_qkv[pair[1]]
        return scaled_dot_scores(s_q, s_k, self.student_heads), scaled_dot_scores(t_q, t_k, self.teacher_heads)


@dataclass(frozen=True)
class Objective:
    """A layer-wise term: `loss(inputs)`, and which layers' q/k/v it reads ("mapped", "last", "relation" or None)."""

    loss: Callable[[LayerwiseInputs], torch.Tensor]
    qkv_layers: str | None


def _attention_mse(x: LayerwiseInputs) -> torch.Tensor:
    pairs = [x.scores(p) for p in x.layer_pairs]
    return attention_mse([s for s, _ in pairs], [t for _, t in pairs], x.attention_mask)


def _attention_kl(x: LayerwiseInputs) -> torch.Tensor:
    return attention_kl(*x.scores(x.last_pair), x.attention_mask)


def _value_relation_kl(x: LayerwiseInputs) -> torch.Tensor:
    s, t = x.last_pair
    return relation_kl(x.student_qkv[s][2], x.teacher_qkv[t][2], x.attention_mask, x.student_heads, x.teacher_heads)


def _qkv_relation_kl(x: LayerwiseInputs) -> torch.Tensor:
    s, t = x.relation_pair
    return qkv_relation_kl(x.student_qkv[s], x.teacher_qkv[t], x.attention_mask, x.relation_heads)


def _hidden_mse(x: LayerwiseInputs) -> torch.Tensor:
    pairs = x.hidden_pairs
    return hidden_mse([x.student_hidden[s] for s, _ in pairs], [x.teacher_hidden[t] for _, t in pairs],
                      x.attention_mask, x.projection)


OBJECTIVES: dict[str, Objective] = {
    "hidden_mse": Objective(_hidden_mse, None),                      # TinyBERT, hidden states (+ embeddings)
    "attention_mse": Objective(_attention_mse, "mapped"),            # TinyBERT, attention scores
    "attention_kl": Objective(_attention_kl, "last"),                # MiniLM, attention distributions
    "value_relation_kl": Objective(_value_relation_kl, "last"),      # MiniLM, value-value relation
    "qkv_relation_kl": Objective(_qkv_relation_kl, "relation"),      # MiniLMv2, q-q / k-k / v-v relations
}
# objectives whose per-head comparison needs the same head count in teacher and student
SAME_HEADS = ("attention_mse", "attention_kl", "value_relation_kl")
