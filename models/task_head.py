"""Whether a sequence-classification checkpoint's head was trained on the task about to be fine-tuned, and a new head
when it was not. Plain model code, no Lightning.

A classifier fine-tuned on one task (say a student distilled on SST-2) keeps its trained head when it is loaded for
another task with the same number of labels (RTE), since transformers only re-initialises weights that are missing or
of another shape: the new task would start from the old task's decision boundary. What the checkpoint records decides:

1. the task: `config.finetuning_task` (litbert writes it into every classifier it trains; Hugging Face's GLUE scripts
   do too), else the `task_name` of the data table of litbert's model card (README.md, exports made before issue 13);
2. else the number of labels, then the label names (`id2label`) when they say something: not transformers'
   placeholders `LABEL_0`, ... nor bare numbers `0`, `1` (the files of five GLUE tasks say only that).

Another task by any of these -> a new head. The same task, or nothing recorded (generic labels) -> the trained head is
kept (continued fine-tuning). A checkpoint without a classification head (a masked LM, a bare encoder) gets a new head
from transformers anyway.

The head is what transformers adds on top of the encoder: the model's children other than its base model (BERT and
RoBERTa: `classifier`; DistilBERT: `pre_classifier` and `classifier`). BERT's pooler belongs to the encoder and is kept,
as it is when a classifier is built from an encoder checkpoint. It is re-initialised by the model's own `_init_weights`.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from torch import nn

from datamodules.tasks import normalize_task_name
from models.model_card import read_model_card

GENERIC_LABEL = re.compile(r"^(LABEL_)?\d+$")  # placeholder or numeric label names: they name no task


def canonical_task(name: str | None) -> str | None:
    """'SST-2' / 'sst2' -> 'sst2' for GLUE names and 'custom', anything else lower-cased; None stays None."""
    if not name:
        return None
    try:
        return normalize_task_name(str(name))
    except ValueError:
        return str(name).lower()


def recorded_task(config, directory: str | os.PathLike | None = None) -> str | None:
    """The task a checkpoint's head was trained on: `config.finetuning_task`, else its litbert model card's
    `task_name`; None when neither says."""
    task = getattr(config, "finetuning_task", None)
    if not task and directory is not None and Path(directory).is_dir():
        task = read_model_card(directory)[1].get("task_name")
    return canonical_task(task)


def has_classification_head(config) -> bool:
    """Whether the checkpoint was saved as a sequence classifier (so its head holds trained weights)."""
    return any(str(a).endswith("ForSequenceClassification") for a in (config.architectures or []))


def label_names(config) -> list[str] | None:
    """The checkpoint's label names in id order; None for placeholders (`LABEL_0`, ...) and bare numbers."""
    id2label = getattr(config, "id2label", None) or {}
    names = [str(id2label[i]) for i in sorted(id2label, key=int)]
    return None if not names or all(GENERIC_LABEL.match(n) for n in names) else names


def other_task_reason(config, directory, task_name: str | None, num_labels: int,
                      names: list[list[str]] | None = None) -> str | None:
    """Why the trained classification head of the checkpoint (`config`, saved in `directory`) belongs to another task
    than `task_name` with `num_labels` labels, or None: no trained head, the same task, or nothing recorded says
    otherwise. `names`: the lists of label names the task goes by (readable ones, the data's own)."""
    if not has_classification_head(config):
        return None
    task, saved = canonical_task(task_name), recorded_task(config, directory)
    if saved is not None and task is not None and saved != task:
        return f"its classification head was trained on {saved}, not {task}"
    if config.num_labels != num_labels:
        return f"its classification head has {config.num_labels} outputs, {task or 'the task'} has {num_labels}"
    saved_names = label_names(config)
    names = [[str(n).lower() for n in task_names] for task_names in names or [] if task_names]
    if saved_names and names and [n.lower() for n in saved_names] not in names:
        return f"its classification head was trained on the labels {saved_names}, not {list(names[0])}"
    return None


def head_module_names(model: nn.Module) -> list[str]:
    """The model's children outside its base model that hold parameters: the head a task adds on top of the encoder."""
    base = getattr(model, "base_model_prefix", None)
    return [name for name, child in model.named_children()
            if name != base and any(True for _ in child.parameters())]


def reinitialise_head(model: nn.Module) -> list[str]:
    """Give `model` a new head (see `head_module_names`), initialised by the model's own `_init_weights`; returns the
    names of the modules re-initialised."""
    names = head_module_names(model)
    for name in names:
        module = getattr(model, name)
        for param in module.parameters():
            # from_pretrained marks loaded tensors as initialised, and transformers' init functions skip those
            if hasattr(param, "_is_hf_initialized"):
                del param._is_hf_initialized
        module.apply(model._init_weights)
    return names
