"""The layer-wise objectives (lightning_modules/layerwise_losses.py) against hand-written formulas on small tensors:
loops over examples, heads and positions, padding skipped by hand; zero when the student is the teacher."""
import math

import pytest
import torch

from lightning_modules.layerwise_losses import (attention_kl, attention_mse, hidden_mse, qkv_relation_kl,
                                                relation_kl, scaled_dot_scores)

MASK = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])  # the second example has 2 padded positions


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def tokens(mask):
    return [(b, i) for b in range(mask.shape[0]) for i in range(mask.shape[1]) if mask[b, i]]


def manual_scores(a, b, heads):
    """S[b, h, i, j] = sum_d a[b, i, h*d + d'] b[b, j, h*d + d'] / sqrt(d), by loops."""
    batch, length, width = a.shape
    d = width // heads
    out = torch.zeros(batch, heads, length, length)
    for n in range(batch):
        for h in range(heads):
            for i in range(length):
                for j in range(length):
                    out[n, h, i, j] = (a[n, i, h * d:(h + 1) * d] * b[n, j, h * d:(h + 1) * d]).sum() / math.sqrt(d)
    return out


def manual_kl(student_scores, teacher_scores, mask):
    """Mean over heads and non-padded queries of sum over non-padded keys of p log(p / q), softmax over those keys."""
    values = []
    for n in range(mask.shape[0]):
        keys = mask[n].bool()
        for h in range(student_scores.shape[1]):
            for i in range(mask.shape[1]):
                if not mask[n, i]:
                    continue
                p = torch.softmax(teacher_scores[n, h, i][keys], -1)
                q = torch.softmax(student_scores[n, h, i][keys], -1)
                values.append((p * (p.log() - q.log())).sum())
    return torch.stack(values).mean()


def test_scaled_dot_scores_are_q_k_per_head():
    q, k = rand(2, 4, 8, seed=1), rand(2, 4, 8, seed=2)
    torch.testing.assert_close(scaled_dot_scores(q, k, 2), manual_scores(q, k, 2))


def test_hidden_mse_is_the_token_mean_of_squared_differences_through_the_projection():
    s = [rand(2, 4, 6, seed=1), rand(2, 4, 6, seed=2)]
    t = [rand(2, 4, 10, seed=3), rand(2, 4, 10, seed=4)]
    proj = torch.nn.Linear(6, 10)
    per_pair = []
    for s_i, t_i in zip(s, t):
        sq = [((s_i[b, i] @ proj.weight.T + proj.bias - t_i[b, i]) ** 2).mean() for b, i in tokens(MASK)]
        per_pair.append(torch.stack(sq).mean())
    torch.testing.assert_close(hidden_mse(s, t, MASK, proj), torch.stack(per_pair).mean())
    same = rand(2, 4, 6, seed=5)
    assert hidden_mse([same], [same.clone()], MASK).item() == 0.0
    with pytest.raises(ValueError, match="without a projection"):
        hidden_mse(s, t, MASK)


def test_attention_mse_skips_padded_queries_and_keys():
    s, t = [rand(2, 2, 4, 4, seed=1)], [rand(2, 2, 4, 4, seed=2)]
    s[0][1, :, 3, :] = 1e6  # a padded query row and a padded key column: never counted
    s[0][1, :, :, 2] = -1e6
    squares = [(s[0][b, h, i, j] - t[0][b, h, i, j]) ** 2 for b in range(2) for h in range(2) for i in range(4)
               for j in range(4) if MASK[b, i] and MASK[b, j]]
    torch.testing.assert_close(attention_mse(s, t, MASK), torch.stack(squares).mean())
    assert attention_mse(t, [x.clone() for x in t], MASK).item() == 0.0
    with pytest.raises(ValueError, match="head counts"):
        attention_mse([rand(2, 3, 4, 4)], t, MASK)


def test_attention_kl_is_the_kl_of_the_softmaxes_over_tokens():
    s, t = rand(2, 2, 4, 4, seed=1), rand(2, 2, 4, 4, seed=2)
    torch.testing.assert_close(attention_kl(s, t, MASK), manual_kl(s, t, MASK))
    assert attention_kl(t, t.clone(), MASK).item() == pytest.approx(0.0, abs=1e-7)


def test_relations_with_other_widths_and_head_counts():
    # value relation (MiniLM): per attention head, widths differ (head size 3 vs 5), head counts equal
    v_s, v_t = rand(2, 4, 6, seed=1), rand(2, 4, 10, seed=2)
    expected = manual_kl(manual_scores(v_s, v_s, 2), manual_scores(v_t, v_t, 2), MASK)
    torch.testing.assert_close(relation_kl(v_s, v_t, MASK, 2, 2), expected)
    # MiniLMv2: q-q, k-k, v-v relations split into 4 relation heads, whatever the models' attention heads
    s = [rand(2, 4, 8, seed=i) for i in range(3)]
    t = [rand(2, 4, 12, seed=10 + i) for i in range(3)]
    per = [manual_kl(manual_scores(a, a, 4), manual_scores(b, b, 4), MASK) for a, b in zip(s, t)]
    torch.testing.assert_close(qkv_relation_kl(s, t, MASK, 4), torch.stack(per).mean())
    assert qkv_relation_kl(t, [x.clone() for x in t], MASK, 4).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="does not split"):
        qkv_relation_kl(s, t, MASK, 5)


def test_gradients_reach_the_student_and_the_projection_only():
    s = rand(2, 4, 6, seed=1).requires_grad_()
    t = rand(2, 4, 10, seed=2)  # the teacher's: no gradient
    proj = torch.nn.Linear(6, 10)
    (hidden_mse([s], [t], MASK, proj) + qkv_relation_kl([s], [t], MASK, 2)).backward()
    assert s.grad is not None and s.grad[1, 2:].abs().sum() == 0  # padded positions get nothing
    assert s.grad[0].abs().sum() > 0 and proj.weight.grad.abs().sum() > 0 and t.grad is None
