"""`lightning_modules.distributed`: token-mean losses normalised by the global token count (ranks simulated)."""
from types import SimpleNamespace

import torch

from lightning_modules.distributed import global_token_mean, global_token_means, true_on_any_rank


class SummingStrategy:
    """`strategy.reduce(x, "sum")` as if the other ranks had contributed `others`."""

    def __init__(self, others):
        self.others = torch.as_tensor(others, dtype=torch.float32)

    def reduce(self, tensor, reduce_op):
        assert reduce_op == "sum"
        return tensor + self.others.reshape(tensor.shape)


def module_on(world_size, others=0.0):
    trainer = SimpleNamespace(world_size=world_size, strategy=SummingStrategy(others))
    return SimpleNamespace(_trainer=trainer, trainer=trainer, device=torch.device("cpu"))


def test_one_process_returns_the_losses_untouched():
    loss = torch.tensor(1.2345678, requires_grad=True) * 1.0
    assert global_token_mean(module_on(1), loss, 7) is loss
    assert global_token_mean(SimpleNamespace(_trainer=None), loss, 7) is loss  # no trainer: one process
    assert true_on_any_rank(module_on(1), False) is False


def test_two_ranks_average_to_the_gradient_and_value_of_the_global_token_mean():
    torch.manual_seed(0)
    tokens = [torch.randn(5, 3), torch.randn(11, 3)]  # rank 0 has 5 tokens, rank 1 has 11
    weight = torch.randn(3, requires_grad=True)
    grads, values = [], []
    for rank in (0, 1):
        local_mean = (tokens[rank] @ weight).pow(2).mean()
        scaled = global_token_mean(module_on(2, others=len(tokens[1 - rank])), local_mean, len(tokens[rank]))
        (grad,) = torch.autograd.grad(scaled, weight)
        grads.append(grad)
        values.append(scaled.detach())
    everything = torch.cat(tokens)
    global_mean = (everything @ weight).pow(2).mean()
    (expected_grad,) = torch.autograd.grad(global_mean, weight)
    torch.testing.assert_close((grads[0] + grads[1]) / 2, expected_grad)  # what DDP's gradient averaging gives
    torch.testing.assert_close((values[0] + values[1]) / 2, global_mean.detach())  # what a synced log shows
    # the plain local means average to something else (unequal token counts)
    plain = sum((t @ weight).pow(2).mean() for t in tokens) / 2
    assert not torch.allclose(plain, global_mean)


def test_several_terms_one_reduce_and_empty_terms_stay_zero():
    calls = []
    module = module_on(2, others=[3.0, 0.0])
    reduce = module.trainer.strategy.reduce
    module.trainer.strategy.reduce = lambda t, reduce_op: calls.append(t) or reduce(t, reduce_op)
    a, b = torch.tensor(2.0), torch.tensor(0.0)
    out = global_token_means(module, [a, b], [torch.tensor(1), 0])
    assert len(calls) == 1  # one all-reduce for all the counts
    torch.testing.assert_close(out[0], a * 2 * 1 / 4)
    assert float(out[1]) == 0.0 and not torch.isnan(out[1])
    assert true_on_any_rank(module_on(2, others=1.0), False) is True
    assert true_on_any_rank(module_on(2, others=0.0), False) is False
