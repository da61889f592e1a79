"""CPU latency helper: what it reports and what it leaves untouched (never how fast anything is)."""
import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

from evaluation.latency import measure_cpu_latency


@pytest.fixture
def model_and_tokenizer(wordpiece_tokenizer_dir):
    tok = AutoTokenizer.from_pretrained(wordpiece_tokenizer_dir)
    config = BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, num_labels=2)
    return BertForSequenceClassification(config), tok


def test_texts_and_pairs(model_and_tokenizer):
    model, tok = model_and_tokenizer
    model.train()
    threads = torch.get_num_threads()
    texts = ["the game was good .", "the film was bad and dull .", "a song ."]
    result = measure_cpu_latency(model, tok, texts=texts, batch_size=2, warmup=1, repeats=4, num_threads=1)
    assert result.num_threads == 1 and result.batch_size == 2 and result.timed_batches == 4
    assert result.seq_length == len(tok("the film was bad and dull .")["input_ids"])
    assert result.p10_ms <= result.median_ms <= result.p90_ms and result.median_ms > 0
    assert result.as_dict()["median_ms_per_example"] == pytest.approx(result.median_ms / 2)
    assert model.training and torch.get_num_threads() == threads  # mode and threads restored
    pairs = [("the game .", "a film ."), ("old city .", "new city .")]
    assert measure_cpu_latency(model, tok, texts=pairs, batch_size=2, warmup=0, repeats=1).batch_size == 2


def test_ready_batch_and_bad_arguments(model_and_tokenizer):
    model, tok = model_and_tokenizer
    batch = dict(tok(["the game .", "the film ."], return_tensors="pt"), labels=torch.tensor([0, 1]))
    result = measure_cpu_latency(model, batch=batch, warmup=0, repeats=2)  # labels are not fed to the model
    assert result.batch_size == 2 and result.timed_batches == 2
    with pytest.raises(ValueError, match="exactly one"):
        measure_cpu_latency(model, tok)
    with pytest.raises(ValueError, match="needs a `tokenizer`"):
        measure_cpu_latency(model, texts=["x"])
