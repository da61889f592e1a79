"""GLUE dev metrics as torchmetrics collections, and the task's single main score for checkpoint selection.

GLUE convention: CoLA Matthews correlation; SST-2, QNLI, RTE, WNLI, MNLI accuracy; MRPC and QQP F1 (positive class
1) and accuracy; STS-B Pearson and Spearman. Which task uses which metrics is the data engineer's task table in
datamodules/glue.py; this file only knows how to build a metric from its name. All scores are reported in percent.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torchmetrics import MetricCollection
from torchmetrics.classification import BinaryF1Score, MulticlassAccuracy, MulticlassMatthewsCorrCoef
from torchmetrics.regression import PearsonCorrCoef, SpearmanCorrCoef

# Metric name -> factory(num_labels). Classification metrics take class ids, regression metrics float scores.
METRIC_FACTORIES = {
    # micro average = the fraction of correct predictions (torchmetrics' multiclass default is macro)
    "accuracy": lambda n: MulticlassAccuracy(num_classes=n, average="micro"),
    "f1": lambda n: BinaryF1Score(),
    "matthews_correlation": lambda n: MulticlassMatthewsCorrCoef(num_classes=n),
    "pearson": lambda n: PearsonCorrCoef(),
    "spearman": lambda n: SpearmanCorrCoef(),
}
# Other spellings of the same metrics (the Hugging Face `evaluate` names among them).
ALIASES = {"acc": "accuracy", "mcc": "matthews_correlation", "matthews": "matthews_correlation",
           "matthews_corrcoef": "matthews_correlation", "pearsonr": "pearson", "spearmanr": "spearman",
           "pearson_correlation": "pearson", "spearman_correlation": "spearman"}
REGRESSION_METRICS = {"pearson", "spearman"}


def canonical_metric_name(name: str) -> str:
    name = ALIASES.get(name.lower(), name.lower())
    if name not in METRIC_FACTORIES:
        raise ValueError(f"unknown GLUE metric {name!r}; known: {sorted(METRIC_FACTORIES)} (and {sorted(ALIASES)})")
    return name


def glue_metric_collection(metric_names: Sequence[str], num_labels: int, prefix: str = "") -> MetricCollection:
    """A MetricCollection with the given metrics (names as in `METRIC_FACTORIES` or `ALIASES`), keys `prefix+name`."""
    if not metric_names:
        raise ValueError("glue_metric_collection: no metric names given")
    names = [canonical_metric_name(n) for n in metric_names]
    if "f1" in names and num_labels != 2:
        raise ValueError(f"f1 is the binary F1 of class 1 (MRPC, QQP); this task has {num_labels} labels")
    return MetricCollection({n: METRIC_FACTORIES[n](num_labels) for n in names}, prefix=prefix)


def predictions_from_logits(logits: torch.Tensor, is_regression: bool) -> torch.Tensor:
    """Class ids (argmax) for classification, the single output as float scores for regression. (B, C) -> (B,)."""
    return logits.squeeze(-1).float() if is_regression else logits.argmax(dim=-1)


def main_score(values: Mapping[str, float], main_metrics: Sequence[str]) -> float:
    """The task's main score: the mean of its main metrics (e.g. MRPC F1 and accuracy), looked up by name suffix."""
    picked = []
    for name in main_metrics:
        name = canonical_metric_name(name)
        matches = [float(v) for k, v in values.items() if k == name or k.endswith("/" + name)]
        if not matches:
            raise KeyError(f"main metric {name!r} not among the computed metrics {sorted(values)}")
        picked.extend(matches)
    return sum(picked) / len(picked)
