"""Hugging Face exports without Lightning: the export directory (written atomically) and rebuilding a model from a
Lightning `.ckpt`. Which Auto class loads a model: models/auto_class.py; pushing to the hub: models/hub.py.

An export directory is what `save_pretrained` writes (config.json + model.safetensors), the tokenizer files and a
model card README.md; it loads offline with `AutoModelFor...from_pretrained(dir)` or
`models.pretrained.load_pretrained`.
"""
from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
import transformers

from datamodules.atomic import atomic_directory
from models.auto_class import auto_class
from models.model_card import render_model_card
from models.pretrained import load_tokenizer

def save_export(model, out_dir: str | os.PathLike, tokenizer=None, model_card: str | None = None) -> Path:
    """Write `model` (safetensors + config), `tokenizer` and the model card README.md to `out_dir`, atomically."""
    out_dir = Path(out_dir)
    with atomic_directory(out_dir) as tmp:
        model.save_pretrained(tmp)  # transformers 5 writes safetensors only
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if model_card is not None:
            (tmp / "README.md").write_text(model_card, encoding="utf-8")
        make_shareable(tmp)
    return out_dir


def make_shareable(directory: Path) -> None:
    """Give every file the permissions a new file gets (0666 minus the umask): the safetensors writer creates its
    file 0600, which would leave the weights of a shared or served export unreadable to everyone but the owner."""
    umask = os.umask(0)
    os.umask(umask)
    for path in directory.rglob("*"):
        if path.is_file():
            path.chmod(0o666 & ~umask)


# ---- Lightning .ckpt -> Hugging Face model ---------------------------------------------------------------------------
class CheckpointFileError(ValueError):
    """A `.ckpt` that cannot be a checkpoint: empty, truncated, or another kind of file."""


def check_checkpoint_file(path: str | os.PathLike, option: str = "checkpoint") -> Path:
    """Cheap check (no loading) that `path` holds a `torch.save` checkpoint, before anything is built from it.

    `torch.save` writes a zip archive with a `data.pkl` record and its directory at the end of the file, so an empty
    file, a truncated one (a process killed while writing it) or an unrelated file fails here with one line naming it;
    torch's own errors (`EOFError`, "failed finding central directory") do not name the file. A directory (a sharded
    FSDP/DeepSpeed checkpoint) and a remote URL are left to their loaders.
    """
    path = Path(path)
    if "://" in str(path):
        return path
    if not path.exists():
        raise FileNotFoundError(f"{option} {path}: no such file")
    if path.is_dir():
        return path
    size = path.stat().st_size
    if size == 0:
        raise CheckpointFileError(f"{option} {path}: the file is empty (0 bytes), not a checkpoint; it was probably "
                                  f"cut short by a killed process: use an earlier checkpoint")
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as err:
        raise CheckpointFileError(f"{option} {path}: not a readable PyTorch checkpoint ({size} bytes, {err}); it is "
                                  f"truncated (a killed process) or another kind of file: use an earlier "
                                  f"checkpoint") from None
    if not any(name == "data.pkl" or name.endswith("/data.pkl") for name in names):
        raise CheckpointFileError(f"{option} {path}: a zip archive without torch.save's data.pkl, not a PyTorch "
                                  f"checkpoint")
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a Lightning `.ckpt` on the CPU. It is a pickle: only open checkpoints you trust."""
    path = check_checkpoint_file(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as err:
        raise CheckpointFileError(f"checkpoint {path}: cannot be read ({type(err).__name__}: {err})") from err


def hf_model_from_checkpoint(checkpoint: dict[str, Any], prefix: str = "model.", source: str = "checkpoint"):
    """Rebuild the LightningModule's `self.model` from `checkpoint["hf_model"]` and the `model.` state_dict entries."""
    meta = checkpoint.get("hf_model")
    if not meta:
        raise KeyError(
            f"{source} has no 'hf_model' entry: it was not saved by a LightningModule that mixes in "
            "lightning_modules.hf_checkpoint.HFCheckpointMixin, so its Hugging Face model cannot be rebuilt"
        )
    config_dict = dict(meta["config"])
    config = transformers.CONFIG_MAPPING[config_dict["model_type"]].from_dict(config_dict)
    model = auto_class(meta["auto_class"]).from_config(config, dtype=torch.float32)
    # `model._orig_mod.` when the module trained a torch.compile'd model
    weights = {k[len(prefix):].removeprefix("_orig_mod."): v for k, v in checkpoint["state_dict"].items()
               if k.startswith(prefix)}
    if not weights:
        raise KeyError(f"{source} has no weights under the prefix {prefix!r} in its state_dict")
    model.load_state_dict(weights, strict=True)
    return model.eval()


def checkpoint_metrics(checkpoint: dict[str, Any]) -> dict[str, float]:
    """Best monitored scores recorded by ModelCheckpoint callbacks in the checkpoint (e.g. {"val_loss": 2.1})."""
    metrics = {}
    for state in checkpoint.get("callbacks", {}).values():
        if isinstance(state, dict) and state.get("monitor") and state.get("best_model_score") is not None:
            metrics[f"best {state['monitor']}"] = float(state["best_model_score"])
    return metrics


def convert_checkpoint(ckpt_path: str | os.PathLike, out_dir: str | os.PathLike, tokenizer: str | None = None,
                       command: list[str] | None = None) -> Path:
    """Turn a Lightning `.ckpt` into the same export directory the HFExport callback writes.

    The tokenizer defaults to `datamodule_hyper_parameters["tokenizer"]`, which LightningCLI stores when the
    DataModule saved its hyper-parameters.
    """
    checkpoint = load_checkpoint(ckpt_path)
    model = hf_model_from_checkpoint(checkpoint, source=str(ckpt_path))
    data_hparams = dict(checkpoint.get("datamodule_hyper_parameters") or {})
    tokenizer = tokenizer or data_hparams.get("tokenizer")
    if not tokenizer:
        raise ValueError(
            f"{ckpt_path} does not record the tokenizer (no datamodule_hyper_parameters['tokenizer']): "
            "pass --tokenizer DIR"
        )
    card = render_model_card(
        model,
        info=checkpoint["hf_model"].get("model_card_info") or {},
        hyper_parameters=checkpoint.get("hyper_parameters"),
        data_hyper_parameters=data_hparams,
        metrics=checkpoint_metrics(checkpoint),
        command=command,
        load_path=str(out_dir),
        note=f"Converted from the Lightning checkpoint `{Path(ckpt_path).name}` "
             f"(epoch {checkpoint.get('epoch')}, step {checkpoint.get('global_step')}).",
    )
    try:
        loaded_tokenizer = load_tokenizer(str(tokenizer))
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot load the tokenizer {str(tokenizer)!r} for {ckpt_path} (a relative path is taken from "
                         f"the current directory {os.getcwd()}): {err}; pass --tokenizer DIR") from err
    return save_export(model, out_dir, loaded_tokenizer, card)
