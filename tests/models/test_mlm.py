"""models/mlm.py: sparse MLM logits equal the dense loss for BERT, RoBERTa and DistilBERT; building and loading."""
import pytest
import torch
from transformers import AutoModel

from models.last_layer import trimmable
from models.mlm import build_masked_lm, lm_head_parts, sparse_mlm_logits, split_masked_lm

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, max_seq_length=24)


def random_mlm_batch(vocab_size, pad_token_id, batch=4, length=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, vocab_size, (batch, length), generator=g)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 12:] = 0  # right padding in one row
    input_ids[attention_mask == 0] = pad_token_id
    labels = torch.where(torch.rand(batch, length, generator=g) < 0.3, input_ids, torch.full_like(input_ids, -100))
    labels[attention_mask == 0] = -100
    return input_ids, attention_mask, labels


@pytest.mark.parametrize("arch", ["roberta", "bert", "distilbert"])
def test_sparse_loss_equals_dense_loss(arch):
    torch.manual_seed(0)
    model = build_masked_lm(arch=arch, vocab_size=97, pad_token_id=1, **TINY).eval()
    input_ids, attention_mask, labels = random_mlm_batch(97, 1)
    with torch.no_grad():
        dense = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
        logits, targets, hidden = sparse_mlm_logits(model, input_ids, attention_mask, labels)
    n_masked = int((labels != -100).sum())
    assert logits.shape == (n_masked, 97) and targets.shape == (n_masked,) and hidden.shape == (n_masked, 32)
    sparse_loss = torch.nn.functional.cross_entropy(logits, targets)
    torch.testing.assert_close(sparse_loss, dense.loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(logits, dense.logits[labels != -100], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ["roberta", "bert", "distilbert"])
def test_lm_head_parts_compose_to_the_head(arch):
    torch.manual_seed(0)
    model = build_masked_lm(arch=arch, vocab_size=97, pad_token_id=1, **TINY).eval()
    head = split_masked_lm(model)[1]
    transform, projection = lm_head_parts(head)
    hidden = torch.randn(6, 32)
    torch.testing.assert_close(projection(transform(hidden)), head(hidden))
    assert isinstance(projection, torch.nn.Linear) and projection.out_features == 97
    assert lm_head_parts(torch.nn.Linear(32, 97)) is None  # an unknown head: callers keep the plain path


@pytest.mark.parametrize("arch", ["roberta", "bert", "distilbert"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_sparse_gradients_equal_dense_gradients(arch, attn):
    """The sparse head, with the last layer run at the masked positions only (models/last_layer.py), gives the dense
    model's gradients."""
    torch.manual_seed(0)
    model = build_masked_lm(arch=arch, vocab_size=97, pad_token_id=1, **TINY).eval()
    model.config._attn_implementation = attn
    assert trimmable(model)
    input_ids, attention_mask, labels = random_mlm_batch(97, 1, seed=1)
    model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss.backward()
    dense = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    logits, targets, _ = sparse_mlm_logits(model, input_ids, attention_mask, labels)
    torch.nn.functional.cross_entropy(logits, targets).backward()
    assert dense.keys() == {n for n, p in model.named_parameters() if p.grad is not None}
    for name, p in model.named_parameters():
        if name in dense:
            torch.testing.assert_close(p.grad, dense[name], rtol=1e-4, atol=1e-6, msg=name)


def test_roberta_positions_cover_max_seq_length():
    model = build_masked_lm(arch="roberta", vocab_size=50, pad_token_id=1, **TINY)
    assert model.config.max_position_embeddings == TINY["max_seq_length"] + 2
    assert model.config.type_vocab_size == 1
    input_ids = torch.randint(5, 50, (2, TINY["max_seq_length"]))
    assert model(input_ids=input_ids).logits.shape == (2, TINY["max_seq_length"], 50)  # no index error at the end


def test_load_pretrained_directories(tiny_roberta_dir, tiny_bert_dir):
    for directory, cls_name in ((tiny_roberta_dir, "RobertaForMaskedLM"), (tiny_bert_dir, "BertForMaskedLM")):
        model = build_masked_lm(str(directory))
        assert type(model).__name__ == cls_name and next(model.parameters()).dtype == torch.float32
        with pytest.raises(ValueError, match="embeds only"):
            build_masked_lm(str(directory), vocab_size=model.config.vocab_size + 1)


def test_errors_name_the_problem(tiny_bert_dir):
    with pytest.raises(ValueError, match="arch must be one of"):
        build_masked_lm(arch="gpt2", vocab_size=50, pad_token_id=1)
    with pytest.raises(ValueError, match="vocab_size and pad_token_id"):
        build_masked_lm(arch="roberta")
    with pytest.raises(TypeError, match="bare encoder"):
        split_masked_lm(AutoModel.from_pretrained(tiny_bert_dir))
