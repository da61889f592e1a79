"""Task-specific distillation: a student learns a fine-tuned teacher's GLUE or SQuAD outputs (DistilBERT, section 4).

Loss = alpha_ce * soft loss on the teacher's task logits + alpha_hard * the task's own loss on the gold labels
+ alpha_cos * cosine loss between hidden states. Soft loss: KL at temperature T times T^2 for classification,
MSE for regression (STS-B), the mean of the start and end KL terms for SQuAD. Evaluation, metrics, prediction files
and the model card are the fine-tuning modules' (the student is `self.model`).

Cached teacher logits (`cache_teacher_logits`, on by default): the teacher is frozen and in eval mode (no dropout), so
its logits for a training example are the same in every epoch. Unless the cosine term needs its hidden states
(alpha_cos > 0) or a layer-wise objective its insides (`layerwise`), `TaskDistillationMixin` runs the teacher over the
whole training split ONCE at the start of fit
(inference mode, batches of TEACHER_CACHE_BATCH_SIZE sorted by length: next to no padding,
`LitBertDataModule.train_inference_loader`), keeps its logits as a [n_train, ...] tensor on the device, indexed by the
batches' row column (GLUE: `example_index`, SQuAD: `feature_index`), and the training steps look them up instead of
running the teacher: a step costs the student's forward and backward only. Under DDP each rank computes a 1/W share
of the rows and one all-gather gives every rank the whole table (every rank needs the logits of its own examples, which
change every epoch). The cache is not in checkpoints: a resumed fit builds it again. A run shorter than one epoch
(fast_dev_run, a few max_steps) keeps the per-step teacher forward, which then costs less.
"""
from __future__ import annotations

import time

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch.utilities import rank_zero_info
from transformers import AutoModelForQuestionAnswering, AutoModelForSequenceClassification

from lightning_modules.distill_base import DistillationMixin
from lightning_modules.distill_losses import (classification_hard_loss, qa_hard_loss, qa_soft_loss,
                                              regression_soft_loss, soft_cross_entropy)
from lightning_modules.distributed import gather_rows
from lightning_modules.finetune import SequenceClassificationModule
from lightning_modules.qa import QuestionAnsweringModule
from models.flops import forward_flops
from models.inputs import model_inputs
from models.attention_hooks import QKVRecord
from models.last_layer import trimmable

TEACHER_CACHE_BATCH_SIZE = 256  # rows per teacher forward when caching (no gradients kept: far more than training's)


def first_positions(counts: torch.Tensor, width: int) -> torch.Tensor:
    """[B, width] mask of the first counts[b] positions of each row."""
    return torch.arange(width, device=counts.device) < counts[:, None]


def pack_tokens(values: torch.Tensor, attention_mask: torch.Tensor, width: int) -> torch.Tensor:
    """[B, L, ...] per-token values at the non-padded positions, left-aligned in [B, width, ...] (zeros after): the
    same for an example whichever side and amount of padding its batch had."""
    keep = attention_mask.bool()
    packed = values.new_zeros((values.shape[0], width, *values.shape[2:]))
    packed[first_positions(keep.sum(1), width)] = values[keep]
    return packed


