"""Tokenizers: load any Hugging Face tokenizer, or train a RoBERTa-style byte-level BPE on a corpus."""
from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Iterable

from tokenizers import ByteLevelBPETokenizer
from transformers import RobertaTokenizerFast

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
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # A unique name made like any new folder (mkdtemp would make it 0700: unreadable to others once renamed).
    tmp = out_dir.parent / f".{out_dir.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
    tmp.mkdir()
    try:
        tokenizer.save_pretrained(tmp)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return tokenizer
