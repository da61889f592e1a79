"""DistillationMixin: the teacher and the student of every distillation module, and what their losses share.

Composition: a distillation module derives from the module that trains the same kind of model alone (its evaluation,
metrics, prediction files, checkpoints and export apply to the student). That parent's constructor builds its model
with `build_model`; the mixin's `build_model` loads the teacher with the parent's own loader (from `teacher`), keeps
it as `self.teacher` (frozen, eval mode, never in a checkpoint: `HFCheckpointMixin` drops `teacher.` keys) and returns
the student, which the parent stores as `self.model`: the model that trains, validates, is checkpointed under
`model.` and exported. `self.student` is that same model. Training-only modules (the learned projections of the
layer-wise objectives) live in `self.projections`: optimised and checkpointed (`projections.` keys), never exported.

The student: loaded from `student`, built of another size (`student_size`, models/student_size.py) or extracted from
the teacher's layers (models/student.py). Layer-wise objectives: lightning_modules/layerwise.py.
"""
from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lightning_modules.distill_losses import cosine_hidden_loss
from lightning_modules.distributed import global_token_means
from lightning_modules.layerwise import LayerwiseMixin
from lightning_modules.optim import configure_adamw_with_warmup
from lightning_modules.throughput import FlopsPerBatchMixin
from models.flops import TRAINING_FACTOR, forward_flops
from models.pretrained import check_input_length, load_for_training
from models.student import check_shared_vocabulary, extract_student, layer_map_description, resolve_layer_map
from models.student_size import build_sized_student, copied_layers, size_description


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


@dataclass(frozen=True)
class StudentSpec:
    """How to build the student (the distillation module's arguments of the same names)."""

    teacher: str
    student: str | None
    student_layers: list[int] | str | None  # a list, or a named map models/student.py resolves
    student_architecture: str
    random_init: bool
    fold_token_type: bool
    student_size: dict[str, int] | None


