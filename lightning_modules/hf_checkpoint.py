"""HFCheckpointMixin: every litbert LightningModule's checkpoints can be rebuilt as a plain Hugging Face model.

Mix it in FIRST, before LightningModule, so its hooks take precedence over LightningModule's empty defaults:

    class MaskedLMModule(HFCheckpointMixin, LightningModule):
        def __init__(self, ...):
            super().__init__()
            self.model = load_pretrained(AutoModelForMaskedLM, pretrained)   # the model to export
            self.teacher = ...                                                 # distillation only: frozen teacher

        def model_card_info(self) -> dict:                                   # optional, see MODEL_CARD_KEYS
            return {"task": "mlm", "datasets": ["Salesforce/wikitext"], ...}

What it does:
- `on_save_checkpoint` stores `checkpoint["hf_model"] = {"config": model.config.to_dict(), "auto_class":
  "AutoModelForMaskedLM" | "AutoModelForSequenceClassification" | ..., "model_class": "BertForMaskedLM",
  "model_card_info": self.model_card_info()}`; the weights are the `model.`-prefixed entries of the state_dict, so
  `models.convert.hf_model_from_checkpoint` / `scripts/convert_checkpoint.py` rebuild `self.model` from any `.ckpt`.
  A subclass that overrides `on_save_checkpoint` must call `super().on_save_checkpoint(checkpoint)`.
- The frozen teacher of a distillation module is never written to a checkpoint. Convention: the distillation module
  keeps its teacher as an ordinary sub-module `self.teacher` (so `.to(device)` and precision plugins move it), and
  this mixin drops every state_dict key under `teacher.` (see `excluded_state_prefixes`) from `state_dict()`, and
  `load_state_dict()` tolerates their absence (the teacher is loaded again from its own path by `__init__`).
  Any other key mismatch still raises under `strict=True`.
"""
from __future__ import annotations

from typing import Any

import torch.nn as nn

from models.auto_class import auto_class_name

# Keys `model_card_info()` may return; `models.model_card.render_model_card` gives each a place in the README.
# Every key is optional and values must be YAML/JSON-friendly (str, numbers, lists, dicts).
MODEL_CARD_KEYS = {
    "task": "what the model does, e.g. 'masked language modelling', 'sst2', 'squad_v2'",
    "description": "a sentence or two about the model (free text)",
    "datasets": "hub ids of the datasets it was trained on (front matter `datasets:`), e.g. ['nyu-mll/glue']",
    "data": "dict or free text: splits, sizes, max_seq_length, masking ...",
    "recipe": "dict of hyper-parameters (lr, batch size, steps, loss weights, temperature ...)",
    "metrics": "dict name -> float of final evaluation figures (also fed to the front matter model-index)",
    "teacher": "students only: name or path of the teacher",
    "layer_map": "students only: list, student layer i initialised from teacher layer layer_map[i]",
    "tags": "extra hub tags, e.g. ['distillation']",
    "license": "SPDX-like hub license id (default apache-2.0)",
}


class HFCheckpointMixin:
    """Mixin for LightningModules whose exportable Hugging Face model is `self.model` (see the module docstring)."""

    # state_dict prefixes never saved (and not required on load): the frozen distillation teacher.
    excluded_state_prefixes: tuple[str, ...] = ("teacher.",)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        mro = cls.__mro__
        if nn.Module in mro and mro.index(HFCheckpointMixin) > mro.index(nn.Module):
            raise TypeError(
                f"{cls.__name__}: list HFCheckpointMixin before LightningModule in the bases "
                f"(class {cls.__name__}(HFCheckpointMixin, LightningModule)), otherwise its hooks never run"
            )

    # ---- what the export callback and the converter read ---------------------------------------------------------
    def model_card_info(self) -> dict[str, Any]:
        """Facts for the exported model card (keys in MODEL_CARD_KEYS); modules override this. Default: none."""
        return {}

    def hf_model_metadata(self) -> dict[str, Any]:
        """`checkpoint["hf_model"]`: enough to rebuild `self.model` from the `model.` weights without Lightning."""
        model = unwrap_model(self.model)
        return {
            "config": model.config.to_dict(),
            "auto_class": auto_class_name(model),
            "model_class": type(model).__name__,
            "model_card_info": self.model_card_info(),
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["hf_model"] = self.hf_model_metadata()
        # Lightning filled checkpoint["state_dict"] from self.state_dict() (teacher already dropped); a strategy that
        # gathers the state_dict itself may not have, so drop the excluded keys here as well.
        state = checkpoint.get("state_dict")
        if isinstance(state, dict):
            for key in [k for k in state if self._is_excluded(k)]:
                del state[key]

    # ---- keep the teacher out of state_dict, tolerate its absence on load ----------------------------------------
    def _is_excluded(self, key: str, prefix: str = "") -> bool:
        return any(key.startswith(prefix + p) for p in self.excluded_state_prefixes)

    def state_dict(self, *args, destination=None, prefix: str = "", keep_vars: bool = False):
        state = super().state_dict(*args, destination=destination, prefix=prefix, keep_vars=keep_vars)
        for key in [k for k in state if self._is_excluded(k, prefix)]:
            del state[key]
        return state

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        missing = [k for k in result.missing_keys if not self._is_excluded(k)]
        unexpected = list(result.unexpected_keys)
        if strict and (missing or unexpected):
            raise RuntimeError(
                f"Error(s) in loading state_dict for {type(self).__name__}: missing keys {missing}, "
                f"unexpected keys {unexpected}"
            )
        result.missing_keys[:] = missing  # the teacher's keys are not "missing": they are never saved
        return result


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model itself when it was wrapped by `torch.compile` (which keeps the original as `_orig_mod`)."""
    return getattr(model, "_orig_mod", model)
