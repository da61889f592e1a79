"""The README.md model card of an export: hub front matter (huggingface_hub's ModelCardData) + a readable summary.

Front matter: license, tags, library_name: transformers, pipeline_tag, datasets, metrics and a model-index with the
final evaluation figures. Body: architecture and parameter count, teacher and layer map for distilled students, data,
recipe (the module's and the DataModule's hyper-parameters), metrics, how to load it, and the command that made it.
`read_model_card` reads the front matter and the tables back (inference uses the recorded evaluation settings).
"""
from __future__ import annotations

import json
import math
import os
import re
import shlex
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData, metadata_load

from datamodules.tasks import hub_dataset as hub_dataset_of
from models.auto_class import auto_class_name

PIPELINE_TAGS = {
    "AutoModelForMaskedLM": "fill-mask",
    "AutoModelForSequenceClassification": "text-classification",
    "AutoModelForQuestionAnswering": "question-answering",
    "AutoModelForTokenClassification": "token-classification",
    "AutoModelForCausalLM": "text-generation",
    "AutoModel": "feature-extraction",
}



# Hub ids of the models litbert names by its own short names (the packaged teacher).
HUB_MODEL_IDS = {"packaged:all-minilm-l6-v2": "sentence-transformers/all-MiniLM-L6-v2"}
# Logged figures that are not evaluation metrics of the model: the main score (a copy or mean of real metrics),
# example counts and learning rates (LearningRateMonitor's `lr-AdamW/pg1`).
NOT_METRICS = ("score", "examples")


def _is_model_metric(name: str) -> bool:
    """Whether a logged name is an evaluation metric for the model-index (not a score copy, a count or an lr)."""
    return name.split("/")[-1] not in NOT_METRICS and not name.startswith("lr-")


def base_model_id(info: dict[str, Any]) -> str | None:
    """The hub id of the model this one was trained from (the teacher of a student, else the recipe's base model);
    None for a local directory: a path of the training machine means nothing on the hub."""
    recipe = info.get("recipe") if isinstance(info.get("recipe"), dict) else {}
    name = str(info.get("teacher") or recipe.get("base_model") or "")
    name = HUB_MODEL_IDS.get(name, name)
    if not name or name.startswith(("/", ".", "~", "packaged:")) or os.path.exists(name) or name.count("/") > 1:
        return None
    return name


def _cell(value: Any) -> str:
    """One markdown table cell: numbers compact, containers as JSON, pipes escaped."""
    if isinstance(value, float):
        text = f"{value:.6g}"
    elif isinstance(value, (dict, list, tuple)):
        text = json.dumps(value, default=str)
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _table(rows: dict[str, Any], header: tuple[str, str] = ("name", "value")) -> str:
    lines = [f"| {header[0]} | {header[1]} |", "|---|---|"]
    lines += [f"| {_cell(k)} | {_cell(v)} |" for k, v in rows.items()]
    return "\n".join(lines)


def _public(hparams: dict | None) -> dict[str, Any]:
    """Hyper-parameters without LightningCLI's internal entries (`_class_path`, `_instantiator`)."""
    return {k: v for k, v in (hparams or {}).items() if not str(k).startswith("_")}


def default_model_name(model, info: dict[str, Any]) -> str:
    """e.g. "distilbert-sst2" or "roberta-masked-language-modelling"."""
    task = "-".join(str(info.get("task") or "").lower().split())
    return f"{model.config.model_type}-{task}" if task else model.config.model_type


def _scalar_metrics(metrics: dict[str, Any] | None) -> dict[str, float]:
    """Finite float metrics (tensors converted), in name order."""
    out = {}
    for name, value in sorted((metrics or {}).items()):
        try:
            value = float(value)
        except (TypeError, ValueError, RuntimeError):  # RuntimeError: a tensor with more than one element
            continue
        if math.isfinite(value):
            out[str(name)] = value
    return out


