"""GLUE metrics against values computed by hand (and by scipy for the correlations)."""
import math

import pytest
import torch
from scipy.stats import pearsonr, spearmanr

from evaluation.glue_metrics import glue_metric_collection, main_score, predictions_from_logits


def test_accuracy_is_micro_not_macro():
    metrics = glue_metric_collection(["accuracy"], num_labels=3)
    metrics.update(torch.tensor([0, 0, 0, 1]), torch.tensor([0, 0, 0, 2]))
    # micro: 3/4 correct (macro over classes would be (1 + 0 + 0) / 2 or / 3)
    assert metrics.compute()["accuracy"].item() == pytest.approx(0.75)


def test_matthews_correlation_by_hand():
    preds = torch.tensor([1, 1, 1, 0, 0, 0, 1, 0])
    target = torch.tensor([1, 1, 0, 0, 0, 1, 1, 0])
    tp, tn, fp, fn = 3, 3, 1, 1
    expected = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))  # 0.5
    metrics = glue_metric_collection(["mcc"], num_labels=2)
    metrics.update(preds, target)
    assert metrics.compute()["matthews_correlation"].item() == pytest.approx(expected)


def test_f1_of_positive_class_and_accuracy_pair():
    preds = torch.tensor([1, 1, 0, 1, 0])
    target = torch.tensor([1, 0, 0, 1, 1])
    # class 1: tp 2, fp 1, fn 1 -> precision 2/3, recall 2/3, F1 2/3; accuracy 3/5
    metrics = glue_metric_collection(["f1", "accuracy"], num_labels=2, prefix="val/")
    metrics.update(preds, target)
    values = {k: v.item() for k, v in metrics.compute().items()}
    assert values["val/f1"] == pytest.approx(2 / 3)
    assert values["val/accuracy"] == pytest.approx(3 / 5)
    assert main_score(values, ["f1", "accuracy"]) == pytest.approx((2 / 3 + 3 / 5) / 2)


def test_f1_needs_two_labels():
    with pytest.raises(ValueError, match="binary F1"):
        glue_metric_collection(["f1"], num_labels=3)


def test_pearson_spearman_against_scipy():
    preds = torch.tensor([0.1, 1.9, 3.2, 2.5, 4.8, 0.7])
    target = torch.tensor([0.0, 2.0, 2.8, 3.5, 5.0, 1.0])
    metrics = glue_metric_collection(["pearson", "spearmanr"], num_labels=1)
    metrics.update(preds[:3], target[:3])  # accumulated over two batches
    metrics.update(preds[3:], target[3:])
    values = metrics.compute()
    assert values["pearson"].item() == pytest.approx(pearsonr(preds, target)[0], abs=1e-5)
    assert values["spearman"].item() == pytest.approx(spearmanr(preds, target)[0], abs=1e-5)
    # hand check of Spearman: ranks of preds 1 3 5 4 6 2 vs target 1 3 4 5 6 2 -> d^2 sum 2 -> 1 - 6*2/(6*35)
    assert values["spearman"].item() == pytest.approx(1 - 12 / 210, abs=1e-5)


def test_main_score_means_over_dataloaders_and_unknown_names():
    values = {"val/matched/accuracy": 0.8, "val/mismatched/accuracy": 0.7, "val/loss": 0.3}
    assert main_score(values, ["accuracy"]) == pytest.approx(0.75)
    with pytest.raises(KeyError, match="f1"):
        main_score(values, ["f1"])
    with pytest.raises(ValueError, match="unknown GLUE metric"):
        glue_metric_collection(["bleu"], num_labels=2)


def test_predictions_from_logits():
    logits = torch.tensor([[0.1, 2.0], [3.0, -1.0]])
    assert predictions_from_logits(logits, is_regression=False).tolist() == [1, 0]
    assert predictions_from_logits(torch.tensor([[1.5], [2.5]]), is_regression=True).tolist() == [1.5, 2.5]
