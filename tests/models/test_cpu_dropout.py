"""models/cpu_dropout.py: the faster CPU dropout mask is Bernoulli(1 - p), seeded by torch's generator, applied the way
torch's dropout applies its own; the attention it serves is SDPA's; a model switched to it is the same model."""
import copy

import pytest
import torch
from torch import nn
from transformers import AutoModelForSequenceClassification
from transformers.integrations.sdpa_attention import sdpa_attention_forward

import models.cpu_dropout as cpu_dropout
from models.cpu_dropout import ATTENTION, CPUDropout, keep_mask, sdpa_cpu_dropout_attention, use_cpu_dropout
from tests.models.test_last_layer import batch, tiny


def test_keep_mask_is_bernoulli_and_follows_the_seed():
    torch.manual_seed(0)
    mask = keep_mask((1000, 2000), 0.1)
    assert mask.shape == (1000, 2000) and mask.dtype == torch.bool
    assert abs(mask.float().mean().item() - 0.9) < 0.002  # 2M draws: the standard error is 0.0002
    rows = mask.float().mean(dim=1)  # no structure along the 4-per-word packing or across rows
    assert abs(mask[:, 0::4].float().mean().item() - 0.9) < 0.003 and abs(mask[:, 3::4].float().mean().item()
                                                                          - 0.9) < 0.003
    assert rows.std().item() < 0.02
    torch.manual_seed(0)
    assert torch.equal(keep_mask((1000, 2000), 0.1), mask)  # the global generator decides
    assert not torch.equal(keep_mask((1000, 2000), 0.1), mask)
    assert keep_mask((7, 3), 0.0).all() and keep_mask((5,), 0.5).shape == (5,)
    assert abs(keep_mask((10 ** 6,), 0.5).float().mean().item() - 0.5) < 0.003


def test_cpu_dropout_scales_what_it_keeps_and_passes_gradients_through_the_mask():
    layer = CPUDropout(0.25).train()
    x = torch.randn(64, 300, requires_grad=True)
    torch.manual_seed(3)
    y = layer(x)
    torch.manual_seed(3)
    kept = keep_mask(x.shape, 0.25)
    torch.testing.assert_close(y, torch.where(kept, x / 0.75, 0.0))
    y.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() / 0.75)
    assert torch.equal(layer.eval()(x), x)  # eval: identity, as nn.Dropout
    assert torch.equal(CPUDropout(0.0).train()(x), x)


def attention_inputs(masked: bool, additive: bool):
    torch.manual_seed(1)
    query, key, value = (torch.randn(2, 4, 9, 8) for _ in range(3))  # [B, heads, L, head_dim]
    if not masked:
        return query, key, value, None
    keys = torch.ones(2, 1, 1, 9, dtype=torch.bool)
    keys[1, ..., 6:] = False  # row 1 has 3 padded keys
    mask = keys.expand(2, 1, 9, 9)
    if additive:
        mask = torch.zeros(mask.shape).masked_fill(~mask, torch.finfo(torch.float32).min)
    return query, key, value, mask


