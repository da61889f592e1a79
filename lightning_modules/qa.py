"""Extractive question answering (SQuAD v1.1 / v2.0) fine-tuning and evaluation.

    python train.py fit --config configs/finetune/squad.yaml

Training uses the start/end positions of every window (feature). Evaluation keeps each feature's start/end logits,
then, at the end of the epoch (gathered over processes), `evaluation.squad.postprocess_qa_predictions` picks the
best span of each example over all its windows (n-best 20, at most 30 tokens, null answer for v2.0 by score
difference) and `evaluation.squad.squad_scores` computes EM/F1 in percent after the official normalisation.
`predict` writes predictions.json ({id: answer}) and, for v2.0, null_odds.json.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchmetrics import MeanMetric
from transformers import AutoModelForQuestionAnswering

from datamodules.tasks import hub_dataset
from evaluation.squad import postprocess_qa_predictions, squad_scores
from evaluation.writers import write_squad_predictions
from lightning_modules.distributed import log_epoch_means
from lightning_modules.finetune import DATA_FACTS, FineTuningModule, gather_objects
from models.inputs import model_inputs


def _column(rows, name: str) -> list:
    """A column of a `datasets.Dataset` or of a list of dicts."""
    if hasattr(rows, "column_names"):
        return list(rows[name])
    return [row[name] for row in rows]


def _answer_texts(answers) -> list[str]:
    """Gold answer texts from SQuAD's `answers` field ({"text": [...]}, [{"text": ...}], or a list of strings)."""
    if isinstance(answers, dict):
        return list(answers.get("text", []))
    return [a["text"] if isinstance(a, dict) else a for a in answers]


