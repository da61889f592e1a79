"""The last layer only where the head reads (models/last_layer.py) gives the logits and gradients of the full model."""
import pytest
import torch
from transformers import (BertConfig, BertForSequenceClassification, DistilBertConfig,
                          DistilBertForSequenceClassification, RobertaConfig, RobertaForSequenceClassification)

from models.last_layer import PartialLayer, last_layer_at, selected_positions, trimmable

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
    assert trimmable(model, first_token_head=True)
    with last_layer_at(model) as trimmed:
        fast = model(**inputs, labels=labels)
        assert trimmed and isinstance(model.base_model.get_submodule(
            "transformer.layer" if family == "distilbert" else "encoder.layer")[-1], PartialLayer)
    fast.loss.backward()
    torch.testing.assert_close(fast.logits, full.logits, rtol=1e-5, atol=1e-6)
    for name, param in model.named_parameters():
        if name in full_grads:
            torch.testing.assert_close(param.grad, full_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    # restored: the model is the plain Hugging Face model again (same modules, same state-dict keys)
    assert not any(isinstance(m, PartialLayer) for m in model.modules())
    assert set(model.state_dict()) == set(tiny(family, attn).state_dict())


def test_restored_after_an_error_and_unknown_layouts_run_unchanged():
    model = tiny("bert", "sdpa")
    with pytest.raises(RuntimeError):
        with last_layer_at(model):
            raise RuntimeError("boom")
    assert not any(isinstance(m, PartialLayer) for m in model.modules())
    model.config.model_type = "modernbert"  # a family whose head may pool every position: left alone
    assert not trimmable(model, first_token_head=True) and trimmable(model)
    linear = torch.nn.Sequential(torch.nn.Linear(2, 2))
    assert not trimmable(linear)
    with last_layer_at(linear) as trimmed:
        assert trimmed is False


def test_selected_positions_keep_row_major_order():
    selected = torch.tensor([[0, 1, 0, 1, 1], [0, 0, 0, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)
    positions, valid = selected_positions(selected)
    assert positions.tolist() == [[1, 3, 4], [0, 0, 0], [0, 0, 0]]
    assert valid.tolist() == [[True, True, True], [False, False, False], [True, False, False]]
    x = torch.arange(15).view(3, 5)
    assert torch.equal(x.gather(1, positions)[valid], x[selected])
    none = selected_positions(torch.zeros(2, 4, dtype=torch.bool))
    assert none[0].shape == (2, 0) and none[1].shape == (2, 0)


def test_a_compiled_model_is_trimmed_with_one_compilation():
    from torch._dynamo.testing import CompileCounterWithBackend

    torch.manual_seed(0)
    model = tiny("bert", "sdpa")
    inputs, labels = batch(), torch.tensor([0, 2, 1, 2])
    full = model(**inputs, labels=labels)
    counter = CompileCounterWithBackend("aot_eager")  # dynamo + AOTAutograd as inductor runs them, no code generated
    model.compile(backend=counter, dynamic=True)
    frames = []
    for _ in range(3):  # the same stand-in module every call: traced by the first call, not once a step
        with last_layer_at(model) as trimmed:
            fast = model(**inputs, labels=labels)
        assert trimmed
        frames.append(counter.frame_count)
    assert frames[0] > 0 and frames == frames[:1] * 3
    torch.testing.assert_close(fast.logits, full.logits, rtol=1e-5, atol=1e-6)
    assert not any(isinstance(m, PartialLayer) for m in model.modules())
    assert set(model.state_dict()) == set(tiny("bert", "sdpa").state_dict())
    with last_layer_at(model, torch.zeros(4, 2, dtype=torch.long)) as trimmed:  # new positions each step: not traced
        assert trimmed is False
    torch._dynamo.reset()
