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

from datamodules.tasks import hub_dataset as hub_dataset_of, hub_dataset_of_name
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


def _data_settings(info: dict[str, Any], data_hyper_parameters: dict[str, Any]) -> dict[str, Any]:
    """The DataModule's settings: its hyper-parameters and what `model_card_info()["data"]` reports."""
    data = info.get("data") if isinstance(info.get("data"), dict) else {}
    return {**data_hyper_parameters, **data}


def eval_split(data: dict[str, Any], metric_name: str = "") -> str:
    """The model-index split a figure was computed on: the hub's split name only where it covers all of it.

    A subset is named as such, e.g. `validation[articles 38-47]` (SQuAD's default evaluation on the last 10 dev
    articles, the first 38 being its training data), `validation[first 100 examples]` (max_eval_samples), or
    `custom (my_dev.json)` for a file that is not the dataset's own dev set.
    """
    files = [Path(str(f)).name for f in ([data["eval_file"]] if data.get("eval_file") else
                                         list(data.get("val_files") or []))]
    own_files = {"dev-v1.1.json", "dev-v2.0.json", "valid.txt"}  # the dev sets of SQuAD v1.1/v2.0 and wikitext
    if any(name not in own_files for name in files):
        return f"custom ({', '.join(files)})"
    split = "validation"
    for part in ("matched", "mismatched"):  # MNLI's two evaluation sets log `val/<set>/<metric>`
        split = f"validation_{part}" if f"/{part}/" in metric_name else split
    subset = []
    if data.get("eval_articles"):
        start, end = data["eval_articles"]
        subset.append(f"articles {start}-{end - 1}")
    if data.get("max_eval_samples"):
        subset.append(f"first {data['max_eval_samples']} examples")
    return f"{split}[{', '.join(subset)}]" if subset else split


