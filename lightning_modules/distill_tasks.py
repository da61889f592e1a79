"""Task-specific distillation: a student learns a fine-tuned teacher's GLUE or SQuAD outputs (DistilBERT, section 4).

Loss = alpha_ce * soft loss on the teacher's task logits + alpha_hard * the task's own loss on the gold labels
+ alpha_cos * cosine loss between hidden states. Soft loss: KL at temperature T times T^2 for classification,
MSE for regression (STS-B), the mean of the start and end KL terms for SQuAD. Evaluation, metrics, prediction files
and the model card are the fine-tuning modules' (the student is `self.model`).
"""
from __future__ import annotations

import torch
from transformers import AutoModelForQuestionAnswering, AutoModelForSequenceClassification

from lightning_modules.distill import DistillationMixin, accepted_inputs
from lightning_modules.distill_losses import (classification_hard_loss, qa_hard_loss, qa_soft_loss,
                                              regression_soft_loss, soft_cross_entropy)
from lightning_modules.finetune import SequenceClassificationModule
from lightning_modules.qa import QuestionAnsweringModule
from models.flops import forward_flops
from models.last_layer import trimmable



class GLUEDistillationModule(DistillationMixin, SequenceClassificationModule):
    """Distil a teacher fine-tuned on a GLUE-style task (classification or regression) into a student.

    The shared distillation arguments are documented by `DistillationMixin`, the others by
    `SequenceClassificationModule` and `FineTuningModule` (the task facts are linked from the DataModule).
    BERT's pooler initialises an extracted DistilBERT student's pre_classifier.

    Args:
        teacher: a *ForSequenceClassification directory fine-tuned on the task (e.g. exported by the finetune run).
        temperature: softmax temperature of the classification KL term (no effect on regression).
        alpha_ce: weight of the soft term on the teacher's logits (KL * T^2; MSE for regression; 0 switches it off).
        alpha_hard: weight of the gold-label loss (0 switches it off).
    """

    teacher_head = "ForSequenceClassification"

    def __init__(self, teacher: str, student: str | None = None, student_layers: list[int] | None = None,
                 student_architecture: str = "auto", random_init: bool = False, fold_token_type: bool = True,
                 temperature: float = 2.0, alpha_ce: float = 1.0, alpha_hard: float = 1.0, alpha_cos: float = 0.0,
                 cos_layers: str | list[list[int]] = "last", task_name: str = "custom", num_labels: int = 2,
                 label_names: list[str] | None = None, is_regression: bool = False, lr: float = 1e-4,
                 weight_decay: float = 0.01, warmup_ratio: float = 0.05, warmup_steps: int | None = None,
                 betas: tuple[float, float] = (0.9, 0.98), eps: float = 1e-6, classifier_dropout: float | None = None,
                 metric_names: list[str] | None = None, main_metrics: list[str] | None = None,
                 output_dir: str | None = None):
        if alpha_hard < 0:
            raise ValueError(f"alpha_hard must be >= 0, got {alpha_hard}")
        super().__init__(pretrained=teacher, task_name=task_name, num_labels=num_labels, label_names=label_names,
                         is_regression=is_regression, lr=lr, weight_decay=weight_decay, warmup_ratio=warmup_ratio,
                         warmup_steps=warmup_steps, betas=betas, eps=eps, classifier_dropout=classifier_dropout,
                         metric_names=metric_names, main_metrics=main_metrics, output_dir=output_dir)
        self.save_own_hyperparameters()
        # the same label configuration the parent gave the teacher, for a student loaded from a directory
        student_kwargs = {k: getattr(self.model.config, k) for k in ("num_labels", "problem_type", "id2label",
                                                                     "label2id")}
        self.init_distillation(teacher, student, student_layers, student_architecture, random_init, fold_token_type,
                               temperature, alpha_ce, alpha_cos, cos_layers, AutoModelForSequenceClassification,
                               student_kwargs)

    def distillation_terms(self, batch: dict) -> dict[str, torch.Tensor]:
        student = self.model(**accepted_inputs(self.model, batch), output_hidden_states=True)
        with torch.no_grad():
            teacher = self.teacher(**accepted_inputs(self.teacher, batch), output_hidden_states=True)
        if self.is_regression:
            soft = regression_soft_loss(student.logits, teacher.logits)
        else:
            soft = soft_cross_entropy(student.logits, teacher.logits, self.temperature)
        terms = {
            "ce": soft,
            "hard": classification_hard_loss(student.logits, batch["labels"], self.is_regression),
            "cos": self.cosine_term(student.hidden_states, teacher.hidden_states, batch["attention_mask"]),
        }
        return self.weighted_total(terms, {"cos": batch["attention_mask"].sum()})  # ce, hard: means over examples

    def batch_flops(self, batch: dict, stage: str) -> int:
        """Training: as every distillation module. Evaluation: the student through `classify`, its last layer at the
        first token only (models/last_layer.py)."""
        if stage == "train":
            return super().batch_flops(batch, stage)
        batch_size_, seq_len = batch["input_ids"].shape
        rows = batch_size_ if trimmable(self.model, first_token_head=True) else None
        return forward_flops(self.model, batch_size_, seq_len, last_layer_rows=rows)