def architecture_summary(model) -> dict[str, Any]:
    """Class, sizes and parameter count (tied weights counted once) of a transformers model."""
    config = model.config
    summary = {
        "class": type(model).__name__,
        "model_type": config.model_type,
        "layers": getattr(config, "num_hidden_layers", None),
        "hidden size": getattr(config, "hidden_size", None),
        "attention heads": getattr(config, "num_attention_heads", None),
        "intermediate size": getattr(config, "intermediate_size", getattr(config, "hidden_dim", None)),
        "vocabulary size": getattr(config, "vocab_size", None),
        "max positions": getattr(config, "max_position_embeddings", None),
        "parameters": model.num_parameters(),
        "parameters without embeddings": model.num_parameters(exclude_embeddings=True),
    }
    if getattr(config, "id2label", None) and auto_class_name(model) == "AutoModelForSequenceClassification":
        summary["labels (id2label)"] = {int(k): v for k, v in config.id2label.items()}
    return {k: v for k, v in summary.items() if v is not None}


def card_data(model, info: dict[str, Any], metrics: dict[str, float], model_name: str) -> ModelCardData:
    """The YAML front matter; model-index from `info["metrics"]` or else the non-training logged metrics."""
    auto_name = auto_class_name(model)
    datasets = info.get("datasets") or []
    datasets = [datasets] if isinstance(datasets, str) else list(datasets)
    hub_dataset, hub_config = hub_dataset_of(info.get("task"))
    if not datasets and hub_dataset:
        datasets = [hub_dataset]
    index_metrics = _scalar_metrics(info.get("metrics")) or {
        k: v for k, v in metrics.items() if not k.startswith("train") and not k.startswith("best ")
    }
    index_metrics = {k: v for k, v in index_metrics.items() if _is_model_metric(k)}
    task_type = PIPELINE_TAGS.get(auto_name, "other")
    dataset = datasets[0] if datasets else str(info.get("task") or "custom")
    dataset_name = f"{dataset} {hub_config}" if hub_config and hub_config not in dataset else dataset
    results = [
        EvalResult(task_type=task_type, dataset_type=dataset, dataset_name=dataset_name, dataset_config=hub_config,
                   dataset_split="validation" if hub_dataset else None, metric_type=name.split("/")[-1],
                   metric_name=name, metric_value=value)
        for name, value in index_metrics.items()
    ]
    tags = ["litbert", "pytorch-lightning", model.config.model_type] + list(info.get("tags") or [])
    if info.get("teacher"):
        tags.append("distillation")
    return ModelCardData(
        license=info.get("license", "apache-2.0"),
        language=info.get("language", "en"),  # every corpus and benchmark here is English
        base_model=base_model_id(info),
        library_name="transformers",
        pipeline_tag=PIPELINE_TAGS.get(auto_name),
        tags=list(dict.fromkeys(tags)),
        datasets=datasets or None,
        metrics=sorted({name.split("/")[-1] for name in index_metrics}) or None,
        model_name=model_name,
        eval_results=results or None,
    )


