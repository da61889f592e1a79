"""Distillation loss terms: zero when the student is the teacher, T^2 keeps the gradient scale, padding excluded."""
import pytest
import torch

from lightning_modules.distill_losses import (
    cosine_hidden_loss,
    fused_kl_and_mlm,
    masked_lm_loss,
    qa_soft_loss,
    regression_soft_loss,
    soft_cross_entropy,
)


def test_soft_loss_is_zero_for_identical_logits_and_positive_otherwise():
    torch.manual_seed(0)
    logits = torch.randn(10, 7)
    assert soft_cross_entropy(logits, logits.clone(), 2.0).item() == pytest.approx(0.0, abs=1e-6)
    assert soft_cross_entropy(torch.randn(10, 7), logits, 2.0).item() > 0.01


def test_soft_loss_is_kl_per_row_times_t_squared():
    torch.manual_seed(0)
    s, t = torch.randn(4, 5), torch.randn(4, 5)
    T = 3.0
    p_t = torch.softmax(t / T, -1)
    expected = (p_t * (p_t.log() - torch.log_softmax(s / T, -1))).sum(-1).mean() * T * T
    assert soft_cross_entropy(s, t, T).item() == pytest.approx(expected.item(), rel=1e-5)


def grad_norm(temperature: float, scale: bool) -> float:
    torch.manual_seed(0)
    student = (torch.randn(64, 30) * 2).requires_grad_(True)
    teacher = torch.randn(64, 30) * 2
    soft_cross_entropy(student, teacher, temperature, scale_by_t2=scale).backward()
    return student.grad.norm().item()


def test_t_squared_keeps_the_gradient_scale_across_temperatures():
    temperatures = (1.0, 2.0, 4.0, 8.0)
    scaled = [grad_norm(T, True) for T in temperatures]
    unscaled = [grad_norm(T, False) for T in temperatures]
    # With T^2 the gradient norm stays within a small factor from T=1 to T=8 ...
    assert max(scaled) / min(scaled) < 1.5
    # ... without it, it falls like 1/T^2 for large T (ratio 1/4 per doubling).
    assert unscaled[3] / unscaled[2] == pytest.approx(0.25, rel=0.1)
    assert unscaled[2] / unscaled[1] == pytest.approx(0.25, rel=0.2)
    assert unscaled[3] < scaled[3] / 50


def test_cosine_loss_zero_for_same_states_and_ignores_padding():
    torch.manual_seed(0)
    hidden = torch.randn(2, 6, 8)
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1, 4:] = 0
    assert cosine_hidden_loss([hidden], [hidden.clone()], mask).item() == pytest.approx(0.0, abs=1e-6)
    other = hidden.clone()
    other[1, 4:] = -hidden[1, 4:]  # opposite direction at padded positions only
    assert cosine_hidden_loss([hidden], [other], mask).item() == pytest.approx(0.0, abs=1e-6)
    other[0, 0] = -hidden[0, 0]  # one real token opposite: 1 - cos = 2 on 1 of the 10 real tokens
    assert cosine_hidden_loss([hidden], [other], mask).item() == pytest.approx(0.2, abs=1e-5)


def test_cosine_loss_width_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="alpha_cos"):
        cosine_hidden_loss([torch.randn(1, 2, 4)], [torch.randn(1, 2, 8)], torch.ones(1, 2))


def test_mlm_loss_skips_unmasked_rows_and_survives_no_mask():
    logits = torch.randn(3, 9, requires_grad=True)
    labels = torch.tensor([-100, 4, -100])
    expected = torch.nn.functional.cross_entropy(logits[1:2], labels[1:2])
    assert masked_lm_loss(logits, labels).item() == pytest.approx(expected.item())
    none = masked_lm_loss(logits, torch.full((3,), -100))
    none.backward()
    assert none.item() == 0.0 and logits.grad is not None


def test_qa_soft_loss_ignores_padded_positions():
    torch.manual_seed(0)
    start, end = torch.randn(2, 7), torch.randn(2, 7)
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[0, 5:] = 0
    noisy_start = start.clone()
    noisy_start[0, 5:] += 100.0  # only padded positions differ
    assert qa_soft_loss(noisy_start, end, start, end, mask, 2.0).item() == pytest.approx(0.0, abs=1e-5)
    assert torch.isfinite(qa_soft_loss(start, end, torch.randn(2, 7), end, mask, 2.0))


def test_regression_soft_loss_is_mse():
    assert regression_soft_loss(torch.tensor([[1.0], [3.0]]), torch.tensor([[2.0], [3.0]])).item() == pytest.approx(0.5)


def kl_and_mlm(fused, student, teacher, x_s, x_t, labels, weights=(5.0, 2.0), chunk_rows=None, temperature=2.0):
    """(kl, mlm, d/dx_s, d/dW_s, d/db_s) of weights[0] * kl + weights[1] * mlm, fused or by the plain functions."""
    x = x_s.clone().requires_grad_(True)
    student.zero_grad()
    if fused:
        kl, mlm = fused_kl_and_mlm(x, student, x_t, teacher, labels, temperature, chunk_rows)
    else:
        logits = student(x)
        kl, mlm = soft_cross_entropy(logits, teacher(x_t).detach(), temperature), masked_lm_loss(logits, labels)
    loss = sum(w * term for w, term in zip(weights, (kl, mlm)) if w is not None)
    loss.backward()
    bias = student.bias.grad if student.bias is not None else None
    return kl.detach(), mlm.detach(), x.grad, student.weight.grad.clone(), None if bias is None else bias.clone()