class QADistillationModule(DistillationMixin, QuestionAnsweringModule):
    """Distil a teacher fine-tuned on SQuAD (v1.1 or v2.0) into a student (DistilBERT's second distillation step).

    Loss = alpha_ce * (KL_T(start) + KL_T(end)) / 2 * T^2 over the non-padded positions + alpha_hard * the mean of
    the start and end cross-entropies + alpha_cos * cosine loss. Evaluation (EM/F1 after post-processing) is
    `QuestionAnsweringModule`'s, on the student.

    The shared distillation arguments are documented by `DistillationMixin`, the others by
    `QuestionAnsweringModule` and `FineTuningModule` (`task_name` is linked from the DataModule).

    Args:
        teacher: a *ForQuestionAnswering directory fine-tuned on SQuAD (e.g. exported by configs/finetune/squad.yaml).
        alpha_ce: weight of the soft term, KL_T on the start and end logits * T^2 (0 switches it off).
        alpha_hard: weight of the gold start/end cross-entropy (0 switches it off).
    """

    teacher_head = "ForQuestionAnswering"

    def __init__(self, teacher: str, student: str | None = None, student_layers: list[int] | None = None,
                 student_architecture: str = "auto", random_init: bool = False, fold_token_type: bool = True,
                 temperature: float = 2.0, alpha_ce: float = 1.0, alpha_hard: float = 1.0, alpha_cos: float = 0.0,
                 cos_layers: str | list[list[int]] = "last", task_name: str = "squad", lr: float = 1e-4,
                 weight_decay: float = 0.01, warmup_ratio: float = 0.05, warmup_steps: int | None = None,
                 betas: tuple[float, float] = (0.9, 0.98), eps: float = 1e-6, n_best_size: int = 20,
                 max_answer_length: int = 30, null_score_diff_threshold: float = 0.0, output_dir: str | None = None):
        if alpha_hard < 0:
            raise ValueError(f"alpha_hard must be >= 0, got {alpha_hard}")
        super().__init__(pretrained=teacher, task_name=task_name, lr=lr, weight_decay=weight_decay,
                         warmup_ratio=warmup_ratio, warmup_steps=warmup_steps, betas=betas, eps=eps,
                         n_best_size=n_best_size, max_answer_length=max_answer_length,
                         null_score_diff_threshold=null_score_diff_threshold, output_dir=output_dir)
        self.save_own_hyperparameters()
        self.init_distillation(teacher, student, student_layers, student_architecture, random_init, fold_token_type,
                               temperature, alpha_ce, alpha_cos, cos_layers, AutoModelForQuestionAnswering, {})

    def distillation_terms(self, batch: dict) -> dict[str, torch.Tensor]:
        student = self.model(**accepted_inputs(self.model, batch), output_hidden_states=True)
        with torch.no_grad():
            teacher = self.teacher(**accepted_inputs(self.teacher, batch), output_hidden_states=True)
        mask = batch["attention_mask"]
        terms = {
            "ce": qa_soft_loss(student.start_logits, student.end_logits, teacher.start_logits, teacher.end_logits,
                               mask, self.temperature),
            "hard": qa_hard_loss(student.start_logits, student.end_logits, batch["start_positions"],
                                 batch["end_positions"]),
            "cos": self.cosine_term(student.hidden_states, teacher.hidden_states, mask),
        }
        return self.weighted_total(terms, {"cos": mask.sum()})  # ce, hard: means over examples (windows)
