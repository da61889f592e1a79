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


def test_fused_adamw_is_the_foreach_update():
    """The fast path (torch's fused AdamW, chosen for plain CPU/GPU parameters) makes the update the default foreach
    implementation makes, step after step, with both weight-decay groups and the warmup schedule."""
    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    models = [BertForMaskedLM(config) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    fused = configure_adamw_with_warmup(models[0], models[0], lr=1e-2, warmup_steps=2, total_steps=6)
    assert fused["optimizer"].defaults["fused"] is True
    plain = configure_adamw_with_warmup(models[1], models[1], lr=1e-2, warmup_steps=2, total_steps=6)
    plain["optimizer"] = torch.optim.AdamW(plain["optimizer"].param_groups, foreach=True)
    plain["lr_scheduler"]["scheduler"].optimizer = plain["optimizer"]
    ids = torch.randint(5, 50, (4, 8))
    for _ in range(5):
        for model, cfg in zip(models, (fused, plain)):
            model(input_ids=ids, labels=ids).loss.backward()
            cfg["optimizer"].step()
            cfg["optimizer"].zero_grad()
            cfg["lr_scheduler"]["scheduler"].step()
    for (name, a), b in zip(models[0].named_parameters(), models[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    assert not torch.equal(models[0].bert.embeddings.word_embeddings.weight,
                           BertForMaskedLM(config).bert.embeddings.word_embeddings.weight)


def test_fused_adamw_only_for_plain_tensors():
    from lightning_modules.optim import adamw_implementation

    assert adamw_implementation([{"params": [torch.nn.Parameter(torch.zeros(2))]}]) == {"fused": True}
    assert adamw_implementation([{"params": [torch.nn.Parameter(torch.zeros(2, dtype=torch.int64),
                                                                requires_grad=False)]}]) == {}
    assert adamw_implementation([{"params": []}]) == {}


def test_fused_adamw_takes_gradient_clipping_under_bf16_mixed(tmp_path):
    """bf16-mixed (the default where the hardware has bf16) with the fused AdamW and gradient clipping: Lightning
    refuses clipping for an optimizer that unscales fp16 gradients in its step, which bf16 has none of; the step sees
    gradients clipped to the configured norm."""
    import lightning.pytorch as pl

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = BertForMaskedLM(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                                    num_attention_heads=2, intermediate_size=32))
            self.norms = []

        def training_step(self, batch, batch_idx):
            return self.model(input_ids=batch[0], labels=batch[0]).loss * 1e3  # gradients far above the clip

        def configure_optimizers(self):
            config = configure_adamw_with_warmup(self, self.model, lr=1e-3, warmup_steps=1, total_steps=3)
            grads = lambda: [p.grad for p in self.model.parameters() if p.grad is not None]  # noqa: E731
            config["optimizer"].register_step_pre_hook(
                lambda opt, args, kwargs: self.norms.append(float(torch.nn.utils.get_total_norm(grads()))))
            return config

    module = Tiny()
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randint(5, 50, (6, 8))), batch_size=2)
    trainer = pl.Trainer(accelerator="cpu", precision="bf16-mixed", gradient_clip_val=0.5, max_steps=3,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, data)
    assert trainer.optimizers[0].defaults["fused"] is True
    assert len(module.norms) == 3 and all(n <= 0.5 + 1e-4 for n in module.norms), module.norms
