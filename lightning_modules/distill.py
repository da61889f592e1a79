"""DistilBERT-style distillation (Sanh et al. 2019): a frozen teacher teaches a smaller student.

    python train.py fit --config configs/distill/roberta_general.yaml     # general distillation on a text corpus
    python train.py fit --config configs/distill/glue.yaml                # task-specific distillation on GLUE

Each distillation module derives from the module that trains the same kind of model alone, and reuses its
evaluation, metrics, prediction files and export:
    MaskedLMDistillationModule       <- lightning_modules.mlm.MaskedLMModule          (this file)
    GLUEDistillationModule           <- lightning_modules.finetune.SequenceClassificationModule (distill_tasks.py)
    QADistillationModule             <- lightning_modules.qa.QuestionAnsweringModule   (distill_tasks.py)
The parent's constructor loads the *teacher* (from `teacher`) as its model; `DistillationMixin` then moves it to
`self.teacher` (frozen, eval mode, no gradients, never in a checkpoint: see `HFCheckpointMixin`) and puts the student
(extracted from the teacher by `models.student.extract_student`, or loaded from `student`) in `self.model`, the model
that trains, validates and is exported. Loss terms are in `distill_losses.py`; `callbacks.temperature` anneals
`self.temperature`.
"""
from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torchmetrics import MeanMetric
from transformers import AutoModelForMaskedLM

from lightning_modules.distill_losses import cosine_hidden_loss, fused_kl_and_mlm, masked_lm_loss, soft_cross_entropy
from lightning_modules.distributed import global_token_means, true_on_any_rank
from lightning_modules.mlm import MaskedLMModule, batch_size
from lightning_modules.throughput import FlopsPerBatchMixin
from models.inputs import model_inputs
from models.flops import TRAINING_FACTOR, forward_flops
from models.mlm import IGNORE_INDEX, lm_head_parts, split_masked_lm
from models.pretrained import check_input_length, load_for_training
from models.student import check_shared_vocabulary, extract_student, layer_map_description, resolve_layer_map

KL_POSITIONS = ("all", "masked")


def resolve_cos_pairs(cos_layers: str | Sequence[Sequence[int]], layer_map: list[int] | None) -> list[tuple[int, int]]:
    """(student, teacher) indices into `hidden_states` (0 = embeddings, i = output of layer i) for the cosine loss.

    "last": the last hidden states of both (DistilBERT). "mapped": every student layer with the teacher layer it was
    copied from (needs an extracted student). A list of [student, teacher] pairs: as given.
    """
    if cos_layers == "last":
        return [(-1, -1)]
    if cos_layers == "mapped":
        if layer_map is None:
            raise ValueError("cos_layers: 'mapped' needs a student extracted from the teacher (student: null)")
        return [(0, 0)] + [(s + 1, t + 1) for s, t in enumerate(layer_map)]
    if isinstance(cos_layers, str):
        raise ValueError(f"cos_layers {cos_layers!r}: expected 'last', 'mapped' or a list of [student, teacher] pairs")
    pairs = [tuple(int(i) for i in pair) for pair in cos_layers]
    if not pairs or any(len(p) != 2 for p in pairs):
        raise ValueError(f"cos_layers {cos_layers}: expected a non-empty list of [student, teacher] index pairs")
    return pairs