def card_data(model, info: dict[str, Any], metrics: dict[str, float], model_name: str,
              data: dict[str, Any] | None = None) -> ModelCardData:
    """The YAML front matter; model-index from `info["metrics"]` or else the non-training logged metrics.

    `datasets:` are hub ids (datamodules/tasks.py; older names such as `glue/sst2` in checkpoints are mapped), the
    model-index entries name the hub id with its config (`nyu-mll/glue` + `sst2`) and the split actually evaluated.
    """
    auto_name = auto_class_name(model)
    named = info.get("datasets") or []
    named = [named] if isinstance(named, str) else list(named)
    hub_datasets = [hub_dataset_of_name(str(name)) for name in named]
    task_dataset = hub_dataset_of(info.get("task"))
    if not hub_datasets and task_dataset[0]:
        hub_datasets = [task_dataset]
    datasets = list(dict.fromkeys(name for name, _ in hub_datasets))
    index_metrics = _scalar_metrics(info.get("metrics")) or {
        k: v for k, v in metrics.items() if not k.startswith("train") and not k.startswith("best ")
    }
    index_metrics = {k: v for k, v in index_metrics.items() if _is_model_metric(k)}
    task_type = PIPELINE_TAGS.get(auto_name, "other")
    dataset, config = hub_datasets[0] if hub_datasets else (str(info.get("task") or "custom"), None)
    config = task_dataset[1] or config
    dataset_name = f"{dataset} {config}" if config else dataset
    known = "/" in dataset  # a hub id: its split names mean something (a local corpus name has none)
    results = [
        EvalResult(task_type=task_type, dataset_type=dataset, dataset_name=dataset_name, dataset_config=config,
                   dataset_split=eval_split(data or {}, name) if known else None, metric_type=name.split("/")[-1],
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


# An absolute path inside a text (a table value, an argument of the command): not after a word character or a dot,
# so `val/score` or `1/2` are left alone.
ABSOLUTE_PATH = re.compile(r"(?<![\w.~$])/[^\s,\[\]=\'\"`]+")
REPO_ROOT = Path(__file__).resolve().parents[1]


def portable(value: Any, data_dir: str | None) -> Any:
    """`value` without the training machine's absolute paths: relative to the data directory (`$DATA_DIR/...`),
    to the working directory, to the repository, to the home directory (`~/...`), else the file name only. Lists
    and dicts element-wise."""
    if isinstance(value, dict):
        return {k: portable(v, data_dir) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [portable(v, data_dir) for v in value]
    if not isinstance(value, str):
        return value
    roots = [(Path(data_dir).resolve(), "$DATA_DIR")] if data_dir and os.path.isabs(str(data_dir)) else []
    roots += [(Path.cwd(), ""), (REPO_ROOT, ""), (Path.home(), "~")]  # the run's directory: its command's paths

    def relative(match: re.Match) -> str:
        path = Path(match.group(0))
        for root, label in roots:
            if path == root or root in path.parents:
                rest = path.relative_to(root).as_posix()
                return "/".join(p for p in (label, rest if rest != "." else "") if p) or "."
        return path.name

    return ABSOLUTE_PATH.sub(relative, value)


def _new_rows(rows: dict[str, Any], shown: dict[str, Any]) -> dict[str, Any]:
    """The rows whose name and value no earlier table of the card showed (each hyper-parameter once); records them."""
    new = {k: v for k, v in rows.items() if k not in shown or shown[k] != v}
    shown.update(new)
    return new


def render_model_card(model, info: dict[str, Any] | None = None, *, hyper_parameters: dict | None = None,
                      data_hyper_parameters: dict | None = None, metrics: dict[str, Any] | None = None,
                      command: list[str] | None = None, model_name: str | None = None,
                      note: str | None = None, load_path: str | None = None) -> str:
    """README.md text for an export of `model`.

    info: `LightningModule.model_card_info()` (keys in lightning_modules.hf_checkpoint.MODEL_CARD_KEYS);
    hyper_parameters / data_hyper_parameters: the module's and DataModule's saved hyper-parameters;
    metrics: logged scalars at export time; command: argv of the run (sys.argv);
    load_path: the directory or hub repo id shown in the usage snippet.
    Absolute paths of the training machine are shown relative (`portable`); each value appears in one table only.
    """
    info = dict(info or {})
    model_name = model_name or default_model_name(model, info)
    hyper_parameters, data_hyper_parameters = _public(hyper_parameters), _public(data_hyper_parameters)
    data_settings = _data_settings(info, data_hyper_parameters)
    metrics = _scalar_metrics(metrics)
    data_dir = str(data_settings.get("data_dir") or os.environ.get("DATA_DIR") or "")
    data = card_data(model, info, metrics, model_name, data_settings)  # before `portable`: base_model needs paths
    info = portable(info, data_dir)
    hyper_parameters, data_hyper_parameters = portable(hyper_parameters, data_dir), portable(data_hyper_parameters,
                                                                                             data_dir)
    load_path = portable(load_path, data_dir) if load_path else f"path/to/{model_name}"
    auto_name = auto_class_name(model)
    shown: dict[str, Any] = {}

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
    data_info = info.get("data")
    if info.get("datasets") or data_info or data_hyper_parameters:
        body += ["## Data", ""]
        body += [f"Datasets: {', '.join(data.datasets or [])}", ""] if data.datasets else []
        body += [str(data_info), ""] if data_info and not isinstance(data_info, dict) else []
        # one table: what the module reports about its data, then the DataModule's other hyper-parameters
        rows = _new_rows({**(data_info if isinstance(data_info, dict) else {}), **data_hyper_parameters}, shown)
        body += [_table(rows), ""] if rows else []
    recipe = info.get("recipe") if isinstance(info.get("recipe"), dict) else {}
    if recipe or hyper_parameters:
        body += ["## Training recipe", ""]
        rows = _new_rows({**recipe, **{k: v for k, v in hyper_parameters.items() if k not in recipe}}, shown)
        body += [_table(rows), ""] if rows else []
    module_metrics = _scalar_metrics(info.get("metrics"))
    if module_metrics or metrics:
        body += ["## Results", ""]
        body += [_table(_new_rows(module_metrics, shown), ("metric", "value")), ""] if module_metrics else []
        logged = _new_rows(metrics, shown)
        body += ["Logged metrics at export time:", "", _table(logged, ("metric", "value")), ""] if logged else []
    body += ["## Usage", "", "```python",
             f"from transformers import AutoTokenizer, {auto_name}",
             f'model = {auto_name}.from_pretrained("{load_path}")',
             f'tokenizer = AutoTokenizer.from_pretrained("{load_path}")', "```", ""]
    if command:
        command = [portable(str(a), data_dir) for a in command]
        body += ["## Reproduce", "", "Produced by:", "", "```bash", shlex.join(command), "```", ""]
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

    Table values: every `| name | value |` row of the body's tables, parsed back (each value is in one table only;
    where a name repeats with another value, the first row wins: the Data table comes before the recipe).
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
