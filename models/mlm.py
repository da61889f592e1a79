"""Masked language models: build one (RoBERTa/BERT/DistilBERT from a size, or any HF masked LM from a directory), split
it into encoder and LM head (BERT, RoBERTa-likes, DistilBERT, ELECTRA, ALBERT, DeBERTa-v2, ModernBERT), and compute
the vocabulary projection only at the masked positions ("sparse prediction").

Sparse prediction is what fairseq, cramming and academic-budget-bert do: with 15% of tokens masked, projecting only
those hidden states onto the vocabulary saves ~85% of the largest matrix product of a small model and of the
[B, L, V] logits tensor. The result is the same loss as the dense `model(..., labels=labels).loss`.
"""
from __future__ import annotations

import torch
from torch import nn
from transformers import (
    AutoModelForMaskedLM,
    BertConfig,
    BertForMaskedLM,
    DistilBertConfig,
    DistilBertForMaskedLM,
    PreTrainedModel,
    RobertaConfig,
    RobertaForMaskedLM,
)
from transformers.activations import gelu

from models.last_layer import last_layer_at, selected_positions
from models.pretrained import load_for_training

IGNORE_INDEX = -100  # the label of positions without a target (the value transformers' losses ignore): one home
ARCHITECTURES = ("roberta", "bert", "distilbert")
# LM heads whose forward is decoder(layer_norm(gelu(dense(x)))) (see `lm_head_parts`)
ROBERTA_LM_HEADS = ("RobertaLMHead", "XLMRobertaLMHead", "CamembertLMHead")


class DistilBertMLMHead(nn.Module):
    """DistilBERT's LM head as one module (the model keeps its four parts as attributes of the top-level class)."""

    def __init__(self, model: DistilBertForMaskedLM):
        super().__init__()
        self.vocab_transform = model.vocab_transform
        self.activation = model.activation
        self.vocab_layer_norm = model.vocab_layer_norm
        self.vocab_projector = model.vocab_projector

    def transform(self, hidden: torch.Tensor) -> torch.Tensor:
        """[..., H] -> [..., H]: everything before the vocabulary projection."""
        return self.vocab_layer_norm(self.activation(self.vocab_transform(hidden)))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.vocab_projector(self.transform(hidden))


class LMHeadTransform(nn.Module):
    """norm(activation(dense(x))): the part before the vocabulary projection of the LM heads of RoBERTa-likes (gelu,
    `dense`, `layer_norm`), ALBERT (`dense`, `activation`, `LayerNorm`) and DeBERTa-v2's non-legacy head."""

    def __init__(self, dense: nn.Linear, activation, norm: nn.Module):
        """
        Args:
            dense: the head's first Linear (H -> E).
            activation: the function (or module) applied after it.
            norm: the LayerNorm applied last.
        """
        super().__init__()
        self.dense, self.activation, self.norm = dense, activation, norm

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.norm(self.activation(self.dense(hidden)))


class TiedProjection(nn.Module):
    """x @ weight^T + bias with a weight held elsewhere: DeBERTa-v2's non-legacy head projects onto the word
    embeddings inside its forward (no Linear module); `weight` and `bias` as nn.Linear names them, which is all
    `lightning_modules.distill_losses.fused_kl_and_mlm` reads."""

    def __init__(self, weight: nn.Parameter, bias: nn.Parameter | None):
        """
        Args:
            weight: [V, E] the word-embedding matrix (the same Parameter, not a copy).
            bias: [V] the output bias, or None.
        """
        super().__init__()
        self.weight, self.bias = weight, bias

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(hidden, self.weight, self.bias)


class LMHead(nn.Module):
    """projection(transform(x)): an LM head assembled from a masked LM's own modules, for the families whose head is
    not one module with a known layout (ELECTRA, ALBERT, ModernBERT, DeBERTa-v2's non-legacy head)."""

    def __init__(self, transform: nn.Module, projection: nn.Module):
        """
        Args:
            transform: [..., H] -> [..., E], everything before the vocabulary projection.
            projection: [..., E] -> [..., V] (an nn.Linear or a `TiedProjection`).
        """
        super().__init__()
        self.transform, self.projection = transform, projection

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.projection(self.transform(hidden))


def assembled_lm_head(model: PreTrainedModel) -> LMHead | None:
    """The LM head of an ELECTRA, ALBERT, ModernBERT or non-legacy DeBERTa-v2 masked LM (each model's forward
    computes its logits from the encoder's last hidden state as here), or None for another model."""
    kind = model.config.model_type
    if kind == "electra":  # generator_lm_head(generator_predictions(x))
        return LMHead(model.generator_predictions, model.generator_lm_head)
    if kind == "albert":  # predictions: decoder(LayerNorm(activation(dense(x))))
        head = model.predictions
        return LMHead(LMHeadTransform(head.dense, head.activation, head.LayerNorm), head.decoder)
    if kind == "modernbert":  # decoder(head(x)); `head` is norm(act(dense(x)))
        return LMHead(model.head, model.decoder)
    if kind == "deberta-v2" and hasattr(model, "lm_predictions"):  # legacy: False; legacy heads are BERT's (`cls`)
        head = model.lm_predictions.lm_head  # its forward: LayerNorm(act(dense(x))) @ word_embeddings^T + bias
        return LMHead(LMHeadTransform(head.dense, head.transform_act_fn, head.LayerNorm),
                      TiedProjection(model.get_input_embeddings().weight, head.bias))
    return None