class DistillationMixin(FlopsPerBatchMixin):
    """Teacher handling and loss weights shared by the distillation modules. List it FIRST among the bases.

    The subclass's constructor calls its parent's (which loads the teacher as `self.model`), then `init_distillation`.
    The arguments below are documented once here for every distillation module (`--model.help` reads them).

    Args:
        teacher: the teacher's directory (a model of the module's task, e.g. an HFExport export).
        student: a directory to start the student from (e.g. a general-distilled student); None extracts it from
            the teacher (`models.student.extract_student`).
        student_layers: teacher layers kept (student layer i <- teacher layer student_layers[i]), or a rule: "spread"
            (None: the default; half the layers, first and last kept, 12 -> [0, 2, 4, 7, 9, 11] as the public
            DistilBERT) or "every_other" (half the layers from 0: [0, 2, 4, ...]).
        student_architecture: "auto" (BERT -> DistilBERT, RoBERTa -> RoBERTa), "distilbert" or "same".
        random_init: the extracted student's architecture with fresh weights (ablation).
        fold_token_type: BERT -> DistilBERT: fold token_type_embeddings[0] into the position embeddings.
        temperature: softmax temperature of the KL term (annealed by `callbacks.temperature.TemperatureAnnealing`).
        alpha_ce: weight of the soft (KL * T^2) term on the teacher's outputs (0 switches it off).
        alpha_cos: weight of the cosine term between student and teacher hidden states (0 switches it off).
        cos_layers: "last", "mapped" or a list of [student, teacher] hidden-state index pairs for the cosine term.
    """

    # the head a teacher must have been trained with, per module (checked on `config.architectures`)
    teacher_head: str = ""

    def init_distillation(self, teacher: str, student: str | None, student_layers: list[int] | str | None,
                          student_architecture: str, random_init: bool, fold_token_type: bool, temperature: float,
                          alpha_ce: float, alpha_cos: float, cos_layers, auto_class, student_kwargs: dict) -> None:
        for name, alpha in (("alpha_ce", alpha_ce), ("alpha_cos", alpha_cos)):
            if alpha < 0:
                raise ValueError(f"{name} must be >= 0, got {alpha}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        teacher_model = self.model
        architectures = teacher_model.config.architectures or []
        if architectures and not any(a.endswith(self.teacher_head) for a in architectures):
            raise ValueError(f"the teacher {teacher!r} is a {architectures[0]}, not a *{self.teacher_head} model: "
                             f"give a teacher trained with that head (e.g. a directory exported by the "
                             f"{'MLM pretraining' if self.teacher_head == 'ForMaskedLM' else 'fine-tuning'} run)")
        teacher_model.eval().requires_grad_(False)
        if student is not None:
            if student_layers is not None or random_init:
                raise ValueError("student_layers and random_init build a student from the teacher; "
                                 "leave them unset when `student` names a directory")
            student_model = load_for_training(auto_class, student, **student_kwargs)
            self.layer_map = None
        else:
            self.layer_map = resolve_layer_map(teacher_model.config.num_hidden_layers, student_layers)
            student_model = extract_student(teacher_model, self.layer_map, random_init, student_architecture,
                                            fold_token_type)
        check_shared_vocabulary(teacher_model, student_model, teacher, student)
        self.teacher_path, self.student_path = teacher, student
        self.teacher = teacher_model
        self.model = student_model  # replaces the teacher as the model that trains and is exported
        self.temperature = float(temperature)  # annealed by callbacks.temperature.TemperatureAnnealing
        self.cos_pairs = resolve_cos_pairs(cos_layers, self.layer_map)

    def save_own_hyperparameters(self) -> None:
        """Keep only this class's constructor arguments in `hparams` (not the parent's, e.g. `pretrained`, which
        would break `load_from_checkpoint`). The parent's constructor already saved them all (LightningCLI's given
        arguments, or every __init__ frame's); call this right after it."""
        own = set(inspect.signature(type(self).__init__).parameters)
        self.remove_ignored_hparams([k for k in self.hparams if k not in own and not k.startswith("_")])

    # ---- the teacher stays frozen and in eval mode -----------------------------------------------------------------
    def train(self, mode: bool = True):
        """Lightning calls .train() on the whole module (each epoch, after validation): keep the teacher in eval."""
        super().train(mode)
        if getattr(self, "teacher", None) is not None:
            self.teacher.eval()
        return self

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        self.teacher.eval()

    def input_option(self) -> str:
        """The option that chose the student (`self.model`), named by the checks in `setup`."""
        if self.student_path is not None:
            return f"model.init_args.student={self.student_path}"
        return f"model.init_args.teacher={self.teacher_path}"

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        tokenizer = getattr(datamodule, "tokenizer", None)
        if tokenizer is not None:  # before training starts: the data must speak the teacher's vocabulary
            check_shared_vocabulary(self.teacher, self.model, self.teacher_path, self.student_path, tokenizer)
        # the teacher reads the same inputs as the student (checked by the parent's setup)
        check_input_length(self.teacher, getattr(datamodule, "max_seq_length", None),
                           f"model.init_args.teacher={self.teacher_path}")
        super().setup(stage)

    # ---- shared pieces of the loss ---------------------------------------------------------------------------------
    def cosine_term(self, student_hidden: Sequence[torch.Tensor], teacher_hidden: Sequence[torch.Tensor],
                    attention_mask: torch.Tensor) -> torch.Tensor:
        pairs = self.cos_pairs
        return cosine_hidden_loss([student_hidden[s] for s, _ in pairs], [teacher_hidden[t] for _, t in pairs],
                                  attention_mask)

    @staticmethod
    def term_key(stage: str, name: str) -> str:
        """`<stage>/loss` for the total, `<stage>/loss_<name>` (loss_ce, loss_cos, ...) for a term."""
        return f"{stage}/loss" if name == "total" else f"{stage}/loss_{name}"

    def log_terms(self, stage: str, terms: dict[str, torch.Tensor], batch_size: int) -> None:
        """Log every loss term of a training step separately (`term_key`), synced: under DDP the mean over ranks."""
        for name, value in terms.items():
            self.log(self.term_key(stage, name), value.detach(), prog_bar=name == "total", batch_size=batch_size,
                     on_step=True, on_epoch=False, add_dataloader_idx=False, sync_dist=True)

    def weighted_total(self, terms: dict[str, torch.Tensor],
                       token_counts: dict[str, int | torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Add `terms["total"]` = sum over the terms of `alpha_<name> * term` (alpha_ce, alpha_mlm, alpha_hard, ...).

        `token_counts` names the terms that are means over tokens/positions of the local batch, with their counts:
        in the training loop these are first rescaled by `lightning_modules.distributed.global_token_means`, so that
        under DDP they are means over the tokens of all ranks' batches (one process: unchanged). Terms averaged over
        examples need nothing: every rank's training batch has the same number of examples.
        """
        trainer = self._trainer
        if token_counts and trainer is not None and trainer.training:
            names = list(token_counts)
            scaled = global_token_means(self, [terms[n] for n in names], [token_counts[n] for n in names])
            terms.update(zip(names, scaled))
        terms["total"] = sum(self.hparams[f"alpha_{name}"] * value for name, value in terms.items())
        return terms

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        terms = self.distillation_terms(batch)
        self.log_terms("train", terms, batch_size(batch))
        return terms["total"]

    # ---- FLOPs per batch (ThroughputMonitor: flops/s and MFU; see lightning_modules/throughput.py) ------------
    def distillation_head_positions(self, batch: dict) -> int | None:
        """Positions where `distillation_terms` runs the MLM heads (None: the model's own head, task modules)."""
        return None

    def last_layer_rows(self, model, batch: dict) -> int | None:
        """Query rows `model`'s last layer computes in `distillation_terms` (None: every position; see
        models/last_layer.py)."""
        return None

    def model_flops(self, model, batch: dict) -> int:
        """Forward FLOPs of `model` (student or teacher) in `distillation_terms` on this batch."""
        batch_size_, seq_len = batch["input_ids"].shape
        return forward_flops(model, batch_size_, seq_len, self.distillation_head_positions(batch),
                             self.last_layer_rows(model, batch))

    def distillation_flops(self, batch: dict) -> int:
        """Forward FLOPs of `distillation_terms`: the student's forward plus the frozen teacher's (both [B, L])."""
        return self.model_flops(self.model, batch) + self.model_flops(self.teacher, batch)

    def batch_flops(self, batch: dict, stage: str) -> int:
        """Training: the student's forward and backward (3x its forward) plus the teacher's forward (1x, no backward).
        Evaluation (the parent module's, on the student): the student's forward."""
        student = self.model_flops(self.model, batch)
        if stage == "train":
            return TRAINING_FACTOR * student + self.model_flops(self.teacher, batch)
        return student

    def model_card_info(self) -> dict[str, Any]:
        """The parent module's model card, with the student's teacher, layer map and distillation recipe merged in."""
        info = super().model_card_info()
        card = self.distillation_card()
        info["recipe"] = {**info.get("recipe", {}), **card.pop("recipe")}
        info["recipe"].pop("base_model", None)  # the fine-tuning module's name for the teacher
        task = getattr(self, "task_name", None)
        on_task = f" on {task}" if task else ""
        info.update(card, description=f"{type(self.model).__name__} distilled{on_task} from the teacher "
                                      f"{self.teacher_path} (DistilBERT recipe).")
        return info

    def distillation_card(self) -> dict[str, Any]:
        """Model-card facts of a student: teacher, layer map and distillation recipe."""
        hp = self.hparams
        recipe = {k: hp[k] for k in ("temperature", "alpha_ce", "alpha_cos", "alpha_mlm", "alpha_hard",
                                     "kl_positions", "cos_layers", "random_init") if k in hp}
        recipe["student"] = layer_map_description(self.teacher, self.model, self.layer_map) if self.layer_map \
            else f"loaded from {self.student_path}"
        if self.layer_map is not None:  # None chose the default rule: name it (the default changed in issue 13)
            recipe["student_layers"] = hp.get("student_layers") or "spread"
        info = {"teacher": str(self.teacher_path), "recipe": recipe, "tags": ["distillation"]}
        if self.layer_map is not None:
            info["layer_map"] = list(self.layer_map)
        return info


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

    def __init__(self, teacher: str, student: str | None = None, student_layers: list[int] | str | None = None,
                 student_architecture: str = "auto", random_init: bool = False, fold_token_type: bool = True,
                 temperature: float = 2.0, alpha_ce: float = 5.0, alpha_mlm: float = 2.0, alpha_cos: float = 1.0,
                 kl_positions: str = "all", cos_layers: str | list[list[int]] = "last", lr: float = 5e-4,
                 weight_decay: float = 0.01, betas: tuple[float, float] = (0.9, 0.98), eps: float = 1e-6,
                 warmup_steps: int | None = None, warmup_ratio: float | None = 0.05, sparse_prediction: bool = True,
                 fused_lm_loss: bool = True, vocab_size: int | None = None, pad_token_id: int | None = None):
        if kl_positions not in KL_POSITIONS:
            raise ValueError(f"kl_positions {kl_positions!r}: expected one of {KL_POSITIONS}")
        if alpha_mlm < 0:
            raise ValueError(f"alpha_mlm must be >= 0, got {alpha_mlm}")
        super().__init__(vocab_size=vocab_size, pad_token_id=pad_token_id, pretrained=teacher, lr=lr,
                         weight_decay=weight_decay, betas=betas, eps=eps, warmup_steps=warmup_steps,
                         warmup_ratio=warmup_ratio, sparse_prediction=sparse_prediction)
        self.save_own_hyperparameters()
        self.init_distillation(teacher, student, student_layers, student_architecture, random_init, fold_token_type,
                               temperature, alpha_ce, alpha_cos, cos_layers, AutoModelForMaskedLM, {})
        # validation means of the terms over all their tokens (independent of batching, exact across processes)
        self.val_distill_means = nn.ModuleDict({name: MeanMetric() for name in ("ce", "mlm", "cos")})
        self.fused_workspace: dict = {}  # fused_kl_and_mlm's buffers, reused from step to step (not in checkpoints)

    @staticmethod
    def encode(model, batch: dict, hidden_states: bool) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """(last hidden states [B, L, H], all hidden states or (last,)) of a masked LM's encoder."""
        encoder, _ = split_masked_lm(model)
        out = encoder(**model_inputs(encoder, batch), output_hidden_states=hidden_states, return_dict=True)
        return out.last_hidden_state, out.hidden_states if hidden_states else (out.last_hidden_state,)

    def selected_outputs(self, model, batch: dict, selected: torch.Tensor, hidden_states: bool):
        """(logits [n_selected, V] at the `selected` [B, L] positions, hidden states tuple or (last,))."""
        last, hidden = self.encode(model, batch, hidden_states)
        return split_masked_lm(model)[1](last[selected]), hidden

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

    def distillation_terms(self, batch: dict) -> dict[str, torch.Tensor]:
        return self.weighted_total(*self.terms_and_counts(batch))

    def terms_and_counts(self, batch: dict) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """The KL, MLM and cosine terms (token means) and the number of tokens/positions each averages over."""
        labels, attention_mask = batch["labels"], batch["attention_mask"]
        masked = labels != IGNORE_INDEX  # [B, L]
        selected = attention_mask.bool() if self.hparams.kl_positions == "all" else masked
        hidden = self.cos_pairs != [(-1, -1)]  # all hidden states only when layers other than the last are compared
        parts = self.fused_head_parts()
        if parts is None:  # the heads' logits [n_selected, V], then the loss functions
            student_logits, student_hidden = self.selected_outputs(self.model, batch, selected, hidden)
            with torch.no_grad():
                teacher_logits, teacher_hidden = self.selected_outputs(self.teacher, batch, selected, hidden)
            ce = soft_cross_entropy(student_logits, teacher_logits, self.temperature)
            mlm = masked_lm_loss(student_logits, labels[selected])  # -100 rows (unmasked) are skipped
        else:  # the heads' features [n_selected, H]; the projections and both terms chunk by chunk
            (student_transform, student_proj), (teacher_transform, teacher_proj) = parts
            student_last, student_hidden = self.encode(self.model, batch, hidden)
            with torch.no_grad():
                teacher_last, teacher_hidden = self.encode(self.teacher, batch, hidden)
                teacher_x = teacher_transform(teacher_last[selected])
            ce, mlm = fused_kl_and_mlm(student_transform(student_last[selected]), student_proj, teacher_x,
                                       teacher_proj, labels[selected], self.temperature,
                                       workspace=self.fused_workspace)
        terms = {"ce": ce, "mlm": mlm, "cos": self.cosine_term(student_hidden, teacher_hidden, attention_mask)}
        counts = {"ce": selected.sum(), "mlm": (labels[selected] != IGNORE_INDEX).sum(), "cos": attention_mask.sum()}
        return terms, counts

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
        """Log `val_distill/loss_{ce,mlm,cos}` (means over the tokens of the whole validation run, synced across
        processes) and `val_distill/loss` = the alpha-weighted sum of those."""
        super().on_validation_epoch_end()
        means = self.val_distill_means
        if true_on_any_rank(self, means["ce"].update_count > 0):  # decided together: compute() is a collective
            values = {name: metric.compute() for name, metric in means.items()}
            values["total"] = sum(self.hparams[f"alpha_{name}"] * value for name, value in values.items())
            for name, value in values.items():
                self.log(self.term_key("val_distill", name), value, add_dataloader_idx=False)
        for metric in means.values():
            metric.reset()

    # ---- FLOPs per batch ---------------------------------------------------------------------------------------
    def distillation_head_positions(self, batch: dict) -> int:
        """The KL term's positions: every non-padded one (kl_positions "all") or the masked ones."""
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