def render_model_card(model, info: dict[str, Any] | None = None, *, hyper_parameters: dict | None = None,
                      data_hyper_parameters: dict | None = None, metrics: dict[str, Any] | None = None,
                      command: list[str] | None = None, model_name: str | None = None,
                      note: str | None = None, load_path: str | None = None) -> str:
    """README.md text for an export of `model`.

    info: `LightningModule.model_card_info()` (keys in lightning_modules.hf_checkpoint.MODEL_CARD_KEYS);
    hyper_parameters / data_hyper_parameters: the module's and DataModule's saved hyper-parameters;
    metrics: logged scalars at export time; command: argv of the run (sys.argv);
    load_path: the directory or hub repo id shown in the usage snippet.
    """
    info = dict(info or {})
    model_name = model_name or default_model_name(model, info)
    load_path = load_path or f"path/to/{model_name}"
    hyper_parameters, data_hyper_parameters = _public(hyper_parameters), _public(data_hyper_parameters)
    metrics = _scalar_metrics(metrics)
    auto_name = auto_class_name(model)
    data = card_data(model, info, metrics, model_name)

    body = [f"# {model_name}", ""]
    body += [info["description"], ""] if info.get("description") else []
    body += [f"Trained with litbert (PyTorch Lightning). Task: {info.get('task', 'not stated')}.", ""]
    body += [note, ""] if note else []
    body += ["## Architecture", "", _table(architecture_summary(model)), ""]
    if info.get("teacher") or info.get("layer_map"):
        body += ["## Distillation", "", f"Teacher: `{info.get('teacher', 'not stated')}`", ""]
        if info.get("layer_map"):
            body += ["Student layer i was initialised from teacher layer `layer_map[i]`:", "",
                     _table(dict(enumerate(info["layer_map"])), ("student layer", "teacher layer")), ""]
    if info.get("datasets") or info.get("data") or data_hyper_parameters:
        body += ["## Data", ""]
        body += [f"Datasets: {', '.join(data.datasets or [])}", ""] if data.datasets else []
        data_info = info.get("data")
        if isinstance(data_info, dict):
            body += [_table(data_info), ""]
        elif data_info:
            body += [str(data_info), ""]
        if data_hyper_parameters:
            body += ["DataModule hyper-parameters:", "", _table(dict(data_hyper_parameters)), ""]
    if info.get("recipe") or hyper_parameters:
        body += ["## Training recipe", ""]
        body += [_table(dict(info["recipe"])), ""] if isinstance(info.get("recipe"), dict) else []
        if hyper_parameters:
            body += ["LightningModule hyper-parameters:", "", _table(dict(hyper_parameters)), ""]
    module_metrics = _scalar_metrics(info.get("metrics"))
    if module_metrics or metrics:
        body += ["## Results", ""]
        body += [_table(module_metrics, ("metric", "value")), ""] if module_metrics else []
        body += ["Logged metrics at export time:", "", _table(metrics, ("metric", "value")), ""] if metrics else []
    body += ["## Usage", "", "```python",
             f"from transformers import AutoTokenizer, {auto_name}",
             f'model = {auto_name}.from_pretrained("{load_path}")',
             f'tokenizer = AutoTokenizer.from_pretrained("{load_path}")', "```", ""]
    if command:
        body += ["## Reproduce", "", "Produced by:", "", "```bash", shlex.join(str(a) for a in command), "```", ""]
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body)))


# ---- reading a card back ---------------------------------------------------------------------------------------
def _parse_cell(text: str) -> Any:
    """The value `_cell` wrote: numbers, JSON containers, None/True/False, else the text."""
    text = text.replace("\\|", "|")
    if text in ("None", "True", "False"):
        return {"None": None, "True": True, "False": False}[text]
    try:
        return json.loads(text)
    except ValueError:
        return text


def read_model_card(directory: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """(front matter, table values) of the README.md of an export directory; ({}, {}) without one.

    Table values: every `| name | value |` row of the body's tables, parsed back; where a name repeats, the first
    row wins (the Data and recipe tables come before the raw hyper-parameter tables, with the same values).
    """
    path = Path(directory) / "README.md"
    if not path.is_file():
        return {}, {}
    front_matter = metadata_load(path) or {}
    values: dict[str, Any] = {}
    lines = path.read_text(encoding="utf-8").splitlines()
    for k, line in enumerate(lines):
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)]
        if len(cells) != 4 or cells[0] or cells[3] or set(cells[1]) <= {"-"}:
            continue  # not a two-column row, or a separator
        if k + 1 < len(lines) and lines[k + 1].startswith("|---"):
            continue  # a header row
        values.setdefault(cells[1].replace("\\|", "|"), _parse_cell(cells[2]))
    return front_matter, values
