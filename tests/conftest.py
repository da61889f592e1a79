"""Shared fixtures: tiny tokenizers, tiny random-init models and tiny data in the official formats. No network."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# Offline, deterministic, and CPU-only for every test (set before transformers is imported anywhere).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tests import fixtures  # noqa: E402

REAL_DATA_DIR = os.environ.get("DATA_DIR")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Each test session gets its own tokenized-dataset cache, never the user's."""
    monkeypatch.setenv("LITBERT_CACHE", str(tmp_path_factory.getbasetemp() / "litbert_cache"))


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """A DATA_DIR with tiny glue/, squad/ and wikitext-2/ in the official layouts."""
    root = tmp_path_factory.mktemp("data")
    fixtures.write_glue(root)
    fixtures.write_squad(root / "squad" / "dev-v1.1.json")
    fixtures.write_squad(root / "squad" / "dev-v2.0.json", with_impossible=True, seed=1)
    for i, split in enumerate(("train", "valid", "test")):
        fixtures.write_text_corpus(root / "wikitext-2" / f"{split}.txt", n_articles=8 if split == "train" else 3,
                                   seed=i)
    return root


@pytest.fixture(scope="session")
def wordpiece_tokenizer_dir(tmp_path_factory) -> Path:
    """A tiny uncased BERT WordPiece tokenizer (like the MiniLM teacher's) covering the fixture vocabulary."""
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertTokenizerFast

    out = tmp_path_factory.mktemp("wordpiece")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(set(fixtures.all_fixture_text()))
    vocab += [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz0123456789"] + list("abcdefghijklmnopqrstuvwxyz")
    vocab = list(dict.fromkeys(vocab))
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    # transformers 5 ignores vocab_file here: build the WordPiece model with `tokenizers` and wrap it.
    wordpiece = BertWordPieceTokenizer(str(out / "vocab.txt"), lowercase=True)
    BertTokenizerFast(tokenizer_object=wordpiece._tokenizer, do_lower_case=True, unk_token="[UNK]", pad_token="[PAD]",
                      cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]", model_max_length=512).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def bpe_tokenizer_dir(tmp_path_factory, data_dir) -> Path:
    """A tiny RoBERTa byte-level BPE trained by the project's own tokenizer trainer on the fixture corpus."""
    from datamodules.tokenizer import train_byte_level_bpe

    out = tmp_path_factory.mktemp("bpe") / "tokenizer"
    train_byte_level_bpe([data_dir / "wikitext-2" / "train.txt"], out, vocab_size=400, min_frequency=1)
    return out


TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=130, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


@pytest.fixture
def tiny_bert_dir(tmp_path, wordpiece_tokenizer_dir) -> Path:
    """A random-init 4-layer BERT masked LM (hidden 32) saved with its tokenizer, like a small teacher."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(wordpiece_tokenizer_dir)
    config = BertConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, **{**TINY, "num_hidden_layers": 4})
    out = tmp_path / "tiny-bert"
    BertForMaskedLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture
def tiny_roberta_dir(tmp_path, bpe_tokenizer_dir) -> Path:
    """A random-init 4-layer RoBERTa masked LM (hidden 32) saved with its byte-level BPE tokenizer."""
    import torch
    from transformers import AutoTokenizer, RobertaConfig, RobertaForMaskedLM

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(bpe_tokenizer_dir)
    config = RobertaConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                           eos_token_id=tok.eos_token_id, type_vocab_size=1,
                           **{**TINY, "num_hidden_layers": 4, "max_position_embeddings": 132})
    out = tmp_path / "tiny-roberta"
    RobertaForMaskedLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def requires_real_data(*relative_paths: str):
    """Skip unless DATA_DIR holds the real files (CI sets DATA_DIR=../shared/data)."""
    missing = not REAL_DATA_DIR or not all((Path(REAL_DATA_DIR) / p).exists() for p in relative_paths)
    return pytest.mark.skipif(missing, reason=f"needs DATA_DIR with {', '.join(relative_paths)}")