@pytest.mark.parametrize("chunk_rows", [None, 1, 4])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("weights", [(5.0, 2.0), (1.0, None), (None, 1.0)])
def test_fused_kl_and_mlm_equals_the_plain_terms_and_gradients(chunk_rows, bias, weights):
    torch.manual_seed(0)
    n, hidden, vocab = 11, 6, 23
    student, teacher = torch.nn.Linear(hidden, vocab, bias=bias), torch.nn.Linear(hidden, vocab, bias=bias)
    teacher.requires_grad_(False)
    x_s, x_t = torch.randn(n, hidden) * 2, torch.randn(n, hidden) * 2
    labels = torch.full((n,), -100)
    labels[[0, 3, 4, 10]] = torch.tensor([1, 5, 22, 7])  # masked rows in several chunks, chunk ends included
    fused = kl_and_mlm(True, student, teacher, x_s, x_t, labels, weights, chunk_rows, temperature=3.0)
    plain = kl_and_mlm(False, student, teacher, x_s, x_t, labels, weights, temperature=3.0)
    for a, b in zip(fused, plain):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert fused[0] > 0 and fused[1] > 0


def test_fused_kl_and_mlm_edge_cases():
    torch.manual_seed(0)
    student, teacher = torch.nn.Linear(4, 9), torch.nn.Linear(4, 9).requires_grad_(False)
    x_s, x_t = torch.randn(5, 4), torch.randn(5, 4)
    none_masked = torch.full((5,), -100)
    fused = kl_and_mlm(True, student, teacher, x_s, x_t, none_masked, chunk_rows=2)
    plain = kl_and_mlm(False, student, teacher, x_s, x_t, none_masked)
    assert fused[1].item() == 0.0
    for a, b in zip(fused, plain):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # no position selected: zeros that still have a gradient path, as the plain terms
    kl, mlm = fused_kl_and_mlm(torch.zeros(0, 4, requires_grad=True), student, torch.zeros(0, 4), teacher,
                               torch.zeros(0, dtype=torch.long), 2.0)
    assert kl.item() == 0.0 and mlm.item() == 0.0 and kl.requires_grad
    # without gradients (validation): the same values, nothing kept for a backward
    labels = torch.tensor([3, -100, 8, -100, -100])
    with torch.no_grad():
        kl, mlm = fused_kl_and_mlm(x_s, student, x_t, teacher, labels, 2.0)
        logits = student(x_s)
        assert not kl.requires_grad
        torch.testing.assert_close(kl, soft_cross_entropy(logits, teacher(x_t), 2.0))
        torch.testing.assert_close(mlm, masked_lm_loss(logits, labels))


def test_fused_kl_is_accurate_for_a_student_close_to_its_teacher():
    """The KL is summed as p * (log p - log q) (differences first): a near-zero KL is not lost to cancellation."""
    torch.manual_seed(0)
    student, teacher = torch.nn.Linear(8, 50), torch.nn.Linear(8, 50).requires_grad_(False)
    with torch.no_grad():
        teacher.weight.copy_(student.weight + 1e-3 * torch.randn_like(student.weight))
        teacher.bias.copy_(student.bias)
    x = torch.randn(64, 8)
    labels = torch.full((64,), -100)
    fused = kl_and_mlm(True, student, teacher, x, x, labels, (1.0, None))
    plain = kl_and_mlm(False, student, teacher, x, x, labels, (1.0, None))
    assert 0 < plain[0] < 1e-4
    torch.testing.assert_close(fused[0], plain[0], rtol=1e-3, atol=0)
    torch.testing.assert_close(fused[2], plain[2], rtol=1e-3, atol=1e-9)


def test_fused_kl_and_mlm_under_bf16_autocast_matches_the_plain_terms():
    """Under autocast the projections run in bf16 as nn.Linear does (the GPU's bf16-mixed), the losses in fp32."""
    torch.manual_seed(0)
    student, teacher = torch.nn.Linear(16, 40), torch.nn.Linear(16, 40).requires_grad_(False)
    x_s, x_t = torch.randn(12, 16), torch.randn(12, 16)
    labels = torch.full((12,), -100)
    labels[[1, 5, 6]] = torch.tensor([3, 9, 39])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = kl_and_mlm(True, student, teacher, x_s, x_t, labels, chunk_rows=5)
        plain = kl_and_mlm(False, student, teacher, x_s, x_t, labels)
    for a, b in zip(fused, plain):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-3)


def test_fused_kl_and_mlm_reuses_its_workspace_buffers():
    torch.manual_seed(0)
    student, teacher = torch.nn.Linear(4, 9), torch.nn.Linear(4, 9).requires_grad_(False)
    labels = torch.tensor([3, -100, 8, -100, -100, 1])
    workspace = {}
    for n in (6, 4, 6):  # a smaller call fits the kept buffers; results as without a workspace
        x_s, x_t = torch.randn(n, 4), torch.randn(n, 4)
        with_ws = fused_kl_and_mlm(x_s, student, x_t, teacher, labels[:n], 2.0, chunk_rows=4, workspace=workspace)
        without = fused_kl_and_mlm(x_s, student, x_t, teacher, labels[:n], 2.0, chunk_rows=4)
        torch.testing.assert_close(with_ws, without)
        assert workspace["buffers"].shape == (4, 4, 9)
    kept = workspace["buffers"]
    fused_kl_and_mlm(torch.randn(6, 4), student, torch.randn(6, 4), teacher, labels, 2.0, chunk_rows=4,
                     workspace=workspace)
    assert workspace["buffers"] is kept  # reused, not reallocated