def split_masked_lm(model: PreTrainedModel) -> tuple[nn.Module, nn.Module]:
    """(encoder, head) of a Hugging Face masked LM: encoder(input_ids, attention_mask)[0] is [B, L, H], head maps
    [..., H] to [..., V]. Works for BERT (`bert`, `cls`), RoBERTa-likes (`roberta`, `lm_head`), DistilBERT, ELECTRA,
    ALBERT, DeBERTa-v2 (legacy `cls` or `lm_predictions`) and ModernBERT; tests check head(x) == the model's logits."""
    encoder = model.base_model
    if encoder is model:
        raise TypeError(f"{type(model).__name__} is a bare encoder, not a masked LM (load it with AutoModelForMaskedLM)")
    if isinstance(model, DistilBertForMaskedLM):
        return encoder, DistilBertMLMHead(model)
    head = assembled_lm_head(model) if type(model).__name__.endswith("ForMaskedLM") else None
    if head is not None:
        return encoder, head
    for name in ("lm_head", "cls"):  # RoBERTa/XLM-R/CamemBERT; BERT, legacy DeBERTa-v2
        head = getattr(model, name, None)
        if isinstance(head, nn.Module):
            return encoder, head
    raise TypeError(
        f"sparse MLM does not know the LM head of {type(model).__name__}: expected a BERT (`cls`), RoBERTa-like "
        "(`lm_head`), DistilBERT, ELECTRA, ALBERT, DeBERTa-v2 or ModernBERT masked LM"
    )


def lm_head_parts(head: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    """(transform, projection) of an LM head from `split_masked_lm`, head(x) == projection(transform(x)), or None
    for a head not known here; the projection is an nn.Linear or a `TiedProjection` (`weight`, `bias`). Lets a loss
    take the vocabulary projection in its own hands (see `lightning_modules.distill_losses.fused_kl_and_mlm`);
    tests/models/test_mlm.py and tests/lightning_modules/test_distill_families_mlm.py check the identity per model."""
    if isinstance(head, DistilBertMLMHead):
        return head.transform, head.vocab_projector
    if isinstance(head, LMHead):
        return head.transform, head.projection
    predictions = getattr(head, "predictions", None)  # BERT, legacy DeBERTa-v2: cls.predictions.{transform, decoder}
    if predictions is not None and isinstance(getattr(predictions, "decoder", None), nn.Linear):
        return predictions.transform, predictions.decoder
    # RoBERTa, XLM-R, CamemBERT: dense -> gelu -> layer_norm -> decoder (transformers' RobertaLMHead.forward)
    if type(head).__name__ in ROBERTA_LM_HEADS and isinstance(getattr(head, "decoder", None), nn.Linear):
        return LMHeadTransform(head.dense, gelu, head.layer_norm), head.decoder
    return None


def sparse_mlm_logits(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    token_type_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the encoder on [B, L] inputs and the LM head only where labels != -100.

    The encoder's last layer runs at the masked positions only too (`models.last_layer`: the head reads nothing
    else; exact). Returns (logits [n_masked, V], targets [n_masked], last hidden states at the masked positions
    [n_masked, H]); the masked positions are taken in row-major order, so two models given the same labels give
    logits at the same positions.
    """
    selected = labels != IGNORE_INDEX  # [B, L]
    hidden = hidden_at(model, input_ids, attention_mask, selected, token_type_ids)  # [n_masked, H]
    return split_masked_lm(model)[1](hidden), labels[selected], hidden


def hidden_at(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, selected: torch.Tensor,
              token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
    """The encoder's last hidden states where `selected` ([B, L] bool) is True, [n_selected, H] in row-major order;
    the last layer runs at those positions only (`models.last_layer`, exact)."""
    encoder = split_masked_lm(model)[0]
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
    if token_type_ids is not None:
        inputs["token_type_ids"] = token_type_ids
    positions, valid = selected_positions(selected)  # [B, M] each
    with last_layer_at(model, positions) as trimmed:
        hidden = encoder(**inputs, return_dict=True).last_hidden_state  # [B, M, H] (trimmed) or [B, L, H]
    return hidden[valid] if trimmed else hidden[selected]  # [n_selected, H], row-major either way


def sparse_mlm_logits_and_first_token(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    token_type_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`sparse_mlm_logits` plus the last hidden state of every row's first token (<s> / [CLS], never masked), for a
    sentence-level head, from one encoder pass whose last layer runs at the masked positions and position 0.
    Returns (logits [n_masked, V], targets [n_masked], first-token hidden states [B, H])."""
    masked = labels != IGNORE_INDEX  # [B, L]
    first = torch.zeros_like(masked)
    first[:, 0] = True
    hidden = hidden_at(model, input_ids, attention_mask, masked | first, token_type_ids)  # [n_masked + B, H]
    # which of the selected rows (row-major) are masked tokens and which are first tokens
    is_first = first[masked | first]  # [n_masked + B]
    return split_masked_lm(model)[1](hidden[~is_first]), labels[masked], hidden[is_first]


class SentenceHead(nn.Module):
    """A binary sentence-level head (NSP or SOP) on the first token's hidden state, kept apart from the Hugging Face
    model so that an export stays a plain masked LM: BERT's pooler (dense + tanh) then a linear layer to 2 logits.

    Args:
        hidden_size: the encoder's width.
        dropout: dropout on the pooled vector.
    """

    def __init__(self, hidden_size: int, dropout: float = 0.1):
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, 2)

    def forward(self, first_token: torch.Tensor) -> torch.Tensor:
        """[B, H] -> [B, 2] logits (class 0: true next / in order, 1: random / swapped)."""
        return self.classifier(self.dropout(torch.tanh(self.dense(first_token))))


