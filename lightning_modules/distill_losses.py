"""The loss terms of DistilBERT-style distillation (Sanh et al. 2019; Hinton et al. 2015), as plain tensor functions.

All terms are computed in fp32 (logits may arrive in bf16 under mixed precision) and return a scalar that still
depends on the student when nothing is selected (a zero with a gradient path), so every term can always be logged.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from models.mlm import IGNORE_INDEX

# Large negative logit for padded QA positions: finite, so softmax/KL stay NaN-free, and still exact zero probability
# in fp32. (float('-inf') in both student and teacher would give 0 * -inf = NaN in the KL.)
PAD_LOGIT = -1e4


def _zero_like(x: torch.Tensor) -> torch.Tensor:
    return x.float().sum() * 0.0


def soft_cross_entropy(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
                       scale_by_t2: bool = True) -> torch.Tensor:
    """KL(teacher_T || student_T) on [N, C] logits, summed over classes, mean over the N rows, times T^2.

    The T^2 factor (Hinton et al.) keeps the gradient scale steady across temperatures: the gradient of the
    unscaled KL with respect to the student logits shrinks like 1/T^2 for large T.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"soft loss: student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ (do the models share the vocabulary / labels?)")
    if student_logits.shape[0] == 0:
        return _zero_like(student_logits)
    t = float(temperature)
    student_log_probs = F.log_softmax(student_logits.float() / t, dim=-1)
    teacher_log_probs = F.log_softmax(teacher_logits.float() / t, dim=-1)
    kl = F.kl_div(student_log_probs, teacher_log_probs, reduction="batchmean", log_target=True)
    return kl * t * t if scale_by_t2 else kl


def masked_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on [N, V] logits against [N] labels (IGNORE_INDEX rows skipped); 0 when none is masked."""
    if (labels != IGNORE_INDEX).sum() == 0:
        return _zero_like(logits)
    return F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX)


def cosine_hidden_loss(student_hidden: Sequence[torch.Tensor], teacher_hidden: Sequence[torch.Tensor],
                       attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean over (student, teacher) pairs of the cosine embedding loss 1 - cos(h_s, h_t) at non-padded positions.

    student_hidden[i], teacher_hidden[i]: [B, L, H] hidden states to align; attention_mask: [B, L] (1 = token).
    """
    keep = attention_mask.bool()  # [B, L]
    losses = []
    for s, t in zip(student_hidden, teacher_hidden, strict=True):
        if s.shape[-1] != t.shape[-1]:
            raise ValueError(f"cosine loss: student hidden size {s.shape[-1]} != teacher hidden size {t.shape[-1]}; "
                             "set alpha_cos: 0 for students of another width")
        s_tok, t_tok = s[keep].float(), t[keep].float()  # [n_tokens, H]
        if s_tok.shape[0] == 0:
            losses.append(_zero_like(s))
            continue
        target = s_tok.new_ones(s_tok.shape[0])
        losses.append(F.cosine_embedding_loss(s_tok, t_tok, target, reduction="mean"))
    return torch.stack(losses).mean()


def regression_soft_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """MSE between the student's and the teacher's regression outputs ([B, 1]): no temperature for regression."""
    return F.mse_loss(student_logits.float(), teacher_logits.float())


def mask_padding_logits(logits: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, L] span logits with padded positions set to PAD_LOGIT, so they carry no probability."""
    return logits.float().masked_fill(~attention_mask.bool(), PAD_LOGIT)


def qa_soft_loss(student_start: torch.Tensor, student_end: torch.Tensor, teacher_start: torch.Tensor,
                 teacher_end: torch.Tensor, attention_mask: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean of the start and end KL terms (T^2-scaled) over the non-padded token positions of [B, L] span logits."""
    start = soft_cross_entropy(mask_padding_logits(student_start, attention_mask),
                               mask_padding_logits(teacher_start, attention_mask), temperature)
    end = soft_cross_entropy(mask_padding_logits(student_end, attention_mask),
                             mask_padding_logits(teacher_end, attention_mask), temperature)
    return (start + end) / 2


def qa_hard_loss(start_logits: torch.Tensor, end_logits: torch.Tensor, start_positions: torch.Tensor,
                 end_positions: torch.Tensor) -> torch.Tensor:
    """Mean of the start and end cross-entropies, as in Hugging Face's *ForQuestionAnswering."""
    return (F.cross_entropy(start_logits.float(), start_positions) +
            F.cross_entropy(end_logits.float(), end_positions)) / 2


def classification_hard_loss(logits: torch.Tensor, labels: torch.Tensor, is_regression: bool) -> torch.Tensor:
    """Cross-entropy on [B, C] logits, or MSE on [B, 1] regression outputs."""
    if is_regression:
        return F.mse_loss(logits.squeeze(-1).float(), labels.float())
    return F.cross_entropy(logits.float(), labels)
