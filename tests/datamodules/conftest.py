"""Helpers for the DataModule tests: small factories over the shared fixture data."""
from __future__ import annotations

import pytest


@pytest.fixture
def glue_dm(data_dir, wordpiece_tokenizer_dir, tmp_path):
    """Factory: a GLUEDataModule on the fixture data with the WordPiece tokenizer and a per-test cache."""
    from datamodules.glue import GLUEDataModule

    def make(task_name="sst2", **kwargs):
        kwargs.setdefault("data_dir", str(data_dir))
        kwargs.setdefault("tokenizer", str(wordpiece_tokenizer_dir))
        kwargs.setdefault("cache_dir", str(tmp_path / "cache"))
        kwargs.setdefault("batch_size", 4)
        return GLUEDataModule(task_name=task_name, **kwargs)

    return make


@pytest.fixture
def text_dm(data_dir, bpe_tokenizer_dir, tmp_path):
    """Factory: a TextCorpusDataModule on the fixture data with the byte-level BPE and a per-test cache."""
    from datamodules.text import TextCorpusDataModule

    def make(**kwargs):
        kwargs.setdefault("tokenizer", str(bpe_tokenizer_dir))
        kwargs.setdefault("data_dir", str(data_dir))
        kwargs.setdefault("cache_dir", str(tmp_path / "cache"))
        kwargs.setdefault("max_seq_length", 32)
        kwargs.setdefault("batch_size", 4)
        return TextCorpusDataModule(**kwargs)

    return make


def batches(loader):
    return list(iter(loader))
