"""LayerwiseMixin: the layer-wise objectives (TinyBERT, MiniLM, MiniLMv2) of a distillation module, switched on by
`layerwise: {name: weight}` (the loss functions: lightning_modules/layerwise_losses.py; the q/k/v hooks:
models/attention_hooks.py).

Per training step: the student's and the teacher's hidden states (when `hidden_mse` is on) and the query/key/value
projections of the layers the objectives read (captured by forward hooks, so SDPA attention works), then one term per
objective. Which layers:
- `hidden_pairs` (hidden_mse, and attention_mse through its layers): `layerwise_layers`, "auto" = for a student
  built from teacher layers [0, 1] + copied layer + 1 (embeddings with embeddings, each layer with the one it was
  copied from), else TinyBERT's uniform map, student hidden index m <-> teacher index round(m * N / M);
- the last layers of both (attention_kl, value_relation_kl: MiniLM);
- the student's last layer and `relation_teacher_layer` of the teacher (qkv_relation_kl: MiniLMv2).
`hidden_mse` goes through a learned nn.Linear(H_student, H_teacher) (one for all layers, as TinyBERT's W_h) when the
widths differ: `self.projections["hidden"]`, trained with the student, in checkpoints, never exported.
"""
from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import torch
from torch import nn

from lightning_modules.layerwise_losses import OBJECTIVES, SAME_HEADS, LayerwiseInputs
from models.attention_hooks import (QKVRecord, attention_heads, capture_qkv, check_attention_scores, encoder_layers,
                                    qkv_projections)


def resolve_hidden_pairs(layerwise_layers: str | Sequence[Sequence[int]], layer_map: list[int] | None,
                         student_layers: int, teacher_layers: int) -> list[tuple[int, int]]:
    """(student, teacher) hidden-state indices (0 = embeddings, i = output of layer i; negative from the end)."""
    if layerwise_layers == "auto":
        if layer_map is not None:
            return [(0, 0)] + [(s + 1, t + 1) for s, t in enumerate(layer_map)]
        return [(m, round(m * teacher_layers / student_layers)) for m in range(student_layers + 1)]
    if isinstance(layerwise_layers, str):
        raise ValueError(f"layerwise_layers {layerwise_layers!r}: expected 'auto' or [student, teacher] pairs")
    pairs = []
    for pair in layerwise_layers:
        if len(pair) != 2:
            raise ValueError(f"layerwise_layers {layerwise_layers}: expected [student, teacher] index pairs")
        s, t = int(pair[0]), int(pair[1])
        if not (-student_layers - 1 <= s <= student_layers and -teacher_layers - 1 <= t <= teacher_layers):
            raise ValueError(f"layerwise_layers pair {[s, t]}: hidden-state indices go 0..{student_layers} (student) "
                             f"and 0..{teacher_layers} (teacher)")
        pairs.append((s % (student_layers + 1), t % (teacher_layers + 1)))
    if not pairs:
        raise ValueError("layerwise_layers: the list is empty")
    return pairs