@pytest.mark.parametrize("masked,additive", [(False, False), (True, False), (True, True)])
def test_attention_is_sdpa_with_the_drawn_mask(monkeypatch, masked, additive):
    module = nn.Module()
    module.is_causal = False
    query, key, value, mask = attention_inputs(masked, additive)
    plain, _ = sdpa_attention_forward(module, query, key, value, mask, dropout=0.0, scaling=0.3)
    # every element kept: SDPA's output scaled by 1 / (1 - p) (the dropout scaling applies to all probabilities)
    monkeypatch.setattr(cpu_dropout, "keep_mask", lambda shape, p: torch.ones(shape, dtype=torch.bool))
    out, weights = sdpa_cpu_dropout_attention(module, query, key, value, mask, dropout=0.2, scaling=0.3)
    assert weights is None and out.shape == plain.shape == (2, 9, 4, 8)
    torch.testing.assert_close(out, plain / 0.8, rtol=1e-5, atol=1e-6)
    # with the real mask: softmax, then dropped probabilities are zero and kept ones scaled, then @ value
    monkeypatch.undo()
    torch.manual_seed(5)
    out, _ = sdpa_cpu_dropout_attention(module, query, key, value, mask, dropout=0.2, scaling=0.3)
    torch.manual_seed(5)
    scores = query @ key.transpose(-1, -2) * 0.3
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    probs = torch.softmax(scores, -1)
    probs = torch.where(keep_mask(probs.shape, 0.2), probs / 0.8, 0.0)
    torch.testing.assert_close(out, (probs @ value).transpose(1, 2), rtol=1e-5, atol=1e-6)
    # no dropout: SDPA itself
    torch.testing.assert_close(sdpa_cpu_dropout_attention(module, query, key, value, mask, scaling=0.3)[0], plain)


@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert"])
def test_a_switched_model_is_the_same_model(tmp_path, family):
    torch.manual_seed(0)
    model = tiny(family, "sdpa")
    for module in model.modules():  # tiny() has no dropout: give it some (the attention reads its `dropout.p`)
        if isinstance(module, nn.Dropout):
            module.p = 0.1
    reference = copy.deepcopy(model)
    assert use_cpu_dropout(model) > 0 and model.config._attn_implementation == ATTENTION
    assert not any(type(m) is nn.Dropout for m in model.modules())
    inputs = batch()
    model.eval(), reference.eval()
    with torch.no_grad():  # eval: no dropout, SDPA: exactly the model it was
        torch.testing.assert_close(model(**inputs).logits, reference(**inputs).logits)
    model.train()
    torch.manual_seed(7)
    first = model(**inputs).logits
    torch.manual_seed(7)
    again = model(**inputs).logits
    assert torch.equal(first, again) and not torch.allclose(first, model.eval()(**inputs).logits)
    first.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.save_pretrained(tmp_path)  # an export: the same weights, loading as SDPA without litbert
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    assert loaded.config._attn_implementation == "sdpa"
    assert "attn_implementation" not in (tmp_path / "config.json").read_text()
    assert loaded.state_dict().keys() == reference.state_dict().keys()


def test_an_eager_model_keeps_its_attention():
    model = tiny("bert", "eager")
    use_cpu_dropout(model)
    assert model.config._attn_implementation == "eager"
    assert all(type(m) is CPUDropout for m in model.modules() if isinstance(m, nn.Dropout))


@pytest.mark.parametrize("cpp_wrapper", [False, True])  # True: how callbacks.compile.TorchCompile compiles on a CPU
def test_compiled_dropout_draws_each_mask_once_and_its_backward_uses_it(cpp_wrapper):
    """Under inductor two dropouts of one tensor draw two masks (not one merged draw), the backward multiplies by the
    forward's masks (not a fresh draw), and the draws follow the seed: the same outputs as the eager model."""
    first, second = CPUDropout(0.5).train(), CPUDropout(0.5).train()

    def f(x, w):
        return first(x) * w, second(x) * w

    compiled = torch.compile(f, backend="inductor", dynamic=True, options={"cpp_wrapper": cpp_wrapper})
    x, w = torch.randn(16, 40, requires_grad=True), torch.randn(16, 40)
    torch.manual_seed(5)
    a, b = compiled(x, w)
    assert not torch.equal(a != 0, b != 0)
    (a.sum() + b.sum()).backward()
    torch.testing.assert_close(x.grad, ((a != 0).float() + (b != 0).float()) * w / 0.5)
    torch.manual_seed(5)
    eager = f(x.detach(), w)
    assert {tuple((t != 0).flatten().tolist()) for t in (a, b)} == {tuple((t != 0).flatten().tolist()) for t in eager}
    torch._dynamo.reset()
