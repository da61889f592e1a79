"""The loss terms of DistilBERT-style distillation (Sanh et al. 2019; Hinton et al. 2015), as plain tensor functions.

All terms are computed in fp32 (logits may arrive in bf16 under mixed precision) and return a scalar that still
depends on the student when nothing is selected (a zero with a gradient path), so every term can always be logged.

`fused_kl_and_mlm` is the general distillation's KL and MLM terms computed from the LM heads' inputs, chunk by chunk
of positions (`MaskedLMDistillationModule(fused_lm_loss=True)`): the same values and gradients as `soft_cross_entropy`
and `masked_lm_loss` on the full logits, without ever holding [n, V] logits.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

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


# Bytes of one [rows, V] fp32 chunk of `fused_kl_and_mlm`: bounds the memory of its four [rows, V] buffers. Measured
# on 2 shared CPU cores (n = 4096, V = 16k): chunks small enough to stay in the cache (4 MB, 64 rows) were 3x slower
# than one chunk (each product re-reads the [V, H] projection, and every op is a parallel region that waits for both
# cores); 2048 rows (128 MB) were a little faster than 1024 or 4096.
FUSED_CHUNK_BYTES = 128 << 20


def fused_chunk_rows(vocab_size: int) -> int:
    """Rows per chunk of `fused_kl_and_mlm`: FUSED_CHUNK_BYTES of fp32 logits, at least 1."""
    return max(1, FUSED_CHUNK_BYTES // (4 * int(vocab_size)))


def fused_kl_and_mlm(student_x: torch.Tensor, student_proj: nn.Linear, teacher_x: torch.Tensor,
                     teacher_proj: nn.Linear, labels: torch.Tensor, temperature: float,
                     chunk_rows: int | None = None, workspace: dict | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(soft_cross_entropy(s, t, T), masked_lm_loss(s, labels)) for s = student_proj(student_x), t = teacher_proj(
    teacher_x), computed `chunk_rows` rows at a time.

    Args:
        student_x: [n, H] the student's LM-head features at the selected positions (the input of its projection).
        student_proj: the student's vocabulary projection (nn.Linear H -> V; its weight may be tied to the embeddings).
        teacher_x: [n, H] the teacher's LM-head features at the same positions (no gradient).
        teacher_proj: the teacher's vocabulary projection.
        labels: [n] MLM targets, IGNORE_INDEX where a position is not masked.
        temperature: the KL's softmax temperature T (the KL is scaled by T^2).
        chunk_rows: positions per chunk; None: `fused_chunk_rows`.
        workspace: a dict kept by the caller between calls, where the [rows, V] buffers are kept and reused (on the
            CPU a fresh 100 MB tensor costs its page faults at every step); None: fresh buffers.

    Why: the plain terms run about 25 operations over [n, V] tensors (n = 4096, V = 16k: 260 MB each in fp32), each
    into a fresh allocation (page faults on the CPU): logits, their copies at T, two log-softmaxes, the KL's
    elementwise terms, the cross-entropy's log-softmax over all n rows, and as many in the backward. Here: 1/T is
    folded into the projections, the teacher's softmax is taken once, the cross-entropy runs at the masked rows only,
    every [rows, V] result goes into one of four buffers (kept in `workspace` between calls), and the gradient with
    respect to the student's logits (q - p, and softmax - onehot at the masked rows) is taken in the forward and
    turned at once into the gradients of `student_x` and the projection, per term, so no [n, V] tensor is kept for
    the backward. The price: each term's weight is only known in the backward, so the MLM term's gradient products
    at the masked rows are its own (+15% of the two gradient products when the KL covers every position). Under
    autocast the projections run in the autocast dtype, as nn.Linear would, and the losses in fp32.
    """
    if student_x.shape[0] == 0:  # nothing selected: the plain terms' zeros with a gradient path
        logits = student_proj(student_x)
        return soft_cross_entropy(logits, logits.detach(), temperature), masked_lm_loss(logits, labels)
    device_type = student_x.device.type
    mm_dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else student_x.dtype
    with_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (student_x, student_proj.weight, student_proj.bias))
    return _FusedKLAndMLM.apply(student_x, student_proj.weight, student_proj.bias, teacher_x.detach(),
                                teacher_proj.weight.detach(), _detach(teacher_proj.bias), labels, float(temperature),
                                int(chunk_rows or fused_chunk_rows(student_proj.weight.shape[0])), mm_dtype, with_grad,
                                workspace)