def model_config(
    arch: str,
    vocab_size: int,
    pad_token_id: int,
    bos_token_id: int = 0,
    eos_token_id: int = 2,
    max_seq_length: int = 512,
    hidden_size: int = 768,
    num_hidden_layers: int = 12,
    num_attention_heads: int = 12,
    intermediate_size: int = 3072,
    hidden_dropout_prob: float = 0.1,
    attention_probs_dropout_prob: float = 0.1,
):
    """A Hugging Face config for a masked LM of the given size. RoBERTa's position ids start at pad_token_id + 1, so
    it needs max_seq_length + pad_token_id + 1 position embeddings (514 for 512 tokens)."""
    if arch == "roberta":
        return RobertaConfig(
            vocab_size=vocab_size, pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
            hidden_size=hidden_size, num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads,
            intermediate_size=intermediate_size, hidden_dropout_prob=hidden_dropout_prob,
            attention_probs_dropout_prob=attention_probs_dropout_prob,
            max_position_embeddings=max_seq_length + pad_token_id + 1, type_vocab_size=1, layer_norm_eps=1e-5,
        )
    if arch == "bert":
        return BertConfig(
            vocab_size=vocab_size, pad_token_id=pad_token_id, hidden_size=hidden_size,
            num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads,
            intermediate_size=intermediate_size, hidden_dropout_prob=hidden_dropout_prob,
            attention_probs_dropout_prob=attention_probs_dropout_prob, max_position_embeddings=max_seq_length,
        )
    if arch == "distilbert":
        return DistilBertConfig(
            vocab_size=vocab_size, pad_token_id=pad_token_id, dim=hidden_size, n_layers=num_hidden_layers,
            n_heads=num_attention_heads, hidden_dim=intermediate_size, dropout=hidden_dropout_prob,
            attention_dropout=attention_probs_dropout_prob, max_position_embeddings=max_seq_length,
        )
    raise ValueError(f"arch must be one of {ARCHITECTURES}, got {arch!r}")


MASKED_LM_CLASSES = {"roberta": RobertaForMaskedLM, "bert": BertForMaskedLM, "distilbert": DistilBertForMaskedLM}


def build_masked_lm(
    pretrained: str | None = None,
    arch: str = "roberta",
    vocab_size: int | None = None,
    pad_token_id: int | None = None,
    **size,
) -> PreTrainedModel:
    """A masked LM in training mode: loaded from `pretrained` (a directory, exported ones included, or
    `packaged:...`) with AutoModelForMaskedLM, or freshly initialised as `arch` with the sizes in `size` (see
    `model_config`)."""
    if pretrained is not None:
        model = load_for_training(AutoModelForMaskedLM, pretrained)  # train mode: from_pretrained gives eval mode
        if vocab_size is not None and vocab_size > model.config.vocab_size:
            raise ValueError(
                f"the tokenizer has {vocab_size} ids but the model in {pretrained!r} embeds only "
                f"{model.config.vocab_size}: use the tokenizer saved with that model"
            )
        return model
    if vocab_size is None or pad_token_id is None:
        raise ValueError("a model built from a size needs vocab_size and pad_token_id (linked from the DataModule)")
    config = model_config(arch, vocab_size=vocab_size, pad_token_id=pad_token_id, **size)
    config._attn_implementation = "sdpa"
    return MASKED_LM_CLASSES[arch](config)