class DistillationMixin(LayerwiseMixin, FlopsPerBatchMixin):
    """Teacher, student and loss plumbing shared by the distillation modules. List it FIRST among the bases.

    A subclass's constructor calls `set_student_spec` (before its parent's constructor, whose `build_model` builds
    teacher and student), then its parent's, then `init_distillation`. The arguments below are documented once here
    for every distillation module (`--model.help` reads them).

    Args:
        teacher: the teacher's directory (a model of the module's task, e.g. an HFExport export).
        student: a directory to start the student from (e.g. a general-distilled student); None builds it from
            the teacher (its layers: `models.student.extract_student`; another size: `student_size`).
        student_layers: teacher layers kept (student layer i <- teacher layer student_layers[i]), or a rule: "spread"
            (None: the default; half the layers, first and last kept, 12 -> [0, 2, 4, 7, 9, 11] as the public
            DistilBERT) or "every_other" (half the layers from 0: [0, 2, 4, ...]).
        student_architecture: "auto" (BERT -> DistilBERT, RoBERTa -> RoBERTa), "distilbert" or "same".
        random_init: the student's architecture with fresh weights (ablation).
        fold_token_type: BERT -> DistilBERT: fold token_type_embeddings[0] into the position embeddings.
        student_size: a student of the teacher's class with other sizes, e.g. {num_hidden_layers: 2, hidden_size: 128,
            num_attention_heads: 4, intermediate_size: 512}; copied from teacher layers when only the depth differs,
            else randomly initialised (models/student_size.py).
        temperature: softmax temperature of the KL term (annealed by `callbacks.temperature.TemperatureAnnealing`).
        alpha_ce: weight of the soft (KL * T^2) term on the teacher's outputs (0 switches it off).
        alpha_cos: weight of the cosine term between student and teacher hidden states (0 switches it off).
        cos_layers: "last", "mapped" or a list of [student, teacher] hidden-state index pairs for the cosine term.
        layerwise: layer-wise objectives and their weights, e.g. {hidden_mse: 1.0, attention_mse: 1.0}; names in
            `lightning_modules.layerwise_losses.OBJECTIVES`, each logged as train/loss_<name> (None: none).
        layerwise_layers: "auto" or [student, teacher] hidden-state index pairs (0 = embeddings) for hidden_mse and
            attention_mse; auto: the copied layers of an extracted student, else TinyBERT's uniform map.
        relation_heads: relation heads of qkv_relation_kl (None: the student's attention heads); must divide both
            widths.
        relation_teacher_layer: the teacher layer (0-based, negative from the end) of qkv_relation_kl (MiniLMv2).
    """

    # the head a teacher must have been trained with, per module (checked on `config.architectures`)
    teacher_head: str = ""
    # the Auto class that loads a `student` directory, and the teacher config entries it is loaded with
    student_auto_class: Any = None
    student_config_keys: tuple[str, ...] = ()

    # ---- teacher and student ---------------------------------------------------------------------------------------
    def set_student_spec(self, teacher: str, student: str | None, student_layers: list[int] | str | None,
                         student_architecture: str, random_init: bool, fold_token_type: bool,
                         student_size: dict[str, int] | None) -> None:
        """Record how to build the student; called before the parent's constructor (which calls `build_model`)."""
        if student is not None and (student_layers is not None or random_init or student_size):
            raise ValueError("student_layers, random_init and student_size build a student from the teacher; "
                             "leave them unset when `student` names a directory")
        if student_size and student_architecture not in ("auto", "same"):
            raise ValueError("student_size builds a student of the teacher's class: leave student_architecture "
                             f"'auto' (got {student_architecture!r})")
        # a plain attribute set before nn.Module.__init__: the parent's constructor reads it in build_model
        layers = student_layers if student_layers is None or isinstance(student_layers, str) else list(student_layers)
        self.student_spec = StudentSpec(teacher, student, layers, student_architecture, random_init, fold_token_type,
                                        dict(student_size) if student_size else None)

    def build_model(self, *args, **kwargs):
        """The parent's model: load the teacher with the parent's loader (its `pretrained` is `teacher`), keep it
        frozen as `self.teacher`, and return the student (which the parent stores as `self.model`)."""
        teacher = super().build_model(*args, **kwargs)
        spec = self.student_spec
        architectures = teacher.config.architectures or []
        if architectures and not any(a.endswith(self.teacher_head) for a in architectures):
            raise ValueError(f"the teacher {spec.teacher!r} is a {architectures[0]}, not a *{self.teacher_head} model: "
                             f"give a teacher trained with that head (e.g. a directory exported by the "
                             f"{'MLM pretraining' if self.teacher_head == 'ForMaskedLM' else 'fine-tuning'} run)")
        self.teacher = teacher.eval().requires_grad_(False)
        student = self.build_student(teacher, spec)
        check_shared_vocabulary(teacher, student, spec.teacher, spec.student)
        return student

    def build_student(self, teacher, spec: StudentSpec, **load_kwargs):
        """The student, and `self.layer_map` (teacher layers its layers were built from; None when loaded or of
        another width). `load_kwargs` go to `from_pretrained` when the student is a directory."""
        self.layer_map = None
        if spec.student is not None:
            kwargs = {k: getattr(teacher.config, k) for k in self.student_config_keys}
            return load_for_training(self.student_auto_class, spec.student, **kwargs, **load_kwargs)
        if spec.student_size:
            self.layer_map = copied_layers(teacher, spec.student_size, spec.student_layers)
            return build_sized_student(teacher, spec.student_size, spec.student_layers, spec.random_init).train()
        self.layer_map = resolve_layer_map(teacher.config.num_hidden_layers, spec.student_layers)
        return extract_student(teacher, self.layer_map, spec.random_init, spec.student_architecture,
                               spec.fold_token_type)

    @property
    def student(self) -> nn.Module:
        """The student: the module's `self.model` (trained, validated, checkpointed under `model.`, exported)."""
        return self.model

    def init_distillation(self, temperature: float, alpha_ce: float, alpha_cos: float, cos_layers,
                          layerwise: dict[str, float] | None, layerwise_layers, relation_heads: int | None,
                          relation_teacher_layer: int) -> None:
        """The loss settings; after the parent's constructor (teacher and student exist)."""
        for name, alpha in (("alpha_ce", alpha_ce), ("alpha_cos", alpha_cos)):
            if alpha < 0:
                raise ValueError(f"{name} must be >= 0, got {alpha}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.teacher_path, self.student_path = self.student_spec.teacher, self.student_spec.student
        self.temperature = float(temperature)  # annealed by callbacks.temperature.TemperatureAnnealing
        self.cos_pairs = resolve_cos_pairs(cos_layers, self.layer_map)
        widths = (self.model.config.hidden_size, self.teacher.config.hidden_size)
        if alpha_cos > 0 and widths[0] != widths[1]:
            raise ValueError(f"alpha_cos {alpha_cos}: the cosine term compares hidden states of one width, but the "
                             f"student's is {widths[0]} and the teacher's {widths[1]}; set alpha_cos: 0 and use "
                             "layerwise: {hidden_mse: ...} (through a learned projection)")
        self.init_layerwise(layerwise, layerwise_layers, relation_heads, relation_teacher_layer)

    def save_own_hyperparameters(self) -> None:
        """Keep only this class's constructor arguments in `hparams` (not the parent's, e.g. `pretrained`, which
        would break `load_from_checkpoint`). The parent's constructor already saved them all (LightningCLI's given
        arguments, or every __init__ frame's); call this right after it."""
        own = set(inspect.signature(type(self).__init__).parameters)
        self.remove_ignored_hparams([k for k in self.hparams if k not in own and not k.startswith("_")])

    def configure_optimizers(self) -> dict:
        """AdamW with warmup and decay on what trains: the student and the projections (never the teacher)."""
        hp = self.hparams
        trained = self.model if len(self.projections) == 0 else nn.ModuleList([self.model, self.projections])
        return configure_adamw_with_warmup(self, trained, lr=hp.lr, weight_decay=hp.weight_decay, betas=hp.betas,
                                           eps=hp.eps, warmup_steps=hp.warmup_steps, warmup_ratio=hp.warmup_ratio)

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

    def term_weight(self, name: str) -> float:
        """alpha_<name> (alpha_ce, alpha_mlm, alpha_hard, alpha_cos), or the layer-wise objective's weight."""
        return self.layerwise[name] if name in self.layerwise else self.hparams[f"alpha_{name}"]

    def weighted_total(self, terms: dict[str, torch.Tensor],
                       token_counts: dict[str, int | torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Add `terms["total"]` = sum over the terms of their weight (`term_weight`) times the term.

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
        terms["total"] = sum(self.term_weight(name) * value for name, value in terms.items())
        return terms

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        terms = self.distillation_terms(batch)
        self.log_terms("train", terms, int(batch["input_ids"].shape[0]))
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
        Evaluation (the parent module's, on the student): the student's forward. (The layer-wise objectives' score
        products and projections are not counted.)"""
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
        recipe = "layer-wise objectives " + ", ".join(self.layerwise) if self.layerwise else "DistilBERT recipe"
        info.update(card, description=f"{type(self.model).__name__} distilled{on_task} from the teacher "
                                      f"{self.teacher_path} ({recipe}).")
        return info

    def distillation_card(self) -> dict[str, Any]:
        """Model-card facts of a student: teacher, layer map and distillation recipe."""
        hp = self.hparams
        recipe = {k: hp[k] for k in ("temperature", "alpha_ce", "alpha_cos", "alpha_mlm", "alpha_hard",
                                     "kl_positions", "cos_layers", "random_init", "student_size") if k in hp}
        if self.layerwise:
            recipe["layerwise"] = dict(self.layerwise)
        if self.student_spec.student_size:
            recipe["student"] = size_description(self.teacher, self.model, self.layer_map is not None
                                                 and not self.student_spec.random_init)
        elif self.layer_map:
            recipe["student"] = layer_map_description(self.teacher, self.model, self.layer_map)
            # None chose the default rule: name it (the default changed in issue 13)
            recipe["student_layers"] = hp.get("student_layers") or "spread"
        else:
            recipe["student"] = f"loaded from {self.student_path}"
        info = {"teacher": str(self.teacher_path), "recipe": recipe, "tags": ["distillation"]}
        if self.layer_map is not None:
            info["layer_map"] = list(self.layer_map)
        return info
