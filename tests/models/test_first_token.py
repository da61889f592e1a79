"""The last layer at the first token only (models/first_token.py) gives the logits and gradients of the full model."""
import pytest
import torch
from transformers import (BertConfig, BertForSequenceClassification, DistilBertConfig,
                          DistilBertForSequenceClassification, RobertaConfig, RobertaForSequenceClassification)

from models.first_token import FirstTokenLayer, first_token_supported, last_layer_at_first_token

SIZE = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def tiny(family: str, attn: str):
    if family == "bert":
        model = BertForSequenceClassification(BertConfig(vocab_size=60, num_labels=3, **SIZE))
    elif family == "roberta":
        model = RobertaForSequenceClassification(RobertaConfig(vocab_size=60, num_labels=3, pad_token_id=1,
                                                               max_position_embeddings=40, **SIZE))
    else:
        model = DistilBertForSequenceClassification(DistilBertConfig(
            vocab_size=60, num_labels=3, dim=32, n_layers=2, n_heads=4, hidden_dim=64, dropout=0.0,
            attention_dropout=0.0, seq_classif_dropout=0.0))
    model.config._attn_implementation = attn
    return model.train()


def batch():
    ids = torch.randint(5, 60, (4, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0  # padded rows: the first token must not attend to the padding
    mask[3, 2:] = 0
    return {"input_ids": ids.masked_fill(mask == 0, 1), "attention_mask": mask}


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert"])
def test_same_logits_and_gradients(family, attn):
    torch.manual_seed(0)
    model = tiny(family, attn)
    inputs, labels = batch(), torch.tensor([0, 2, 1, 2])
    full = model(**inputs, labels=labels)
    full.loss.backward()
    full_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    assert first_token_supported(model)
    with last_layer_at_first_token(model) as trimmed:
        fast = model(**inputs, labels=labels)
        assert trimmed and isinstance(model.base_model.get_submodule(
            "transformer.layer" if family == "distilbert" else "encoder.layer")[-1], FirstTokenLayer)
    fast.loss.backward()
    torch.testing.assert_close(fast.logits, full.logits, rtol=1e-5, atol=1e-6)
    for name, param in model.named_parameters():
        if name in full_grads:
            torch.testing.assert_close(param.grad, full_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    # restored: the model is the plain Hugging Face model again (same modules, same state-dict keys)
    assert not any(isinstance(m, FirstTokenLayer) for m in model.modules())
    assert set(model.state_dict()) == set(tiny(family, attn).state_dict())


def test_restored_after_an_error_and_unknown_layouts_run_unchanged():
    model = tiny("bert", "sdpa")
    with pytest.raises(RuntimeError):
        with last_layer_at_first_token(model):
            raise RuntimeError("boom")
    assert not any(isinstance(m, FirstTokenLayer) for m in model.modules())
    model.config.model_type = "modernbert"  # a family whose head may pool every position: left alone
    assert not first_token_supported(model)
    linear = torch.nn.Sequential(torch.nn.Linear(2, 2))
    assert not first_token_supported(linear)
    with last_layer_at_first_token(linear) as trimmed:
        assert trimmed is False