def _detach(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach()


def _scaled_logits(out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                   scale: float) -> torch.Tensor:
    """out[:rows] = (x @ W^T + b) * scale as fp32 [rows, V], the product in x's dtype (as nn.Linear under autocast)."""
    out = out[: x.shape[0]]
    if x.dtype == out.dtype:
        return torch.addmm(bias, x, weight.t(), beta=scale, alpha=scale, out=out)
    return out.copy_(torch.addmm(bias, x, weight.t(), beta=scale, alpha=scale))


class _FusedKLAndMLM(torch.autograd.Function):
    """`fused_kl_and_mlm`'s work. Forward: per chunk of rows, the student's and teacher's logits, the KL and MLM
    sums and (when a gradient is wanted) d(term)/d(student logits), turned into the gradients of the student's
    features, weight and bias, kept per term. Backward: those, scaled by each term's incoming gradient."""

    @staticmethod
    def forward(ctx, x_s, w_s, b_s, x_t, w_t, b_t, labels, temperature, rows, mm_dtype, with_grad, workspace):
        n, hidden = x_s.shape
        vocab, t = w_s.shape[0], temperature
        mlm_rows = (labels != IGNORE_INDEX).nonzero().squeeze(1)  # [m] positions with a target, ascending
        n_mlm = int(mlm_rows.numel())
        starts = list(range(0, n, rows))
        # mlm_rows[bounds[i]:bounds[i + 1]] are the masked rows of chunk i
        bounds = torch.searchsorted(mlm_rows.cpu(), torch.tensor(starts + [n])).tolist()
        # the projections in the product's dtype (a missing bias as zeros)
        w_s_mm, w_t_mm = w_s.to(mm_dtype), w_t.to(mm_dtype)
        b_s_mm, b_t_mm = (w_s_mm.new_zeros(vocab) if b is None else b.to(mm_dtype) for b in (b_s, b_t))
        f32 = dict(device=x_s.device, dtype=torch.float32)
        # [c, V] buffers, c = min(rows, n): student logits / T, then q - p; teacher logits / T, then p; log q;
        # log p, then log p - log q
        buf_s, buf_t, buf_lq, buf_lp = _buffers(workspace, 4, (min(rows, n), vocab), **f32)
        kl_sum, mlm_sum = torch.zeros((), **f32), torch.zeros((), **f32)
        if with_grad:  # per term: d/d(x_s) [n, H], d/d(W_s) [V, H], d/d(b_s) [V]
            gx_kl, gx_mlm = torch.empty(n, hidden, **f32), torch.zeros(n, hidden, **f32)
            gw_kl, gw_mlm = torch.zeros(vocab, hidden, **f32), torch.zeros(vocab, hidden, **f32)
            gb_kl, gb_mlm = torch.zeros(vocab, **f32), torch.zeros(vocab, **f32)
        with torch.autocast(x_s.device.type, enabled=False):
            for i, start in enumerate(starts):
                xs = x_s[start:start + rows].to(mm_dtype)  # [c, H]
                c = xs.shape[0]
                s = _scaled_logits(buf_s, xs, w_s_mm, b_s_mm, 1.0 / t)  # student logits / T
                log_q = torch.log_softmax(s, dim=-1, out=buf_lq[:c])
                teacher = _scaled_logits(buf_t, x_t[start:start + rows].to(mm_dtype), w_t_mm, b_t_mm, 1.0 / t)
                log_p = torch.log_softmax(teacher, dim=-1, out=buf_lp[:c])
                p = torch.exp(log_p, out=buf_t[:c])  # the teacher's softmax at T, its only one
                # sum of p (log p - log q), the difference first: two dots would cancel (each about n * entropy)
                kl_sum += torch.dot(p.view(-1), log_p.sub_(log_q).view(-1))
                lo, hi = bounds[i], bounds[i + 1]
                if hi > lo:  # the MLM cross-entropy at this chunk's masked rows, at T = 1
                    local, targets = mlm_rows[lo:hi] - start, labels[mlm_rows[lo:hi]]
                    log_probs = torch.log_softmax(s[local].mul_(t), dim=-1)  # [m_c, V]
                    mlm_sum -= log_probs.gather(1, targets.unsqueeze(1)).sum()
                    if with_grad:  # d(sum CE)/ds = softmax(s) - onehot(target), scaled by 1 / m below
                        g = log_probs.exp_()
                        g[torch.arange(hi - lo, device=g.device), targets] -= 1.0
                        gx_mlm[mlm_rows[lo:hi]] = torch.mm(g.to(mm_dtype), w_s_mm).float()
                        _accumulate(gw_mlm, g, xs[local])
                        gb_mlm += g.sum(0)
                if with_grad:  # d(sum KL)/ds = (q - p) / T: the 1/T, T^2 and 1/n are applied below
                    g = torch.exp(log_q, out=buf_s[:c]).sub_(p)
                    gx_kl[start:start + c] = torch.mm(g.to(mm_dtype), w_s_mm)
                    _accumulate(gw_kl, g, xs)
                    gb_kl += g.sum(0)
        if with_grad:
            for grad in (gx_kl, gw_kl, gb_kl):
                grad.mul_(t / n)  # d(T^2 * mean KL)/ds = T (q - p) / n
            for grad in (gx_mlm, gw_mlm, gb_mlm):
                grad.div_(max(n_mlm, 1))
            ctx.save_for_backward(gx_kl, gx_mlm, gw_kl, gw_mlm, gb_kl, gb_mlm)
        ctx.dtypes = (x_s.dtype, w_s.dtype, None if b_s is None else b_s.dtype)
        kl = kl_sum * (t * t / n)
        mlm = mlm_sum / n_mlm if n_mlm else mlm_sum  # 0 when nothing is masked
        return kl, mlm

    @staticmethod
    def backward(ctx, grad_kl, grad_mlm):
        gx_kl, gx_mlm, gw_kl, gw_mlm, gb_kl, gb_mlm = ctx.saved_tensors
        x_dtype, w_dtype, b_dtype = ctx.dtypes
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = (gx_kl * grad_kl).add_(gx_mlm * grad_mlm).to(x_dtype)
        if ctx.needs_input_grad[1]:
            gw = (gw_kl * grad_kl).add_(gw_mlm * grad_mlm).to(w_dtype)
        if ctx.needs_input_grad[2]:
            gb = (gb_kl * grad_kl).add_(gb_mlm * grad_mlm).to(b_dtype)
        return gx, gw, gb, None, None, None, None, None, None, None, None, None


def _buffers(workspace: dict | None, count: int, shape: tuple[int, int], **kwargs) -> list[torch.Tensor]:
    """`count` contiguous [rows, V] tensors: the first rows of the workspace's (made anew when too small or of another
    kind), or new ones without a workspace."""
    if workspace is None:
        return [torch.empty(shape, **kwargs) for _ in range(count)]
    kept = workspace.get("buffers")  # [count, rows_max, V]
    if (kept is None or kept.shape[0] != count or kept.shape[1] < shape[0] or kept.shape[2] != shape[1]
            or kept.device != torch.device(kwargs["device"]) or kept.dtype != kwargs["dtype"]):
        workspace["buffers"] = kept = None  # free the old ones first: never both in memory
        workspace["buffers"] = kept = torch.empty((count, *shape), **kwargs)
    return [kept[i, : shape[0]] for i in range(count)]


def _accumulate(grad_w: torch.Tensor, g: torch.Tensor, x: torch.Tensor) -> None:
    """grad_w [V, H] (fp32) += g^T [V, c] @ x [c, H], the product in x's dtype."""
    if x.dtype == torch.float32:  # addmm with out=, not addmm_: the same kernel, and FLOP counters see it
        torch.addmm(grad_w, g.t(), x, out=grad_w)
    else:
        grad_w += torch.mm(g.t().to(x.dtype), x).float()


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
