"""DistilBERT-style distillation (Sanh et al. 2019): a frozen teacher teaches a smaller student.

    python train.py fit --config configs/distill/roberta_general.yaml     # general distillation on a text corpus
    python train.py fit --config configs/distill/glue.yaml                # task-specific distillation on GLUE

Each distillation module derives from the module that trains the same kind of model alone, and reuses its
evaluation, metrics, prediction files and export:
    MaskedLMDistillationModule       <- lightning_modules.mlm.MaskedLMModule          (this file)
    GLUEDistillationModule           <- lightning_modules.finetune.SequenceClassificationModule (distill_tasks.py)
    QADistillationModule             <- lightning_modules.qa.QuestionAnsweringModule   (distill_tasks.py)
The teacher and the student are composed by `DistillationMixin` (lightning_modules/distill_base.py): the parent's
constructor builds its model through `build_model`, which loads the teacher (`self.teacher`: frozen, eval mode, no
gradients, never in a checkpoint) and returns the student (`self.model`, also `self.student`: extracted from the
teacher's layers, built of another size, or loaded from `student`), the model that trains, validates and is exported.
Loss terms are in `distill_losses.py`, the layer-wise objectives (TinyBERT, MiniLM, MiniLMv2) in `layerwise.py` and
`layerwise_losses.py`; `callbacks.temperature` anneals `self.temperature`.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchmetrics import MeanMetric
from transformers import AutoModelForMaskedLM

from lightning_modules.distill_base import DistillationMixin, resolve_cos_pairs
from lightning_modules.distill_losses import fused_kl_and_mlm, masked_lm_loss, soft_cross_entropy
from lightning_modules.distributed import true_on_any_rank
from lightning_modules.mlm import MaskedLMModule
from models.inputs import model_inputs
from models.mlm import IGNORE_INDEX, lm_head_parts, split_masked_lm

KL_POSITIONS = ("all", "masked")

__all__ = ["DistillationMixin", "MaskedLMDistillationModule", "resolve_cos_pairs"]


class MaskedLMDistillationModule(DistillationMixin, MaskedLMModule):
    """General distillation on a masked-LM corpus: loss = alpha_ce * KL_T * T^2 + alpha_mlm * MLM + alpha_cos * cos.

    Batches come masked from `datamodules.text.TextCorpusDataModule` (`labels` = -100 where not masked).

    The shared distillation arguments are documented by `DistillationMixin`, the optimiser's and the data facts
    (vocab_size, pad_token_id) by `MaskedLMModule`.

    Args:
        teacher: a masked-LM directory (e.g. exported by MLM pretraining).
        student: a masked-LM directory to continue distilling; None extracts the student from the teacher.
        alpha_mlm: weight of the MLM cross-entropy term on the gold tokens (0 switches it off).
        kl_positions: "all" non-padded positions (DistilBERT) or only the "masked" ones for the KL term.
        sparse_prediction: validate the student's LM head at masked positions only (MaskedLMModule's switch).
        fused_lm_loss: KL and MLM terms by `distill_losses.fused_kl_and_mlm` (chunks of positions, no [n, V] logits
            kept; same values and gradients); False: the heads' full logits and the plain loss functions.
        vocab_size / pad_token_id: linked from the DataModule.
    """

    teacher_head = "ForMaskedLM"
    student_auto_class = AutoModelForMaskedLM

    def __init__(self, teacher: str, student: str | None = None, student_layers: list[int] | str | None = None,
                 student_architecture: str = "auto", random_init: bool = False, fold_token_type: bool = True,
                 temperature: float = 2.0, alpha_ce: float = 5.0, alpha_mlm: float = 2.0, alpha_cos: float = 1.0,
                 kl_positions: str = "all", cos_layers: str | list[list[int]] = "last",
                 student_size: dict[str, int] | None = None, layerwise: dict[str, float] | None = None,
                 layerwise_layers: str | list[list[int]] = "auto", relation_heads: int | None = None,
                 relation_teacher_layer: int = -1, lr: float = 5e-4, weight_decay: float = 0.01,
                 betas: tuple[float, float] = (0.9, 0.98), eps: float = 1e-6,
                 warmup_steps: int | None = None, warmup_ratio: float | None = 0.05, sparse_prediction: bool = True,
                 fused_lm_loss: bool = True, vocab_size: int | None = None, pad_token_id: int | None = None):
        if kl_positions not in KL_POSITIONS:
            raise ValueError(f"kl_positions {kl_positions!r}: expected one of {KL_POSITIONS}")
        if alpha_mlm < 0:
            raise ValueError(f"alpha_mlm must be >= 0, got {alpha_mlm}")
        self.set_student_spec(teacher, student, student_layers, student_architecture, random_init, fold_token_type,
                              student_size)
        super().__init__(vocab_size=vocab_size, pad_token_id=pad_token_id, pretrained=teacher, lr=lr,
                         weight_decay=weight_decay, betas=betas, eps=eps, warmup_steps=warmup_steps,
                         warmup_ratio=warmup_ratio, sparse_prediction=sparse_prediction)
        self.save_own_hyperparameters()
        self.init_distillation(temperature, alpha_ce, alpha_cos, cos_layers, layerwise, layerwise_layers,
                               relation_heads, relation_teacher_layer)
        # validation means of the terms over all their tokens (independent of batching, exact across processes)
        self.val_distill_means = nn.ModuleDict({name: MeanMetric() for name in self.term_names()})
        self.fused_workspace: dict = {}  # fused_kl_and_mlm's buffers, reused from step to step (not in checkpoints)

    def check_lm_heads(self) -> None:
        """Before training (called by MaskedLMModule's constructor): the encoders and LM heads of both models, which
        every step runs apart (`split_masked_lm`), whatever `sparse_prediction` says."""
        for model in (self.teacher, self.model):
            split_masked_lm(model)

    @staticmethod
    def encode(model, batch: dict, hidden_states: bool) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """(last hidden states [B, L, H], all hidden states or (last,)) of a masked LM's encoder."""
        encoder, _ = split_masked_lm(model)
        out = encoder(**model_inputs(encoder, batch), output_hidden_states=hidden_states, return_dict=True)
        return out.last_hidden_state, out.hidden_states if hidden_states else (out.last_hidden_state,)

    def fused_head_parts(self) -> tuple | None:
        """((student transform, projection), (teacher transform, projection)) when `fused_lm_loss` applies: both
        heads known to `models.mlm.lm_head_parts`, with plain (not sharded, e.g. FSDP's DTensor) projections."""
        if not self.hparams.fused_lm_loss:
            return None
        parts = (lm_head_parts(split_masked_lm(self.model)[1]), lm_head_parts(split_masked_lm(self.teacher)[1]))
        if None in parts or any(type(p) not in (torch.Tensor, nn.Parameter)
                                for _, proj in parts for p in proj.parameters()):
            return None
        return parts

    def lm_terms_on(self) -> bool:
        """Whether the KL and MLM terms (the LM heads of both models) are computed: off when both weights are 0
        (e.g. TinyBERT's or MiniLM's general distillation, layer-wise objectives only)."""
        return self.hparams.alpha_ce > 0 or self.hparams.alpha_mlm > 0

    def cosine_computed(self) -> bool:
        """Whether the cosine term is computed (and logged): switched on, or free to watch (the widths match)."""
        return self.hparams.alpha_cos > 0 or self.model.config.hidden_size == self.teacher.config.hidden_size

    def term_names(self) -> list[str]:
        """The terms `terms_and_counts` returns, in order."""
        names = ["ce", "mlm"] if self.lm_terms_on() else []
        return names + (["cos"] if self.cosine_computed() else []) + list(self.layerwise)

    def distillation_terms(self, batch: dict) -> dict[str, torch.Tensor]:
        return self.weighted_total(*self.terms_and_counts(batch))

    def terms_and_counts(self, batch: dict) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """The KL, MLM, cosine and layer-wise terms (token means) and the number of tokens/positions each averages
        over."""
        labels, attention_mask = batch["labels"], batch["attention_mask"]
        masked = labels != IGNORE_INDEX  # [B, L]
        selected = attention_mask.bool() if self.hparams.kl_positions == "all" else masked
        # all hidden states only when layers other than the last are compared
        hidden = self.cos_pairs != [(-1, -1)] or self.layerwise_needs_hidden()
        with self.capture(self.model) as student_qkv:  # the layers' q/k/v when a layer-wise objective reads them
            student_last, student_hidden = self.encode(self.model, batch, hidden)
        with torch.no_grad(), self.capture(self.teacher) as teacher_qkv:
            teacher_last, teacher_hidden = self.encode(self.teacher, batch, hidden)
        terms, counts = {}, {}
        if self.lm_terms_on():
            terms["ce"], terms["mlm"] = self.lm_terms(student_last, teacher_last, labels, selected)
            counts.update(ce=selected.sum(), mlm=(labels[selected] != IGNORE_INDEX).sum())
        if self.cosine_computed():
            terms["cos"] = self.cosine_term(student_hidden, teacher_hidden, attention_mask)
            counts["cos"] = attention_mask.sum()
        layerwise = self.layerwise_terms(student_hidden, teacher_hidden, student_qkv, teacher_qkv, attention_mask)
        terms.update(layerwise)
        counts.update({name: attention_mask.sum() for name in layerwise})  # token means (DDP: global_token_means)
        return terms, counts

    def lm_terms(self, student_last: torch.Tensor, teacher_last: torch.Tensor, labels: torch.Tensor,
                 selected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(KL at T times T^2, MLM cross-entropy) from the last hidden states [B, L, H] at the `selected` [B, L]
        positions."""
        parts = self.fused_head_parts()
        if parts is None:  # the heads' logits [n_selected, V], then the loss functions
            student_logits = split_masked_lm(self.model)[1](student_last[selected])
            with torch.no_grad():
                teacher_logits = split_masked_lm(self.teacher)[1](teacher_last[selected])
            ce = soft_cross_entropy(student_logits, teacher_logits, self.temperature)
            mlm = masked_lm_loss(student_logits, labels[selected])  # -100 rows (unmasked) are skipped
        else:  # the heads' features [n_selected, H]; the projections and both terms chunk by chunk
            (student_transform, student_proj), (teacher_transform, teacher_proj) = parts
            with torch.no_grad():
                teacher_x = teacher_transform(teacher_last[selected])
            ce, mlm = fused_kl_and_mlm(student_transform(student_last[selected]), student_proj, teacher_x,
                                       teacher_proj, labels[selected], self.temperature,
                                       workspace=self.fused_workspace)
        return ce, mlm

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        super().validation_step(batch, batch_idx)  # the student's MLM loss, perplexity and accuracy
        terms, counts = self.terms_and_counts(batch)
        for name, value in terms.items():  # each term weighted by its own token count
            self.val_distill_means[name].update(value.detach(), weight=counts[name])

    def on_validation_epoch_start(self) -> None:
        super().on_validation_epoch_start()
        for metric in self.val_distill_means.values():
            metric.reset()

    def on_validation_epoch_end(self) -> None:
        """Log `val_distill/loss_<term>` (ce, mlm, cos, layer-wise: means over the tokens of the whole validation run,
        synced across processes) and `val_distill/loss` = the weighted sum of those."""
        super().on_validation_epoch_end()
        means = self.val_distill_means
        first = next(iter(means.values()), None)
        # decided together: compute() is a collective
        if first is not None and true_on_any_rank(self, first.update_count > 0):
            values = {name: metric.compute() for name, metric in means.items()}
            values["total"] = sum(self.term_weight(name) * value for name, value in values.items())
            for name, value in values.items():
                self.log(self.term_key("val_distill", name), value, add_dataloader_idx=False)
        for metric in means.values():
            metric.reset()

    # ---- FLOPs per batch ---------------------------------------------------------------------------------------
    def distillation_head_positions(self, batch: dict) -> int:
        """The KL term's positions: every non-padded one (kl_positions "all") or the masked ones (0: no LM term)."""
        if not self.lm_terms_on():
            return 0
        if self.hparams.kl_positions == "all":
            return int(batch["attention_mask"].sum())
        return int((batch["labels"] != IGNORE_INDEX).sum())

    def batch_flops(self, batch: dict, stage: str) -> int:
        """Training: as every distillation module. Validation: the student's own MLM evaluation (MaskedLMModule's
        sparse or dense head) plus `distillation_terms` (student and teacher forwards)."""
        if stage == "train":
            return super().batch_flops(batch, stage)
        return MaskedLMModule.batch_flops(self, batch, stage) + self.distillation_flops(batch)

    def model_card_info(self) -> dict[str, Any]:
        return {**super().model_card_info(), "task": "masked language modelling (distilled)"}
