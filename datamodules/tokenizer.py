"""Tokenizers: load any Hugging Face tokenizer, or train a RoBERTa-style byte-level BPE on a corpus."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from tokenizers import ByteLevelBPETokenizer
from transformers import RobertaTokenizerFast

from datamodules.atomic import atomic_directory

ROBERTA_SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # ids 0..4, as in RoBERTa


def _iter_lines(files: Iterable[str | os.PathLike]):
    for path in files:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    yield line


def train_byte_level_bpe(
    files: list[str | os.PathLike],
    out_dir: str | os.PathLike,
    vocab_size: int = 50265,
    min_frequency: int = 2,
    model_max_length: int = 512,
) -> RobertaTokenizerFast:
    """Train a GPT-2/RoBERTa byte-level BPE (RoBERTa uses 50k units) and save a directory AutoTokenizer loads.

    The directory is written under a temporary name and renamed, so an interrupted run leaves nothing half-written.
    """
    for path in files:
        if not Path(path).is_file():
            raise FileNotFoundError(f"tokenizer training file not found: {path}")
    bpe = ByteLevelBPETokenizer(add_prefix_space=False)
    bpe.train_from_iterator(
        _iter_lines(files), vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=ROBERTA_SPECIAL_TOKENS
    )
    # Roberta post-processing (<s> A </s></s> B </s>) and the special tokens by name.
    tokenizer = RobertaTokenizerFast(
        tokenizer_object=bpe._tokenizer,
        bos_token="<s>", eos_token="</s>", sep_token="</s>", cls_token="<s>",
        unk_token="<unk>", pad_token="<pad>", mask_token="<mask>", model_max_length=model_max_length,
    )
    with atomic_directory(out_dir) as tmp:
        tokenizer.save_pretrained(tmp)
    return tokenizer
