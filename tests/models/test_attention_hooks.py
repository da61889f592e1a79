"""models/attention_hooks.py: the captured q/k/v give the model's own attention (eager attention's returned weights),
SDPA captures the same q/k/v as eager, and the hooks leave the forward and the model unchanged."""
import pytest
import torch
from transformers import (AlbertConfig, AlbertForMaskedLM, BertConfig, BertForMaskedLM, DebertaV2Config,
                          DebertaV2ForMaskedLM, DistilBertConfig, DistilBertForMaskedLM, ElectraConfig,
                          ElectraForMaskedLM, RobertaConfig, RobertaForMaskedLM)

from lightning_modules.layerwise_losses import masked_log_softmax, scaled_dot_scores
from models.attention_hooks import capture_qkv, check_attention_scores

SIZE = dict(vocab_size=50, hidden_size=16, num_hidden_layers=3, num_attention_heads=4, intermediate_size=32,
            max_position_embeddings=40, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def build(family: str, attn: str):
    torch.manual_seed(0)
    if family == "bert":
        config = BertConfig(**SIZE)
        cls = BertForMaskedLM
    elif family == "roberta":
        config = RobertaConfig(**SIZE, pad_token_id=1)
        cls = RobertaForMaskedLM
    elif family == "electra":
        config = ElectraConfig(**SIZE, embedding_size=8)
        cls = ElectraForMaskedLM
    elif family == "albert":  # one layer group shared by the 3 layers
        config = AlbertConfig(**SIZE, embedding_size=8, num_hidden_groups=1)
        cls = AlbertForMaskedLM
    elif family == "deberta-v2":  # relative attention: the projections run again on the position embeddings
        config = DebertaV2Config(**SIZE, relative_attention=True, pos_att_type=["p2c", "c2p"], max_relative_positions=8)
        cls = DebertaV2ForMaskedLM
    else:
        config = DistilBertConfig(vocab_size=50, dim=16, n_layers=3, n_heads=4, hidden_dim=32,
                                  max_position_embeddings=40, dropout=0.0, attention_dropout=0.0)
        cls = DistilBertForMaskedLM
    config._attn_implementation = attn
    return cls(config).eval()


def batch():
    ids = torch.randint(5, 50, (2, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    return ids, mask


@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert", "electra", "albert"])
def test_hooked_qkv_give_the_eager_attention_weights_and_sdpa_the_same_qkv(family):
    ids, mask = batch()
    eager = build(family, "eager")
    with torch.no_grad(), capture_qkv(eager) as record:
        out = eager(input_ids=ids, attention_mask=mask, output_attentions=True)
    assert sorted(record.layers) == [0, 1, 2]
    for layer, attentions in enumerate(out.attentions):  # [B, heads, L, L] softmax weights
        q, k, v = record.qkv(layer)
        assert q.shape == k.shape == v.shape == (2, 7, 16)
        probs = masked_log_softmax(scaled_dot_scores(q, k, 4), mask).exp()
        torch.testing.assert_close(probs, attentions, atol=1e-5, rtol=1e-4)
    sdpa = build(family, "sdpa")
    sdpa.load_state_dict(eager.state_dict())
    with torch.no_grad(), capture_qkv(sdpa, layers=[-1]) as sdpa_record:
        sdpa_out = sdpa(input_ids=ids, attention_mask=mask)
    assert list(sdpa_record.layers) == [2]  # only the layers asked for (negative: from the end)
    for got, want in zip(sdpa_record.qkv(2), record.qkv(2)):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(sdpa_out.logits, out.logits, atol=1e-5, rtol=1e-4)


def test_hooks_are_removed_and_keep_the_graph():
    model = build("bert", "sdpa").train()
    ids, mask = batch()
    with capture_qkv(model, layers=[0]) as record:
        model(input_ids=ids, attention_mask=mask)
    q, _, _ = record.qkv(0)
    q.sum().backward()
    assert model.bert.encoder.layer[0].attention.self.query.weight.grad is not None
    assert all(not m._forward_hooks for m in model.modules())


def test_albert_shared_layers_and_deberta_repeated_calls():
    """ALBERT: the shared projections' n-th call is layer n; DeBERTa-v2: only the call on the hidden states counts."""
    ids, mask = batch()
    albert = build("albert", "sdpa")
    with torch.no_grad(), capture_qkv(albert) as record:
        out = albert(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    query = albert.albert.encoder.albert_layer_groups[0].albert_layers[0].attention.query
    for layer in range(3):  # layer i's input is hidden_states[i]
        torch.testing.assert_close(record.qkv(layer)[0], query(out.hidden_states[layer]))
    deberta = build("deberta-v2", "eager")
    inputs = []
    attention = deberta.deberta.encoder.layer[1].attention.self
    handle = attention.register_forward_pre_hook(lambda _m, args, kwargs: inputs.append(kwargs.get(
        "hidden_states", args[0] if args else None)), with_kwargs=True)
    with torch.no_grad(), capture_qkv(deberta, layers=[1]) as record:
        deberta(input_ids=ids, attention_mask=mask)
    handle.remove()
    q, k, v = record.qkv(1)
    assert q.shape == (2, 7, 16)
    torch.testing.assert_close(q, attention.query_proj(inputs[0]))
    torch.testing.assert_close(v, attention.value_proj(inputs[0]))
    with pytest.raises(ValueError, match="relations"):
        check_attention_scores(deberta)


def test_relative_positions_are_refused():
    config = BertConfig(**SIZE)
    config.position_embedding_type = "relative_key"
    with pytest.raises(ValueError, match="absolute positions"):
        check_attention_scores(BertForMaskedLM(config))
