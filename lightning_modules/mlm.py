"""MaskedLMModule: masked language model pretraining as RoBERTa prescribes (Liu et al. 2019).

The recipe, and where each part lives:
- masking (15%, 80/10/10, dynamic or static, whole-word, DistilBERT smoothing): `datamodules.masking.MLMMasker`,
  applied per batch on the device by `datamodules.text.TextCorpusDataModule` (FULL-SENTENCES / DOC-SENTENCES packing);
- no next-sentence prediction by default: the loss is the MLM loss only; `sentence_objective: nsp | sop` adds BERT's
  next-sentence or ALBERT's sentence-order prediction (a binary `models.mlm.SentenceHead` on the first token, kept
  out of `self.model`, so exports stay plain masked LMs) on the pairs `TextCorpusDataModule` builds
  (`packing: segment_pair | sentence_pair` with the same `sentence_objective`);
- AdamW (0.9, 0.98), eps 1e-6, weight decay 0.01 except biases/LayerNorm, linear warmup then linear decay per
  optimiser step: `lightning_modules.optim.configure_adamw_with_warmup`; large batches by the Trainer's
  `accumulate_grad_batches`, gradient clipping off unless the Trainer's `gradient_clip_val` is set;
- sparse prediction (LM head and loss at the masked positions only): `models.mlm.sparse_mlm_logits`.

Any Hugging Face masked LM given as a directory (`pretrained`) trains the same way (BERT, RoBERTa, DistilBERT).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy
from torchmetrics.text import Perplexity

from datamodules.tasks import hub_dataset_of_name
from lightning_modules.distributed import global_token_mean, true_on_any_rank
from lightning_modules.hf_checkpoint import HFCheckpointMixin
from lightning_modules.optim import configure_adamw_with_warmup
from lightning_modules.throughput import FlopsPerBatchMixin
from models.flops import TRAINING_FACTOR, forward_flops
from models.inputs import model_inputs
from models.last_layer import trimmable
from models.mlm import (IGNORE_INDEX, SentenceHead, build_masked_lm, sparse_mlm_logits, split_masked_lm,
                        sparse_mlm_logits_and_first_token)
from models.pretrained import check_data_fits_model, max_input_length


def batch_size(batch: dict) -> int:
    """Sequences in a batch (for Lightning's ThroughputMonitor `batch_size_fn`)."""
    return int(batch["input_ids"].shape[0])


def non_pad_tokens(batch: dict) -> int:
    """Real (non-padding) tokens in a batch (ThroughputMonitor `length_fn`: logs tokens per second)."""
    return int(batch["attention_mask"].sum())


def masked_tokens(batch: dict) -> int:
    """Positions with an MLM target in a batch (labels != -100): where the sparse head runs."""
    return int((batch["labels"] != IGNORE_INDEX).sum())


class MaskedLMModule(HFCheckpointMixin, FlopsPerBatchMixin, pl.LightningModule):
    """Pretrain a masked LM (`self.model`, a Hugging Face `*ForMaskedLM`) with the MLM objective only.

    Args:
        vocab_size: the vocabulary size (`len(tokenizer)`), linked from the DataModule by train.py.
        pad_token_id: the tokenizer's padding id, linked from the DataModule by train.py.
        pretrained: a model directory (HF or exported by litbert) to continue training; None builds `arch` from the
            sizes below, randomly initialised.
        arch: "roberta" (default), "bert" or "distilbert" when building from a size.
        hidden_size: model width when building from a size.
        num_hidden_layers: encoder layers when building from a size.
        num_attention_heads: attention heads per layer when building from a size.
        intermediate_size: feed-forward width when building from a size.
        hidden_dropout_prob: dropout on embeddings and hidden states when building from a size.
        attention_probs_dropout_prob: dropout on attention probabilities when building from a size.
        max_seq_length: longest input; RoBERTa gets max_seq_length + pad_token_id + 1 position embeddings.
        bos_token_id: written into the config (RoBERTa's <s> = 0 by default).
        eos_token_id: written into the config (RoBERTa's </s> = 2 by default).
        lr: AdamW's peak learning rate (after warmup).
        weight_decay: AdamW's decoupled weight decay (none on biases and LayerNorm weights).
        betas: AdamW's (beta1, beta2).
        eps: AdamW's epsilon.
        warmup_steps: linear warmup over this many optimiser steps (wins over warmup_ratio), then linear decay to 0.
        warmup_ratio: linear warmup over this fraction of the optimiser steps (when warmup_steps is None).
        sparse_prediction: LM head only at masked positions (True) or over every position (False, for comparison).
        sentence_objective: "none" (MLM only, RoBERTa), "nsp" (next-sentence) or "sop" (sentence-order prediction)
            on the first token; the data's `sentence_objective` must be the same (its batches carry the labels).
        sentence_loss_weight: weight of the sentence objective's loss, added to the MLM loss.
    """

    def __init__(
        self,
        vocab_size: int | None = None,
        pad_token_id: int | None = None,
        pretrained: str | None = None,
        arch: str = "roberta",
        hidden_size: int = 768,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        intermediate_size: int = 3072,
        hidden_dropout_prob: float = 0.1,
        attention_probs_dropout_prob: float = 0.1,
        max_seq_length: int = 512,
        bos_token_id: int = 0,
        eos_token_id: int = 2,
        lr: float = 6e-4,
        weight_decay: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.98),
        eps: float = 1e-6,
        warmup_steps: int | None = None,
        warmup_ratio: float | None = 0.06,
        sparse_prediction: bool = True,
        sentence_objective: Literal["none", "nsp", "sop"] = "none",
        sentence_loss_weight: float = 1.0,
    ):
        super().__init__()
        self.save_hyperparameters()
        size = dict(hidden_size=hidden_size, num_hidden_layers=num_hidden_layers,
                    num_attention_heads=num_attention_heads, intermediate_size=intermediate_size,
                    hidden_dropout_prob=hidden_dropout_prob, attention_probs_dropout_prob=attention_probs_dropout_prob,
                    max_seq_length=max_seq_length, bos_token_id=bos_token_id, eos_token_id=eos_token_id)
        self.model = self.build_model(pretrained, arch=arch, vocab_size=vocab_size, pad_token_id=pad_token_id, **size)
        self.check_lm_heads()
        self.val_loss = MeanMetric()  # mean cross-entropy per masked token over the whole validation set
        self.val_perplexity = Perplexity(ignore_index=IGNORE_INDEX)
        self.val_accuracy = MulticlassAccuracy(num_classes=self.model.config.vocab_size, average="micro",
                                               ignore_index=IGNORE_INDEX)
        self.final_metrics: dict[str, float] = {}
        if sentence_objective not in ("none", "nsp", "sop"):
            raise ValueError(f"sentence_objective must be 'none', 'nsp' or 'sop', got {sentence_objective!r}")
        self.sentence_head = None  # not part of self.model: the export (HFExport, convert_checkpoint) leaves it out
        if sentence_objective != "none":
            config = self.model.config
            self.sentence_head = SentenceHead(config.hidden_size, getattr(config, "hidden_dropout_prob", 0.1))
            self.val_sentence_loss = MeanMetric()  # mean cross-entropy per pair over the validation set
            self.val_sentence_accuracy = MulticlassAccuracy(num_classes=2, average="micro")

    def build_model(self, pretrained: str | None, **kwargs):
        """The model this module trains and exports (`models.mlm.build_masked_lm`); distillation builds its student
        here (lightning_modules/distill_base.py)."""
        return build_masked_lm(pretrained, **kwargs)

    def check_lm_heads(self) -> None:
        """Before training: sparse prediction needs an LM head `models.mlm.split_masked_lm` knows; one error line."""
        if self.hparams.sparse_prediction:
            try:
                split_masked_lm(self.model)
            except TypeError as error:
                raise TypeError(f"{error}; model.init_args.sparse_prediction=false runs the model's own head") \
                    from None

    # ---- checks that need the DataModule ---------------------------------------------------------------------------
    def max_input_length(self) -> int:
        """Longest input the position embeddings cover (RoBERTa's positions start at pad_token_id + 1)."""
        return max_input_length(self.model.config)

    def input_option(self) -> str:
        """The option that decided the model's size, named by the checks in `setup`."""
        pretrained = self.hparams.get("pretrained")
        if pretrained:
            return f"model.init_args.pretrained={pretrained}"
        return f"model.init_args.max_seq_length={self.hparams.get('max_seq_length')}"

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        built = self.hparams.get("pretrained") is None and "max_seq_length" in self.hparams
        remedy = (f"raise model.init_args.max_seq_length or lower data.init_args.max_seq_length to at most "
                  f"{self.max_input_length()}") if built else None
        check_data_fits_model(self.model, datamodule, self.input_option(), remedy)
        data_objective = getattr(datamodule, "sentence_objective", None)
        if data_objective is not None and data_objective != self.hparams.get("sentence_objective", "none"):
            raise ValueError(f"model.init_args.sentence_objective={self.hparams.get('sentence_objective', 'none')} "
                             f"but data.init_args.sentence_objective={data_objective}: set both to the same value "
                             f"(the DataModule builds the pairs and their labels, the module the head and loss)")

    # ---- forward -----------------------------------------------------------------------------------------------
    def masked_logits(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits [n_masked, V], targets [n_masked]) for a masked batch."""
        return self.masked_and_sentence_logits(batch)[:2]

    def masked_and_sentence_logits(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(MLM logits [n_masked, V], targets [n_masked], sentence logits [B, 2] or None without a sentence head)."""
        inputs = model_inputs(self.model, batch)
        if getattr(self.model.config, "type_vocab_size", 2) < 2:  # RoBERTa: one segment type; BERT pairs' 0/1 ids
            inputs.pop("token_type_ids", None)  # would index past its one embedding (the separators mark A and B)
        if self.sentence_head is not None and "sentence_label" not in batch:
            raise ValueError(f"model.init_args.sentence_objective={self.hparams.sentence_objective} needs batches "
                             f"with sentence_label: set data.init_args.packing segment_pair (or sentence_pair) and "
                             f"data.init_args.sentence_objective {self.hparams.sentence_objective}")
        if self.hparams.sparse_prediction:
            if self.sentence_head is None:
                logits, targets, _ = sparse_mlm_logits(self.model, batch["input_ids"], batch["attention_mask"],
                                                       batch["labels"], token_type_ids=inputs.get("token_type_ids"))
                return logits, targets, None
            logits, targets, first = sparse_mlm_logits_and_first_token(  # first: [B, H]
                self.model, batch["input_ids"], batch["attention_mask"], batch["labels"],
                token_type_ids=inputs.get("token_type_ids"))
            return logits, targets, self.sentence_head(first)
        output = self.model(**inputs, output_hidden_states=self.sentence_head is not None)
        selected = batch["labels"] != IGNORE_INDEX
        sentence = None if self.sentence_head is None else self.sentence_head(output.hidden_states[-1][:, 0])
        return output.logits[selected], batch["labels"][selected], sentence

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        logits, targets, sentence_logits = self.masked_and_sentence_logits(batch)
        # A batch with nothing masked (tiny inputs) contributes a zero loss that still has a graph.
        loss = F.cross_entropy(logits.float(), targets) if targets.numel() else logits.sum() * 0.0
        # Under DDP: this rank's share of the mean over the masked tokens of ALL ranks' batches (one process:
        # unchanged), so the averaged gradients and the synced log are those of one process with the whole batch.
        loss = global_token_mean(self, loss, targets.numel())
        if sentence_logits is not None:  # NSP/SOP: a mean over the pairs of all ranks, weighted into the loss
            labels = batch["sentence_label"]
            sentence_loss = global_token_mean(self, F.cross_entropy(sentence_logits.float(), labels), labels.numel())
            accuracy = (sentence_logits.argmax(-1) == labels).float().mean()
            self.log("train/mlm_loss", loss, batch_size=batch_size(batch), sync_dist=True)
            self.log("train/sentence_loss", sentence_loss, batch_size=batch_size(batch), sync_dist=True)
            self.log("train/sentence_accuracy", accuracy, batch_size=batch_size(batch), sync_dist=True)
            loss = loss + self.hparams.sentence_loss_weight * sentence_loss
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size(batch), sync_dist=True)
        self.log("train/masked_tokens", float(targets.numel()), batch_size=batch_size(batch))
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        logits, targets, sentence_logits = self.masked_and_sentence_logits(batch)
        if sentence_logits is not None:
            labels = batch["sentence_label"]
            self.val_sentence_loss.update(F.cross_entropy(sentence_logits.float(), labels), weight=labels.numel())
            self.val_sentence_accuracy.update(sentence_logits.argmax(-1), labels)
        if not targets.numel():
            return
        logits = logits.float()
        self.val_loss.update(F.cross_entropy(logits, targets), weight=targets.numel())
        self.val_perplexity.update(logits.unsqueeze(0), targets.unsqueeze(0))
        self.val_accuracy.update(logits.argmax(-1), targets)

    def on_validation_epoch_start(self) -> None:
        # Reset here, inside the loop's own grad context: states created under `trainer.validate`'s inference mode
        # could not be updated in place later by the validation loop of `fit`, which runs under no_grad.
        for metric in (self.val_loss, self.val_perplexity, self.val_accuracy, *self.sentence_metrics().values()):
            metric.reset()

    def sentence_metrics(self) -> dict:
        """The validation metrics of the sentence objective by logged name (none without a sentence head)."""
        if self.sentence_head is None:
            return {}
        return {"val/sentence_loss": self.val_sentence_loss, "val/sentence_accuracy": self.val_sentence_accuracy}

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        # decided together: compute() syncs across processes, also on a rank whose shard had nothing masked
        if not true_on_any_rank(self, self.val_loss.update_count > 0):
            return
        metrics = {"val/loss": self.val_loss.compute(), "val/perplexity": self.val_perplexity.compute(),
                   "val/accuracy": self.val_accuracy.compute()}
        metrics.update({name: metric.compute() for name, metric in self.sentence_metrics().items()})
        self.log_dict(metrics, prog_bar=True)
        self.final_metrics = {k.replace("/", "_"): float(v) for k, v in metrics.items()}

    # ---- FLOPs per batch (ThroughputMonitor: flops/s and MFU; see lightning_modules/throughput.py) ------------
    def batch_flops(self, batch: dict, stage: str) -> int:
        """Model FLOPs of one step on this batch: the encoder on [B, L], the LM head on the masked positions (sparse
        prediction) or on all of them; training 3x the forward, evaluation 1x (see models/flops.py)."""
        batch_size_, seq_len = batch["input_ids"].shape
        head_positions, rows = None, None
        if self.hparams.sparse_prediction:  # sparse_mlm_logits: the last layer at the masked positions too
            head_positions = masked_tokens(batch)
            selected = batch["labels"] != IGNORE_INDEX  # [B, L]
            if self.sentence_head is not None:  # ... and at the first token, which the sentence head reads
                selected = selected.clone()
                selected[:, 0] = True
            per_row = int(selected.sum(dim=1).max()) if selected.any() else 0
            rows = batch_size_ * per_row if per_row and trimmable(self.model) else None
        flops = forward_flops(self.model, batch_size_, seq_len, head_positions, rows)
        if self.sentence_head is not None:  # its two matrix products on [B, H]: dense H x H, classifier H x 2
            hidden = self.model.config.hidden_size
            flops += 2 * batch_size_ * (hidden * hidden + 2 * hidden)
        return TRAINING_FACTOR * flops if stage == "train" else flops

    def configure_optimizers(self) -> dict:
        hp = self.hparams
        # the sentence head trains with the model (module = model + head; the same groups without a head)
        model = self.model if self.sentence_head is None else self
        return configure_adamw_with_warmup(self, model, lr=hp.lr, weight_decay=hp.weight_decay, betas=hp.betas,
                                           eps=hp.eps, warmup_steps=hp.warmup_steps, warmup_ratio=hp.warmup_ratio)

    # ---- export ------------------------------------------------------------------------------------------------
    def model_card_info(self) -> dict[str, Any]:
        hp = self.hparams
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        data = dict(getattr(datamodule, "hparams", {}) or {})
        trainer = self._trainer
        objective = {"none": "masked language modelling, no next-sentence prediction",
                     "nsp": "masked language modelling + next-sentence prediction (head not exported)",
                     "sop": "masked language modelling + sentence-order prediction (head not exported)"}
        recipe = {"objective": objective[hp.get("sentence_objective", "none")],
                  "optimizer": f"AdamW betas {tuple(hp.betas)}, eps {hp.eps}, weight decay {hp.weight_decay} "
                               "(none on biases and LayerNorm)",
                  "lr": hp.lr, "schedule": "linear warmup then linear decay per optimiser step",
                  "warmup_steps": hp.warmup_steps, "warmup_ratio": hp.warmup_ratio,
                  "sparse_prediction": hp.sparse_prediction}
        if trainer is not None:
            recipe.update(global_step=int(trainer.global_step),
                          accumulate_grad_batches=int(trainer.accumulate_grad_batches),
                          gradient_clip_val=trainer.gradient_clip_val)
        files = [f for key in ("train_files", "val_files") for f in (data.get(key) or [])]
        return {
            "task": "masked language modelling",
            "description": f"{type(self.model).__name__} pretrained with litbert's RoBERTa recipe "
                           f"({recipe['objective']}).",
            "datasets": sorted({hub_dataset_of_name(Path(str(f)).parent.name or str(f))[0] for f in files}),
            "data": {k: v for k, v in data.items() if isinstance(v, (str, int, float, bool, list, type(None)))},
            "recipe": recipe,
            "metrics": dict(self.final_metrics),
        }
