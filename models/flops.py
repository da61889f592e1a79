"""Analytic FLOPs of the encoders litbert trains (BERT, RoBERTa, DistilBERT and look-alikes), for Lightning's
`ThroughputMonitor` (`flops_per_batch` -> `device/flops_per_sec` and `device/mfu`).

Why analytic, and not `lightning.fabric.utilities.throughput.measure_flops` (torch's FlopCounterMode):
- the batch shape changes every step (dynamic padding, a different number of masked tokens), so the count is needed
  per batch; a formula costs microseconds, tracing the model (even on the meta device) costs a forward pass;
- on the meta device the Hugging Face models fail as soon as an attention mask is passed (the mask preparation calls
  `Tensor.item()`), and the sparse MLM head indexes by a boolean mask, which has no meta shape;
- FlopCounterMode has no formula for CPU's fused attention kernel (`_scaled_dot_product_flash_attention_for_cpu`,
  used when there is no attention dropout), so it silently leaves attention out unless SDPA takes the math path;
- the formula is exact for what MFU counts: it gives the same number as FlopCounterMode (attention on the math path)
  on these models; tests/lightning_modules/test_flops.py checks forward, training and distillation steps of every
  module against it on tiny models, and a hand count.

What is counted, as in the PaLM/Megatron MFU convention: matrix multiplications only (2 FLOPs per multiply-add);
embeddings (lookups), LayerNorm, softmax, GELU, dropout, losses and the optimiser are left out (a few percent at these
sizes). Per layer, for a [B, L] batch with hidden size H and FFN size I:
    linear layers   2 * B * L * (4 * H * H + 2 * H * I)      Q, K, V and output projections; the two FFN matrices
    attention       2 * 2 * B * L * L * H                    Q @ K^T and softmax(.) @ V over all heads
Heads: masked LM 2 * n * (H * H + H * V) on the n positions it is applied to (the sparse head: masked positions
only); sequence classification 2 * B * (H * H + H * C) (pooler/dense on the first token, then the classifier); QA
2 * B * L * H * 2. Training costs 3x the forward (the backward computes the gradient of both operands of every
product); a frozen teacher costs 1x. Padding positions are counted: the hardware computes them (so MFU is the
utilisation of the batches as fed; items_per_sec from `length_fn` counts real tokens only). Likewise the
last layer is counted where litbert runs it: at the positions the head reads (`models.last_layer`; the sparse MLM
head's masked positions, padded to the longest row's count), key and value projections at every position.
Activation-checkpointing recomputation is not counted (it is not model FLOPs), nor are the fused distillation terms'
separate gradient products of the MLM term at the masked rows (`lightning_modules.distill_losses.fused_kl_and_mlm`).
"""
from __future__ import annotations

TRAINING_FACTOR = 3  # forward + backward (gradients with respect to both operands of every matrix product)


def encoder_dims(config) -> tuple[int, int, int]:
    """(layers, hidden size, FFN size) from a Hugging Face config (BERT/RoBERTa names, or DistilBERT's)."""
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layers")
    hidden = getattr(config, "hidden_size", None) or getattr(config, "dim")
    intermediate = getattr(config, "intermediate_size", None) or getattr(config, "hidden_dim")
    return int(layers), int(hidden), int(intermediate)


def encoder_forward_flops(config, batch_size: int, seq_len: int, last_layer_rows: int | None = None) -> int:
    """Forward FLOPs of the transformer layers on a [batch_size, seq_len] batch (no head). `last_layer_rows`: the
    number of query rows the last layer computes when it runs only where the head reads (`models.last_layer`: its
    key/value projections still cover every position); None: every position."""
    layers, h, i = encoder_dims(config)
    tokens = batch_size * seq_len

    def layer(rows: int) -> int:  # K, V at every position; Q, output, FFN and attention at `rows` query rows
        return 2 * tokens * 2 * h * h + 2 * rows * (2 * h * h + 2 * h * i) + 2 * 2 * rows * seq_len * h

    return (layers - 1) * layer(tokens) + layer(tokens if last_layer_rows is None else int(last_layer_rows))


def mlm_head_flops(config, n_positions: int) -> int:
    """Forward FLOPs of a masked-LM head (dense H x H, then the vocabulary projection) on n positions."""
    _, h, _ = encoder_dims(config)
    return 2 * int(n_positions) * (h * h + h * int(config.vocab_size))


def classification_head_flops(config, batch_size: int) -> int:
    """Forward FLOPs of a sequence-classification head: H x H on the first token (BERT's pooler, RoBERTa's
    classifier.dense, DistilBERT's pre_classifier), then H x num_labels."""
    _, h, _ = encoder_dims(config)
    return 2 * batch_size * (h * h + h * int(config.num_labels))


def qa_head_flops(config, batch_size: int, seq_len: int) -> int:
    """Forward FLOPs of an extractive-QA head: H x 2 (start and end logits) at every position."""
    _, h, _ = encoder_dims(config)
    return 2 * batch_size * seq_len * h * 2


def forward_flops(model, batch_size: int, seq_len: int, head_positions: int | None = None,
                  last_layer_rows: int | None = None) -> int:
    """Forward FLOPs of a Hugging Face `*ForMaskedLM`, `*ForSequenceClassification` or `*ForQuestionAnswering` on a
    [batch_size, seq_len] batch. `head_positions`: positions the MLM head runs on (None: all, the dense head);
    `last_layer_rows`: query rows of a trimmed last layer (see `encoder_forward_flops`)."""
    config, name = model.config, type(model).__name__
    flops = encoder_forward_flops(config, batch_size, seq_len, last_layer_rows)
    if name.endswith("ForMaskedLM"):
        return flops + mlm_head_flops(config, batch_size * seq_len if head_positions is None else head_positions)
    if name.endswith("ForSequenceClassification"):
        return flops + classification_head_flops(config, batch_size)
    if name.endswith("ForQuestionAnswering"):
        return flops + qa_head_flops(config, batch_size, seq_len)
    raise TypeError(f"forward_flops does not know the head of {name} (expected *ForMaskedLM, "
                    "*ForSequenceClassification or *ForQuestionAnswering)")


def mean_example_flops(model, lengths, factor: int = TRAINING_FACTOR) -> float:
    """Mean over examples of `factor` x the forward FLOPs of each example alone at its own (non-padding) length: the
    useful work per example, the same however the examples are batched and padded (dynamic padding, length-grouped
    batches), e.g. the numerator of a benchmark's MFU. Lengths are counted once each (a data set has few distinct)."""
    counts: dict[int, int] = {}
    for length in lengths:
        counts[int(length)] = counts.get(int(length), 0) + 1
    if not counts:
        raise ValueError("mean_example_flops needs at least one example length")
    total = sum(n * forward_flops(model, 1, length) for length, n in counts.items())
    return factor * total / sum(counts.values())