class QuestionAnsweringModule(FineTuningModule):
    """Span-extraction QA on any encoder checkpoint (`AutoModelForQuestionAnswering`: a start/end head).

    `task_name` ("squad" or "squad_v2") comes from the DataModule (its `version_2_with_negative`, detected from the
    evaluation file); v2.0 scoring and the null answer follow it. The DataModule must provide `eval_examples` (id, context, answers) and
    `eval_features` (`example_index`, `offset_mapping` per feature); batches carry `feature_index`.
    Logged: `val/exact_match`, `val/f1`, `val/score` (= F1), and for v2.0 `val/HasAns_*`, `val/NoAns_*`.
    When only part of the evaluation set is run (limit_val_batches), only the examples seen are scored.

    The arguments FineTuningModule documents (pretrained, the optimiser's, output_dir) are not repeated here.

    Args:
        task_name: "squad" or "squad_v2", linked from the DataModule (v2.0 scoring and the null answer follow it).
        n_best_size: start and end candidates per feature in post-processing.
        max_answer_length: longest answer in tokens.
        null_score_diff_threshold: v2.0 predicts "" when null score - best span score exceeds it.
    """

    def __init__(self, pretrained: str, task_name: str = "squad", lr: float = 5e-5, weight_decay: float = 0.01,
                 warmup_ratio: float = 0.1, warmup_steps: int | None = None,
                 betas: tuple[float, float] = (0.9, 0.98), eps: float = 1e-6, n_best_size: int = 20,
                 max_answer_length: int = 30, null_score_diff_threshold: float = 0.0, output_dir: str | None = None):
        super().__init__(pretrained, task_name, lr, weight_decay, warmup_ratio, warmup_steps, betas, eps, output_dir)
        self.save_hyperparameters(ignore=list(DATA_FACTS))  # linked from the DataModule (see finetune.py)
        self.model = self.build_model(AutoModelForQuestionAnswering, pretrained)
        if task_name not in ("squad", "squad_v2"):
            raise ValueError(f"QuestionAnsweringModule: task_name must be 'squad' or 'squad_v2', got {task_name!r}")
        self.version_2 = task_name == "squad_v2"
        self._outputs: list[tuple[int, torch.Tensor, torch.Tensor]] = []  # (feature index, start, end logits)
        # val/test loss weighted by features, exact across processes with unequal shards
        self.eval_losses = nn.ModuleDict({"val": MeanMetric(), "test": MeanMetric()})

    def forward(self, batch: dict):
        """The model output: `start_logits`, `end_logits` (B, T)."""
        return self.model(**model_inputs(self.model, batch))

    def training_step(self, batch, batch_idx):
        loss = self.model(**model_inputs(self.model, batch), start_positions=batch["start_positions"],
                          end_positions=batch["end_positions"]).loss
        self.log("train/loss", loss, prog_bar=True, sync_dist=True)  # under DDP: the mean over all ranks
        return loss

    # ---- evaluation ------------------------------------------------------------------------------------------------
    def _collect(self, batch, stage: str | None = None):
        """Keep each feature's logits; log the loss too where the batch has answer positions."""
        positions = {k: batch[k] for k in ("start_positions", "end_positions") if k in batch}
        out = self.model(**model_inputs(self.model, batch), **(positions if len(positions) == 2 else {}))
        if stage is not None and out.loss is not None:
            self.eval_losses[stage].update(out.loss.detach(), weight=len(out.start_logits))
        starts, ends = out.start_logits.float().cpu(), out.end_logits.float().cpu()
        for i, f in enumerate(batch["feature_index"].tolist()):
            self._outputs.append((f, starts[i], ends[i]))

    def _predictions(self, datamodule=None) -> tuple[dict[str, str], dict[str, float], dict[str, list[str]]]:
        """Post-process the gathered logits: (predictions, null_odds, gold answers) of the examples seen."""
        by_feature = {f: (s, e) for rank_outputs in gather_objects(self._outputs) for f, s, e in rank_outputs}
        self._outputs = []
        datamodule = datamodule or self.trainer.datamodule
        examples, features = datamodule.eval_examples, datamodule.eval_features
        feature_ids = sorted(by_feature)  # every rank's features; a repeated one (other samplers) counts once
        feature_example = _column(features, "example_index")
        all_offsets = _column(features, "offset_mapping")
        seen = sorted({int(feature_example[f]) for f in feature_ids})
        position = {ex: i for i, ex in enumerate(seen)}  # renumber the examples seen 0..n-1
        ids, contexts, answers = _column(examples, "id"), _column(examples, "context"), _column(examples, "answers")
        predictions, null_odds = postprocess_qa_predictions(
            contexts=[contexts[ex] for ex in seen], example_ids=[ids[ex] for ex in seen],
            feature_example_index=[position[int(feature_example[f])] for f in feature_ids],
            feature_offsets=[all_offsets[f] for f in feature_ids],
            start_logits=[by_feature[f][0] for f in feature_ids], end_logits=[by_feature[f][1] for f in feature_ids],
            n_best_size=self.hparams.n_best_size, max_answer_length=self.hparams.max_answer_length,
            version_2=self.version_2, null_score_diff_threshold=self.hparams.null_score_diff_threshold)
        golds = {ids[ex]: _answer_texts(answers[ex]) for ex in seen}
        return predictions, null_odds, golds

    def _eval_epoch_end(self, stage: str):
        if not self._outputs and not torch.distributed.is_initialized():
            return
        log_epoch_means(self, {f"{stage}/loss": self.eval_losses[stage]})
        predictions, _, golds = self._predictions()
        if not golds:
            return
        scores = squad_scores(predictions, golds, version_2=self.version_2)
        values = {f"{stage}/{k}": float(v) for k, v in scores.items() if not k.endswith("total")}
        values[f"{stage}/examples"] = float(scores["total"])
        self.log_dict(values, sync_dist=False)  # every process computed the same figures from the gathered logits
        self.log(f"{stage}/score", values[f"{stage}/f1"], prog_bar=True)
        self.final_metrics = {**values, f"{stage}/score": values[f"{stage}/f1"]}

    def validation_step(self, batch, batch_idx):
        self._collect(batch, "val")

    def on_validation_epoch_start(self):
        self._outputs = []

    def on_validation_epoch_end(self):
        self._eval_epoch_end("val")

    def on_test_epoch_start(self):
        self._outputs = []

    def test_step(self, batch, batch_idx):
        self._collect(batch, "test")

    def on_test_epoch_end(self):
        self._eval_epoch_end("test")

    # ---- prediction files ------------------------------------------------------------------------------------------
    def on_predict_epoch_start(self):
        self._outputs = []

    def predict_step(self, batch, batch_idx):
        self._collect(batch)

    def on_predict_epoch_end(self):
        predictions, null_odds, _ = self._predictions()
        if self.trainer.is_global_zero:
            written = write_squad_predictions(self.prediction_dir(), predictions, null_odds if self.version_2 else None)
            print(f"wrote {len(predictions)} answers to {', '.join(map(str, written))}")

    def model_card_info(self) -> dict[str, Any]:
        info = super().model_card_info()
        info["recipe"].update(n_best_size=self.hparams.n_best_size, max_answer_length=self.hparams.max_answer_length,
                              null_score_diff_threshold=self.hparams.null_score_diff_threshold)
        info["datasets"] = [hub_dataset("squad_v2" if self.version_2 else "squad")[0]]  # rajpurkar/squad(_v2)
        return info