class LayerwiseMixin:
    """The layer-wise terms; `init_layerwise` after the teacher and the student exist (see the module docstring)."""

    def init_layerwise(self, layerwise: dict[str, float] | None, layerwise_layers, relation_heads: int | None,
                       relation_teacher_layer: int) -> None:
        weights = {str(k): float(v) for k, v in (layerwise or {}).items()}
        unknown = sorted(set(weights) - set(OBJECTIVES))
        if unknown:
            raise ValueError(f"layerwise: unknown objectives {unknown}; expected some of {sorted(OBJECTIVES)}")
        if any(w < 0 for w in weights.values()):
            raise ValueError(f"layerwise: weights must be >= 0, got {weights}")
        self.layerwise = {k: w for k, w in weights.items() if w > 0}  # weight 0: switched off, not computed
        student, teacher = self.model.config, self.teacher.config
        m, n = student.num_hidden_layers, teacher.num_hidden_layers
        self.hidden_pairs = resolve_hidden_pairs(layerwise_layers, self.layer_map, m, n)
        # mapped layers (0-based): the hidden pairs past the embeddings
        self.layer_pairs = [(s - 1, t - 1) for s, t in self.hidden_pairs if s > 0 and t > 0]
        if not -n <= relation_teacher_layer < n:
            raise ValueError(f"relation_teacher_layer {relation_teacher_layer}: the teacher has layers 0..{n - 1}")
        self.last_pair, self.relation_pair = (m - 1, n - 1), (m - 1, relation_teacher_layer % n)
        self.relation_heads = int(relation_heads or student.num_attention_heads)
        self.projections = nn.ModuleDict()  # training-only modules: optimised, checkpointed, never exported
        if not self.layerwise:
            return
        self.check_layerwise_models()
        if "hidden_mse" in self.layerwise and student.hidden_size != teacher.hidden_size:
            self.projections["hidden"] = nn.Linear(student.hidden_size, teacher.hidden_size)

    def check_layerwise_models(self) -> None:
        """Errors before training: layouts, positions, head counts, relation heads, layers that attention_mse needs."""
        names, student, teacher = set(self.layerwise), self.model.config, self.teacher.config
        for model in (self.model, self.teacher):
            if names - {"hidden_mse"}:  # the objectives that read q/k/v: a layout models/attention_hooks.py knows
                qkv_projections(encoder_layers(model)[0])
            if names & {"attention_mse", "attention_kl"}:  # and those that read the scores: q k^T the whole score
                check_attention_scores(model)
        same = sorted(names & set(SAME_HEADS))
        if same and attention_heads(self.model) != attention_heads(self.teacher):
            raise ValueError(f"{same} compare attention heads one to one, but the student has "
                             f"{attention_heads(self.model)} heads and the teacher {attention_heads(self.teacher)}; "
                             "use qkv_relation_kl (relation_heads) for other head counts")
        if "attention_mse" in names and not self.layer_pairs:
            raise ValueError("attention_mse: layerwise_layers maps no layer (only embeddings)")
        if "qkv_relation_kl" in names:
            bad = [w for w in (student.hidden_size, teacher.hidden_size) if w % self.relation_heads]
            if bad:
                raise ValueError(f"relation_heads {self.relation_heads} must divide both widths "
                                 f"({student.hidden_size}, {teacher.hidden_size})")

    @property
    def layerwise_on(self) -> bool:
        return bool(getattr(self, "layerwise", None))

    def layerwise_needs_hidden(self) -> bool:
        """Whether the objectives read the hidden states of every layer (hidden_mse)."""
        return "hidden_mse" in getattr(self, "layerwise", {})

    def qkv_layers(self, side: int) -> set[int]:
        """Layers whose q/k/v the objectives read: side 0 = student, 1 = teacher."""
        layers = set()
        for name in self.layerwise:
            which = OBJECTIVES[name].qkv_layers
            if which == "mapped":
                layers |= {pair[side] for pair in self.layer_pairs}
            elif which == "last":
                layers.add(self.last_pair[side])
            elif which == "relation":
                layers.add(self.relation_pair[side])
        return layers

    def capture(self, model: nn.Module):
        """A `with` block recording `model`'s q/k/v for the objectives (the student or the teacher); a no-op
        context yielding an empty record when none is needed."""
        layers = self.qkv_layers(0 if model is self.model else 1) if self.layerwise_on else set()
        return capture_qkv(model, layers) if layers else nullcontext(QKVRecord())

    def layerwise_terms(self, student_hidden: Sequence[torch.Tensor] | None,
                        teacher_hidden: Sequence[torch.Tensor] | None, student_qkv: QKVRecord,
                        teacher_qkv: QKVRecord, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """One term per objective switched on (means over tokens, query positions or (query, key) pairs)."""
        if not self.layerwise_on:
            return {}
        inputs = LayerwiseInputs(
            student_hidden=student_hidden or (), teacher_hidden=teacher_hidden or (),
            student_qkv=student_qkv.as_dict(), teacher_qkv=teacher_qkv.as_dict(), attention_mask=attention_mask,
            hidden_pairs=self.hidden_pairs, layer_pairs=self.layer_pairs, last_pair=self.last_pair,
            relation_pair=self.relation_pair, student_heads=attention_heads(self.model),
            teacher_heads=attention_heads(self.teacher), relation_heads=self.relation_heads,
            projection=self.projections["hidden"] if "hidden" in self.projections else None)
        return {name: OBJECTIVES[name].loss(inputs) for name in self.layerwise}
