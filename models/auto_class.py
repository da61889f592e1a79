"""Which transformers Auto class loads a model (`auto_class_name`), and that class by name (`auto_class`): what a
checkpoint records to rebuild its model, and what the model card tells users to load it with."""
from __future__ import annotations

import torch
import transformers

# Auto classes tried in order: the first whose mapping gives the model's class (or a parent of it) wins. MaskedLM
# comes before PreTraining because AutoModelForPreTraining maps DistilBERT/RoBERTa to their *ForMaskedLM classes too.
AUTO_CLASS_NAMES = (
    "AutoModelForMaskedLM",
    "AutoModelForSequenceClassification",
    "AutoModelForQuestionAnswering",
    "AutoModelForTokenClassification",
    "AutoModelForMultipleChoice",
    "AutoModelForCausalLM",
    "AutoModelForPreTraining",
    "AutoModel",
)


def auto_class_name(model: torch.nn.Module) -> str:
    """Name of the transformers Auto class that rebuilds `model`, e.g. "AutoModelForSequenceClassification"."""
    config_class = type(model.config)
    for name in AUTO_CLASS_NAMES:
        try:
            mapped = getattr(transformers, name)._model_mapping[config_class]
        except KeyError:
            continue
        mapped = mapped if isinstance(mapped, tuple) else (mapped,)
        if any(issubclass(type(model), cls) for cls in mapped):
            return name
    # A class the Auto mappings do not know (a custom subclass): go by the Hugging Face naming convention.
    class_name = type(model).__name__
    for name in AUTO_CLASS_NAMES[:-1]:
        if class_name.endswith(name.removeprefix("AutoModel")):
            return name
    raise ValueError(f"no transformers Auto class loads {class_name} (model_type {model.config.model_type!r})")


def auto_class(name: str):
    """The transformers Auto class called `name` (checked against AUTO_CLASS_NAMES)."""
    if name not in AUTO_CLASS_NAMES:
        raise ValueError(f"unknown Auto class {name!r}; expected one of {', '.join(AUTO_CLASS_NAMES)}")
    return getattr(transformers, name)
