"""Distillation loss terms: zero when the student is the teacher, T^2 keeps the gradient scale, padding excluded."""
import pytest
import torch

from lightning_modules.distill_losses import (
    cosine_hidden_loss,
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
