import pytest
import torch
from transformers import BertConfig, BertForMaskedLM

from lightning_modules.optim import configure_adamw_with_warmup, resolve_warmup_steps, weight_decay_groups


def test_no_decay_on_bias_and_layernorm():
    model = BertForMaskedLM(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=32))
    decay, no_decay = weight_decay_groups(model, 0.01)
    names = {id(p): n for n, p in model.named_parameters()}
    decay_names = [names[id(p)] for p in decay["params"]]
    no_decay_names = [names[id(p)] for p in no_decay["params"]]
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert all(not n.endswith("bias") and "LayerNorm" not in n for n in decay_names)
    assert all(n.endswith("bias") or "LayerNorm" in n for n in no_decay_names)
    assert "bert.encoder.layer.0.attention.self.query.weight" in decay_names
    assert "bert.embeddings.LayerNorm.weight" in no_decay_names
    # Every trainable parameter is in exactly one group (tied decoder weight counted once).
    assert len(decay_names) + len(no_decay_names) == len({id(p) for p in model.parameters()})


def test_warmup_then_linear_decay_per_step():
    model = torch.nn.Linear(2, 2)
    cfg = configure_adamw_with_warmup(model, model, lr=1.0, warmup_steps=4, total_steps=10)
    opt, sched = cfg["optimizer"], cfg["lr_scheduler"]["scheduler"]
    assert cfg["lr_scheduler"]["interval"] == "step"
    assert opt.defaults["betas"] == (0.9, 0.98) and opt.defaults["eps"] == 1e-6
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:5] == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
    assert lrs[5:] == pytest.approx([5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6])


def test_warmup_resolution():
    assert resolve_warmup_steps(1000, warmup_ratio=0.05) == 50
    assert resolve_warmup_steps(1000, warmup_steps=7, warmup_ratio=0.5) == 7
    with pytest.raises(ValueError, match="warmup_ratio"):
        resolve_warmup_steps(10, warmup_ratio=2.0)