def unpack_tokens(packed: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The inverse of `pack_tokens` for a batch's [B, L] attention mask (zeros at padded positions)."""
    keep = attention_mask.bool()
    values = packed.new_zeros((*keep.shape, *packed.shape[2:]))
    values[keep] = packed[first_positions(keep.sum(1), packed.shape[1])]
    return values


class TaskDistillationMixin(DistillationMixin):
    """The task modules' teacher logits: the teacher's forward at every step, or a cache built once per fit (see the
    module docstring). Subclasses give `teacher_logits_of` and `per_token_logits`."""

    per_token_logits = False  # True: [B, L, ...] logits per token (SQuAD), cached by token (`pack_tokens`)
    teacher_cache: torch.Tensor | None = None  # [n_train, ...] while a fit uses the cache
    teacher_cache_column: str | None = None  # the batches' column that indexes it

    def teacher_logits_of(self, output) -> torch.Tensor:
        """The teacher's logits from its model output, as the loss reads them."""
        raise NotImplementedError

    def cosine_on(self) -> bool:
        """Whether the cosine term counts (it then needs both models' hidden states at every step)."""
        return self.hparams.alpha_cos > 0

    def internals_on(self) -> bool:
        """Whether a term reads the models' insides (hidden states, q/k/v): the cosine or a layer-wise term. Then
        the teacher runs at every step (no cache) and the last layer runs at every position (no fast path)."""
        return self.cosine_on() or self.layerwise_on

    def hidden_states_on(self) -> bool:
        """Whether a term reads the hidden states of every layer (cosine, hidden_mse)."""
        return self.cosine_on() or self.layerwise_needs_hidden()

    def student_forward(self, batch: dict):
        """(the student's output, its q/k/v record): with every hidden state when a term reads them."""
        with self.capture(self.model) as qkv:
            out = self.model(**model_inputs(self.model, batch), output_hidden_states=self.hidden_states_on())
        return out, qkv

    def teacher_outputs(self, batch: dict) -> tuple[torch.Tensor, tuple | None, QKVRecord]:
        """(teacher logits, teacher hidden states when a term reads them else None, its q/k/v record) for a batch."""
        training = self._trainer is None or self.trainer.training  # evaluation batches number another split
        if self.teacher_cache is not None and training:
            logits = self.teacher_cache[batch[self.teacher_cache_column]]
            return (unpack_tokens(logits, batch["attention_mask"]) if self.per_token_logits else logits), None, \
                QKVRecord()
        with torch.no_grad(), self.capture(self.teacher) as qkv:
            out = self.teacher_forward(batch, full=self.internals_on())
        return self.teacher_logits_of(out), out.hidden_states if self.hidden_states_on() else None, qkv

    def teacher_forward(self, batch: dict, full: bool = False):
        """The teacher's model output on a batch (hidden states of every layer when a term reads them; `full`:
        every position of every layer, for the terms that read the models' insides)."""
        return self.teacher(**model_inputs(self.teacher, batch), output_hidden_states=self.hidden_states_on())

    def with_internal_terms(self, terms: dict[str, torch.Tensor], student, student_qkv: QKVRecord,
                            teacher_hidden: tuple | None, teacher_qkv: QKVRecord,
                            attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """`weighted_total` of the terms (means over examples) plus, when on, the cosine term and the layer-wise terms
        (means over tokens). A term switched off is neither computed nor logged: it would need both models' insides."""
        counts = {}
        if self.cosine_on():
            terms["cos"] = self.cosine_term(student.hidden_states, teacher_hidden, attention_mask)
            counts["cos"] = attention_mask.sum()
        layerwise = self.layerwise_terms(student.hidden_states, teacher_hidden, student_qkv, teacher_qkv,
                                         attention_mask)
        terms.update(layerwise)
        counts.update({name: attention_mask.sum() for name in layerwise})
        return self.weighted_total(terms, counts or None)

    def use_teacher_cache(self) -> bool:
        """Cache at this fit: switched on, no term that reads the teacher's insides, a DataModule that numbers its
        training rows, and a run that trains on at least one epoch's examples (a shorter one costs less with the
        per-step forward)."""
        if not self.hparams.cache_teacher_logits or self.internals_on():
            return False
        trainer = self.trainer
        datamodule = getattr(trainer, "datamodule", None)
        if getattr(datamodule, "train_row_column", None) is None or getattr(datamodule, "train_dataset", None) is None:
            rank_zero_info("cache_teacher_logits: the DataModule numbers no training rows; the teacher runs per step")
            return False
        global_batch = datamodule.batch_size * trainer.world_size * trainer.accumulate_grad_batches
        # an epoch drops fewer than one optimiser step's examples (datamodules.samplers.DistributedTrainSampler)
        return (trainer.estimated_stepping_batches + 1) * global_batch > len(datamodule.train_dataset)

    def on_fit_start(self) -> None:
        super().on_fit_start()
        self.teacher_cache = None
        if self.use_teacher_cache():
            self.teacher_cache = self.build_teacher_cache()

    def on_fit_end(self) -> None:
        super().on_fit_end()
        self.teacher_cache = None  # free the memory; a later fit builds it again

    def build_teacher_cache(self) -> torch.Tensor:
        """The teacher's logits for every row of the training split, [n_train, ...] on this module's device."""
        trainer, datamodule = self.trainer, self.trainer.datamodule
        n_rows, column = len(datamodule.train_dataset), datamodule.train_row_column
        start = time.perf_counter()
        loader = datamodule.train_inference_loader(TEACHER_CACHE_BATCH_SIZE, trainer.world_size, trainer.global_rank)
        rows, logits = [], []
        # the precision plugin's context: the same autocast (bf16-mixed, ...) as the training step's teacher forward
        with torch.inference_mode(), trainer.precision_plugin.forward_context():
            for batch in loader:
                batch = move_data_to_device(batch, self.device)
                out = self.teacher_logits_of(self.teacher_forward(batch))
                if self.per_token_logits:
                    out = pack_tokens(out, batch["attention_mask"], datamodule.max_seq_length)
                rows.append(batch[column])
                logits.append(out)
        # torch.cat outside inference mode: ordinary tensors, which the loss may use with autograd
        table = gather_rows(self, torch.cat(rows), torch.cat(logits), n_rows)
        self.teacher_cache_column = column
        rank_zero_info(f"cached the teacher's logits for {n_rows} training rows in {time.perf_counter() - start:.1f} s")
        return table

    def batch_flops(self, batch: dict, stage: str) -> int:
        """As `DistillationMixin.batch_flops`, without the teacher's forward where the training step looks its logits
        up in the cache (the one pass that built it is not a step's work)."""
        flops = super().batch_flops(batch, stage)
        if stage == "train" and self.teacher_cache is not None:
            flops -= self.model_flops(self.teacher, batch)
        return flops


class GLUEDistillationModule(TaskDistillationMixin, SequenceClassificationModule):
    """Distil a teacher fine-tuned on a GLUE-style task (classification or regression) into a student.

    The shared distillation arguments are documented by `DistillationMixin`, the others by
    `SequenceClassificationModule` and `FineTuningModule` (the task facts are linked from the DataModule).
    BERT's pooler initialises an extracted DistilBERT student's pre_classifier.

    Args:
        teacher: a *ForSequenceClassification directory fine-tuned on the task (e.g. exported by the finetune run).
        temperature: softmax temperature of the classification KL term (no effect on regression).
        alpha_ce: weight of the soft term on the teacher's logits (KL * T^2; MSE for regression; 0 switches it off).
        alpha_hard: weight of the gold-label loss (0 switches it off).
        cache_teacher_logits: compute the teacher's logits for the training split once per fit, not at every step
            (used when alpha_cos is 0 and no layer-wise objective is on; see the module docstring).
    """

    teacher_head = "ForSequenceClassification"
    # the parent's __init__ loads the teacher: one whose head was trained on another task cannot teach this one
    pretrained_option, other_task_head = "teacher", "refuse"
    student_auto_class = AutoModelForSequenceClassification
    # the label configuration the parent gave the teacher, for a student loaded from a directory
    student_config_keys = ("num_labels", "problem_type", "id2label", "label2id")

    def __init__(self, teacher: str, student: str | None = None, student_layers: list[int] | str | None = None,
                 student_architecture: str = "auto", random_init: bool = False, fold_token_type: bool = True,
                 temperature: float = 2.0, alpha_ce: float = 1.0, alpha_hard: float = 1.0, alpha_cos: float = 0.0,
                 cos_layers: str | list[list[int]] = "last", cache_teacher_logits: bool = True,
                 student_size: dict[str, int] | None = None, layerwise: dict[str, float] | None = None,
                 layerwise_layers: str | list[list[int]] = "auto", relation_heads: int | None = None,
                 relation_teacher_layer: int = -1,
                 task_name: str = "custom", num_labels: int = 2, label_names: list[str] | None = None,
                 label_display_names: list[str] | None = None, is_regression: bool = False, lr: float = 1e-4,
                 weight_decay: float = 0.01, warmup_ratio: float = 0.05, warmup_steps: int | None = None,
                 betas: tuple[float, float] = (0.9, 0.98), eps: float = 1e-6, classifier_dropout: float | None = None,
                 metric_names: list[str] | None = None, main_metrics: list[str] | None = None,
                 output_dir: str | None = None):
        if alpha_hard < 0:
            raise ValueError(f"alpha_hard must be >= 0, got {alpha_hard}")
        self.set_student_spec(teacher, student, student_layers, student_architecture, random_init, fold_token_type,
                              student_size)
        super().__init__(pretrained=teacher, task_name=task_name, num_labels=num_labels, label_names=label_names,
                         label_display_names=label_display_names, is_regression=is_regression, lr=lr,
                         weight_decay=weight_decay, warmup_ratio=warmup_ratio, warmup_steps=warmup_steps, betas=betas,
                         eps=eps, classifier_dropout=classifier_dropout, metric_names=metric_names,
                         main_metrics=main_metrics, output_dir=output_dir)
        self.save_own_hyperparameters()
        self.init_distillation(temperature, alpha_ce, alpha_cos, cos_layers, layerwise, layerwise_layers,
                               relation_heads, relation_teacher_layer)

    def build_student(self, teacher, spec, **load_kwargs):
        """As the mixin's; a student directory whose head was trained on another task (e.g. distilled on SST-2, now
        RTE) gets a new head."""
        reason = spec.student and self.other_task_reason(spec.student, teacher.config.num_labels,
                                                         teacher.config.id2label)
        if reason:
            load_kwargs["ignore_mismatched_sizes"] = True
        student = super().build_student(teacher, spec, **load_kwargs)
        if reason:
            self.new_head(student, spec.student, reason)
        return student

    def teacher_logits_of(self, output) -> torch.Tensor:
        return output.logits

    def teacher_forward(self, batch: dict, full: bool = False):
        """As the mixin's; unless `full`, the last layer runs at the first token only (`classify`)."""
        if full:
            return super().teacher_forward(batch, full)
        return self.classify(batch, model=self.teacher)

    def distillation_terms(self, batch: dict) -> dict[str, torch.Tensor]:
        if self.internals_on():  # every position of every layer (hidden states, q/k/v)
            student, student_qkv = self.student_forward(batch)
        else:
            student, student_qkv = self.classify(batch), QKVRecord()  # last layer at the first token only
        teacher_logits, teacher_hidden, teacher_qkv = self.teacher_outputs(batch)
        if self.is_regression:
            soft = regression_soft_loss(student.logits, teacher_logits)
        else:
            soft = soft_cross_entropy(student.logits, teacher_logits, self.temperature)
        terms = {"ce": soft, "hard": classification_hard_loss(student.logits, batch["labels"], self.is_regression)}
        return self.with_internal_terms(terms, student, student_qkv, teacher_hidden, teacher_qkv,
                                        batch["attention_mask"])

    def last_layer_rows(self, model, batch: dict) -> int | None:
        """Through `classify` (no hidden states wanted), the last layer runs at the first token of each row."""
        if self.internals_on() or not trimmable(model, first_token_head=True):
            return None
        return int(batch["input_ids"].shape[0])

    def batch_flops(self, batch: dict, stage: str) -> int:
        """Training: as every distillation module. Evaluation: the student through `classify`, its last layer at the
        first token only (models/last_layer.py)."""
        if stage == "train":
            return super().batch_flops(batch, stage)
        batch_size_, seq_len = batch["input_ids"].shape
        rows = batch_size_ if trimmable(self.model, first_token_head=True) else None
        return forward_flops(self.model, batch_size_, seq_len, last_layer_rows=rows)


class QADistillationModule(TaskDistillationMixin, QuestionAnsweringModule):
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
        cache_teacher_logits: compute the teacher's start and end logits of every training window once per fit
            (used when alpha_cos is 0 and no layer-wise objective is on; see the module docstring).
    """

    teacher_head = "ForQuestionAnswering"
    student_auto_class = AutoModelForQuestionAnswering
    per_token_logits = True  # start and end logits at every position of a window

    def __init__(self, teacher: str, student: str | None = None, student_layers: list[int] | str | None = None,
                 student_architecture: str = "auto", random_init: bool = False, fold_token_type: bool = True,
                 temperature: float = 2.0, alpha_ce: float = 1.0, alpha_hard: float = 1.0, alpha_cos: float = 0.0,
                 cos_layers: str | list[list[int]] = "last", cache_teacher_logits: bool = True,
                 student_size: dict[str, int] | None = None, layerwise: dict[str, float] | None = None,
                 layerwise_layers: str | list[list[int]] = "auto", relation_heads: int | None = None,
                 relation_teacher_layer: int = -1,
                 task_name: str = "squad", lr: float = 1e-4,
                 weight_decay: float = 0.01, warmup_ratio: float = 0.05, warmup_steps: int | None = None,
                 betas: tuple[float, float] = (0.9, 0.98), eps: float = 1e-6, n_best_size: int = 20,
                 max_answer_length: int = 30, null_score_diff_threshold: float = 0.0, output_dir: str | None = None):
        if alpha_hard < 0:
            raise ValueError(f"alpha_hard must be >= 0, got {alpha_hard}")
        self.set_student_spec(teacher, student, student_layers, student_architecture, random_init, fold_token_type,
                              student_size)
        super().__init__(pretrained=teacher, task_name=task_name, lr=lr, weight_decay=weight_decay,
                         warmup_ratio=warmup_ratio, warmup_steps=warmup_steps, betas=betas, eps=eps,
                         n_best_size=n_best_size, max_answer_length=max_answer_length,
                         null_score_diff_threshold=null_score_diff_threshold, output_dir=output_dir)
        self.save_own_hyperparameters()
        self.init_distillation(temperature, alpha_ce, alpha_cos, cos_layers, layerwise, layerwise_layers,
                               relation_heads, relation_teacher_layer)

    def teacher_logits_of(self, output) -> torch.Tensor:
        return torch.stack([output.start_logits, output.end_logits], dim=-1)  # [B, L, 2]

    def distillation_terms(self, batch: dict) -> dict[str, torch.Tensor]:
        student, student_qkv = self.student_forward(batch)
        teacher_logits, teacher_hidden, teacher_qkv = self.teacher_outputs(batch)
        mask = batch["attention_mask"]
        terms = {
            "ce": qa_soft_loss(student.start_logits, student.end_logits, teacher_logits[..., 0],
                               teacher_logits[..., 1], mask, self.temperature),
            "hard": qa_hard_loss(student.start_logits, student.end_logits, batch["start_positions"],
                                 batch["end_positions"]),
        }
        # ce, hard: means over windows
        return self.with_internal_terms(terms, student, student_qkv, teacher_hidden, teacher_qkv, mask)
