"""The one definition of "the inputs this model's forward takes" from a batch (or a tokenizer's output).

Batches carry more than a model reads (labels, example_index, offsets, ...), and not every encoder takes every input
(DistilBERT has no token_type_ids). Every place that calls a Hugging Face model with a batch goes through here.
"""
from __future__ import annotations

import inspect
from typing import Mapping

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def model_inputs(model, batch: Mapping) -> dict:
    """The entries of `batch` among MODEL_INPUTS that `model.forward` takes (a model, its encoder or any module)."""
    params = inspect.signature(model.forward).parameters
    return {k: batch[k] for k in MODEL_INPUTS if k in batch and k in params}
