"""Tiny random-init exports (a text classifier, an extractive QA model) for the inference tests."""
import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertForQuestionAnswering, BertForSequenceClassification

from models.convert import save_export
from models.model_card import render_model_card
from tests.conftest import TINY


def save(model, tokenizer_dir, out, card_info=None):
    """An export directory like HFExport's (a model card only when `card_info` is given)."""
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    card = render_model_card(model, card_info) if card_info is not None else None
    return save_export(model, out, tok, card)


def bert_config(tok_dir, **kwargs):
    """A tiny BERT config (tests.conftest.TINY) over the tokenizer in `tok_dir`; `kwargs` override it."""
    tok = AutoTokenizer.from_pretrained(tok_dir)
    return BertConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, **{**TINY, **kwargs})


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory, wordpiece_tokenizer_dir):
    torch.manual_seed(0)
    config = bert_config(wordpiece_tokenizer_dir, num_labels=2, id2label={0: "negative", 1: "positive"},
                         label2id={"negative": 0, "positive": 1})
    # as HFExport writes it: the hub id, the DataModule's task_name and max_seq_length
    card = {"task": "sst2", "datasets": ["nyu-mll/glue"], "data": {"task_name": "sst2", "max_seq_length": 24}}
    return save(BertForSequenceClassification(config), wordpiece_tokenizer_dir,
                tmp_path_factory.mktemp("cls") / "best", card)


@pytest.fixture(scope="module")
def qa_dir(tmp_path_factory, wordpiece_tokenizer_dir):
    torch.manual_seed(0)
    return save(BertForQuestionAnswering(bert_config(wordpiece_tokenizer_dir)), wordpiece_tokenizer_dir,
                tmp_path_factory.mktemp("qa") / "best")
