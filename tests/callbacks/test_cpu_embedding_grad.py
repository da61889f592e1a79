"""callbacks/cpu_embedding_grad.py: the kept, row-cleared embedding gradient trains exactly as torch's dense one (the
same parameters bit for bit, with and without accumulation, and when a dense gradient reaches the weight too); tied
embeddings are left alone; train.py gives every CPU fit the callback and undoes it after; `enabled: false` keeps
torch's backward."""
import copy

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from transformers import BertConfig, BertForMaskedLM, BertForSequenceClassification

from callbacks.cpu_embedding_grad import SparseEmbeddingGrad, TouchedRowsGrad, trainable_input_embedding
from tests.lightning_modules.test_finetune import run_cli


def tiny_classifier() -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, num_labels=2)
    return BertForSequenceClassification(config).train()


def batches(n: int, vocab: int = 300) -> list[dict]:
    generator = torch.Generator().manual_seed(1)
    out = []
    for i in range(n):
        ids = torch.randint(1, vocab, (4, 6 + i % 3), generator=generator)
        ids[0, -2:] = 0  # padding: the padding row gets no gradient either way
        out.append({"input_ids": ids, "attention_mask": (ids != 0).long(),
                    "labels": torch.randint(0, 2, (4,), generator=generator)})
    return out


def train(model: nn.Module, data: list[dict], rows: TouchedRowsGrad | None, accumulate: int = 1) -> list[dict]:
    """Fused AdamW over `data` (`accumulate` batches a step, dropout seeded per batch); the parameters after each
    step."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01, fused=True)
    states = []
    for i, batch in enumerate(data):
        torch.manual_seed(100 + i)
        loss = model(**batch).loss
        if rows is not None:
            rows.attach()
        loss.backward()
        if rows is not None:
            assert model.get_input_embeddings().weight.grad is rows.buffer  # added into in place, never replaced
        if (i + 1) % accumulate == 0:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            states.append({k: v.clone() for k, v in model.state_dict().items()})
    return states


@pytest.mark.parametrize("accumulate", [1, 2])
def test_the_kept_gradient_trains_exactly_as_torchs_dense_one(accumulate):
    plain = tiny_classifier()
    kept = copy.deepcopy(plain)
    rows = TouchedRowsGrad(kept.get_input_embeddings())
    data = batches(6)
    expected, got = train(plain, data, None, accumulate), train(kept, data, rows, accumulate)
    for step, (a, b) in enumerate(zip(expected, got)):
        for name in a:
            assert torch.equal(a[name], b[name]), (step, name)
    rows.attach()  # the next step's clearing leaves nothing behind
    assert not rows.buffer.any()
    rows.remove()
    assert not kept.get_input_embeddings().sparse and kept.get_input_embeddings().weight.grad is None


class SharedWeight(nn.Module):
    """An embedding whose weight a dense product reads too: its gradient reaches the weight dense."""

    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(50, 8)

    def get_input_embeddings(self):
        return self.embedding

    def forward(self, ids):
        return (self.embedding(ids).sum(1) @ self.embedding.weight.T).pow(2).mean()


def test_a_dense_gradient_reaching_the_weight_clears_every_row():
    plain = SharedWeight()
    kept = copy.deepcopy(plain)
    rows = TouchedRowsGrad(kept.embedding)
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        ids = torch.randint(0, 50, (2, 5), generator=generator)
        plain(ids).backward()
        rows.attach()
        kept(ids).backward()
        assert rows.dense  # the two gradients are summed in another order: equal up to rounding
        torch.testing.assert_close(kept.embedding.weight.grad, plain.embedding.weight.grad, rtol=1e-6, atol=1e-6)
        plain.embedding.weight.grad = kept.embedding.weight.grad = None


def test_only_an_untied_trained_input_embedding_is_served():
    classifier = tiny_classifier()
    assert trainable_input_embedding(classifier) is classifier.get_input_embeddings()
    masked_lm = BertForMaskedLM(classifier.config)  # decoder tied to the word embeddings
    assert trainable_input_embedding(masked_lm) is None
    classifier.get_input_embeddings().weight.requires_grad_(False)
    assert trainable_input_embedding(classifier) is None
    assert trainable_input_embedding(nn.Linear(2, 2)) is None


def test_every_cpu_fit_gets_it_trains_the_same_and_undoes_it_and_a_config_can_keep_torchs_backward(
        data_dir, tiny_bert_dir, tmp_path):
    kept = run_cli("fit", data_dir, tiny_bert_dir, tmp_path / "kept", "sst2", "--trainer.max_steps=3")
    callbacks = [c for c in kept.trainer.callbacks if isinstance(c, SparseEmbeddingGrad)]
    assert [(c.enabled, c.applied, c.rows) for c in callbacks] == [(True, True, None)]
    embedding = kept.model.model.get_input_embeddings()
    assert not embedding.sparse and not embedding.weight._backward_hooks
    plain = run_cli("fit", data_dir, tiny_bert_dir, tmp_path / "plain", "sst2", "--trainer.max_steps=3",
                    "--trainer.callbacks+=callbacks.cpu_embedding_grad.SparseEmbeddingGrad",
                    "--trainer.callbacks.init_args.enabled=false")
    assert [(c.enabled, c.applied) for c in plain.trainer.callbacks if isinstance(c, SparseEmbeddingGrad)] == \
        [(False, False)]
    expected, got = plain.model.model.state_dict(), kept.model.model.state_dict()
    assert all(torch.equal(expected[name], got[name]) for name in expected)
    name = "bert.embeddings.word_embeddings.weight"
    assert not torch.equal(got[name], load_file(tiny_bert_dir / "model.safetensors")[name])  # it did train
