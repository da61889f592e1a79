"""Build a smaller student from a teacher, as DistilBERT does (Sanh et al. 2019). Plain model code, no Lightning.

The student keeps a subset of the teacher's layers (default "spread": half of them, evenly spread from the first to the
last, which reproduces the public 12 -> 6 extraction `[0, 2, 4, 7, 9, 11]`; "every_other" keeps `[0, 2, 4, ...]`), the
word and position embeddings, the embedding LayerNorm and the head.

- BERT teacher -> DistilBERT student (no token-type embeddings, no pooler). BERT adds `token_type_embeddings[0]` to
  every segment-A token; DistilBERT has no such table, so that row is folded into the position embeddings
  (`fold_token_type=True`): an extraction that keeps every layer then computes exactly the teacher's hidden states
  and MLM logits on single-segment input. (The public extraction script drops the row; `fold_token_type=False` does
  the same.) Head mapping:
    masked LM      cls.predictions.transform.dense -> vocab_transform, transform.LayerNorm -> vocab_layer_norm,
                   decoder (+ bias) -> vocab_projector (tied to the word embeddings when the teacher's is)
    sequence cls.  bert.pooler.dense -> pre_classifier, classifier -> classifier. This is our choice: the pooler is
                   the teacher's trained projection of [CLS] and has the right shape, but DistilBERT applies ReLU
                   where BERT's pooler applies tanh, so the copied head is a warm start, not an identical function.
    QA / token cls qa_outputs -> qa_outputs, classifier -> classifier
- Any other teacher (RoBERTa, DistilBERT, ELECTRA, DeBERTa-v2, ModernBERT, or BERT with `architecture="same"`) -> the
  same class with fewer layers. ALBERT shares one layer's weights across its depth: its student runs that layer
  fewer times. ModernBERT's per-layer `layer_types` (global or sliding-window attention) follow the copied layers.

`random_init=True` builds the same student architecture with fresh weights (the DistilBERT "random init" ablation).
"""
from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

from transformers import (
    DistilBertConfig,
    DistilBertForMaskedLM,
    DistilBertForQuestionAnswering,
    DistilBertForSequenceClassification,
    DistilBertForTokenClassification,
    DistilBertModel,
    PreTrainedModel,
)

from models.pretrained import load_tokenizer, resolve_model_path

log = logging.getLogger(__name__)

# Teacher class-name suffix (after "Bert") -> DistilBERT class with the same head.
DISTILBERT_HEADS = {
    "ForMaskedLM": DistilBertForMaskedLM,
    "ForSequenceClassification": DistilBertForSequenceClassification,
    "ForQuestionAnswering": DistilBertForQuestionAnswering,
    "ForTokenClassification": DistilBertForTokenClassification,
    "Model": DistilBertModel,
}
ARCHITECTURES = ("auto", "distilbert", "same")

# BERT encoder-layer parameter name -> DistilBERT transformer-layer parameter name (weights and biases alike).
BERT_TO_DISTILBERT_LAYER = {
    "attention.self.query": "attention.q_lin",
    "attention.self.key": "attention.k_lin",
    "attention.self.value": "attention.v_lin",
    "attention.output.dense": "attention.out_lin",
    "attention.output.LayerNorm": "sa_layer_norm",
    "intermediate.dense": "ffn.lin1",
    "output.dense": "ffn.lin2",
    "output.LayerNorm": "output_layer_norm",
}
# BERT head parameter prefix -> DistilBERT head parameter prefix.
BERT_TO_DISTILBERT_HEAD = {
    "cls.predictions.transform.dense": "vocab_transform",
    "cls.predictions.transform.LayerNorm": "vocab_layer_norm",
    "cls.predictions.decoder": "vocab_projector",
    "bert.pooler.dense": "pre_classifier",
    "classifier": "classifier",
    "qa_outputs": "qa_outputs",
}
# Named layer maps (`student_layers: spread`): "spread" (the default) keeps the first and last teacher layers and
# spreads the others evenly, as the public DistilBERT extraction does; "every_other" keeps layers 0, 2, 4, ...
# (litbert's default before issue 13, which never kept the top layer of an even-depth teacher).
LAYER_MAP_RULES = ("spread", "every_other")
# Matches the per-layer parameters of BERT/RoBERTa (`encoder.layer.N.`), DistilBERT (`transformer.layer.N.`) and
# ModernBERT (`model.layers.N.`, `layers.N.` in a bare ModernBertModel).
LAYER_KEY = re.compile(
    r"^(?P<prefix>(?:.*?(?:encoder|transformer)\.layer|(?:model\.)?layers)\.)(?P<index>\d+)\.(?P<rest>.*)$")


def spread_layers(num_teacher_layers: int, num_student_layers: int) -> list[int]:
    """`num_student_layers` teacher layers evenly spread from the first to the last: student layer i copies the layer
    nearest to i * (n - 1) / (k - 1), halves rounded down (n teacher, k student layers; one student layer: [0]).

    This is the rule behind the public DistilBERT extraction, 12 -> [0, 2, 4, 7, 9, 11] (exactly); 4 -> [0, 3],
    6 -> [0, 2, 5]. The top layer is kept: it is the one whose outputs the teacher's head was trained on.
    """
    n, k = num_teacher_layers, num_student_layers
    if not 1 <= k <= n:
        raise ValueError(f"a student of {k} layers cannot be spread over a teacher of {n} layers (1..{n})")
    if k == 1:
        return [0]
    # integer form of ceil(i * (n - 1) / (k - 1) - 1/2): no floating-point ties
    return [(2 * i * (n - 1) + k - 2) // (2 * (k - 1)) for i in range(k)]


def default_layer_map(num_teacher_layers: int, num_student_layers: int | None = None,
                      rule: str = "spread") -> list[int]:
    """The teacher layers a student keeps by rule (see LAYER_MAP_RULES); by default half the teacher's depth
    (rounded up): "spread" 12 -> [0, 2, 4, 7, 9, 11] (the public map), "every_other" 12 -> [0, 2, 4, 6, 8, 10]."""
    if rule not in LAYER_MAP_RULES:
        raise ValueError(layer_map_name_error(rule))
    if num_student_layers is None:
        num_student_layers = (num_teacher_layers + 1) // 2
    if rule == "every_other":
        layers = list(range(0, num_teacher_layers, 2))
        if num_student_layers > len(layers):
            raise ValueError(f"'every_other' keeps at most {len(layers)} of {num_teacher_layers} teacher layers, "
                             f"not {num_student_layers}")
        return layers[:num_student_layers]
    return spread_layers(num_teacher_layers, num_student_layers)


def layer_map_name_error(name: str) -> str:
    """The one-line error for a `student_layers` name that is not a rule."""
    return (f"student_layers {name!r}: expected a list of teacher layer indices or one of "
            f"{', '.join(repr(r) for r in LAYER_MAP_RULES)}")


def resolve_layer_map(num_teacher_layers: int, layers: Sequence[int] | str | None = None) -> list[int]:
    """Student layer i copies teacher layer result[i]: `layers` checked when a list, built by rule when a name of
    LAYER_MAP_RULES, or the default rule ("spread") when None."""
    if layers is None:
        return default_layer_map(num_teacher_layers)
    if isinstance(layers, str):
        if layers not in LAYER_MAP_RULES:
            raise ValueError(layer_map_name_error(layers))
        return default_layer_map(num_teacher_layers, rule=layers)
    layers = [int(i) for i in layers]
    if not layers:
        raise ValueError("student_layers: the list is empty; give at least one teacher layer index")
    bad = [i for i in layers if not 0 <= i < num_teacher_layers]
    if bad:
        raise ValueError(f"student_layers {layers}: indices {bad} are outside the teacher's layers "
                         f"0..{num_teacher_layers - 1}")
    if len(set(layers)) != len(layers):
        raise ValueError(f"student_layers {layers}: each teacher layer may be used once")
    return layers


def is_bert(model: PreTrainedModel) -> bool:
    return model.config.model_type == "bert"


def student_architecture(teacher: PreTrainedModel, architecture: str = "auto") -> str:
    """'distilbert' or 'same': 'auto' turns a BERT teacher into DistilBERT and keeps any other architecture."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"student architecture {architecture!r}: expected one of {ARCHITECTURES}")
    if architecture == "auto":
        return "distilbert" if is_bert(teacher) else "same"
    if architecture == "distilbert" and not is_bert(teacher):
        raise ValueError(f"a DistilBERT student needs a BERT teacher, got model_type {teacher.config.model_type!r}")
    return architecture


def distilbert_config_from_bert(config, num_layers: int) -> DistilBertConfig:
    """A DistilBertConfig with the BERT teacher's sizes (any hidden size), dropout, activation, labels and vocab."""
    if getattr(config, "layer_norm_eps", 1e-12) != 1e-12:
        log.warning("DistilBERT's LayerNorm eps is fixed at 1e-12; the teacher uses %s", config.layer_norm_eps)
    if getattr(config, "position_embedding_type", "absolute") != "absolute":
        raise ValueError(f"DistilBERT has absolute positions only; the teacher uses {config.position_embedding_type!r}")
    labels = {}
    if config.id2label is not None:
        labels = dict(id2label=dict(config.id2label), label2id=dict(config.label2id))
    return DistilBertConfig(
        vocab_size=config.vocab_size,
        max_position_embeddings=config.max_position_embeddings,
        n_layers=num_layers,
        n_heads=config.num_attention_heads,
        dim=config.hidden_size,
        hidden_dim=config.intermediate_size,
        dropout=config.hidden_dropout_prob,
        attention_dropout=config.attention_probs_dropout_prob,
        activation=config.hidden_act,
        initializer_range=config.initializer_range,
        qa_dropout=config.hidden_dropout_prob,
        seq_classif_dropout=getattr(config, "classifier_dropout", None) or config.hidden_dropout_prob,
        pad_token_id=config.pad_token_id,
        tie_word_embeddings=getattr(config, "tie_word_embeddings", True),
        problem_type=config.problem_type,
        **labels,
    )


def bert_to_distilbert_state_dict(teacher_state: dict, layers: Sequence[int], fold_token_type: bool = True) -> dict:
    """Rename and select the BERT teacher's tensors for a DistilBERT student (see the module docstring)."""
    student = {}
    emb = "bert.embeddings."
    student["distilbert.embeddings.word_embeddings.weight"] = teacher_state[emb + "word_embeddings.weight"]
    position = teacher_state[emb + "position_embeddings.weight"]
    if fold_token_type and emb + "token_type_embeddings.weight" in teacher_state:
        position = position + teacher_state[emb + "token_type_embeddings.weight"][0]  # (max_pos, dim) + (dim,)
    student["distilbert.embeddings.position_embeddings.weight"] = position
    for name in ("weight", "bias"):
        student[f"distilbert.embeddings.LayerNorm.{name}"] = teacher_state[f"{emb}LayerNorm.{name}"]
    for s, t in enumerate(layers):
        for bert_name, distil_name in BERT_TO_DISTILBERT_LAYER.items():
            for name in ("weight", "bias"):
                student[f"distilbert.transformer.layer.{s}.{distil_name}.{name}"] = (
                    teacher_state[f"bert.encoder.layer.{t}.{bert_name}.{name}"])
    for bert_prefix, distil_prefix in BERT_TO_DISTILBERT_HEAD.items():
        for name in ("weight", "bias"):
            if f"{bert_prefix}.{name}" in teacher_state:
                student[f"{distil_prefix}.{name}"] = teacher_state[f"{bert_prefix}.{name}"]
    if "cls.predictions.bias" in teacher_state:  # the decoder bias lives here (tied to decoder.bias)
        student["vocab_projector.bias"] = teacher_state["cls.predictions.bias"]
    return student


def same_architecture_state_dict(teacher_state: dict, layers: Sequence[int]) -> dict:
    """Keep the teacher's non-layer tensors and renumber the selected layers 0..len(layers)-1."""
    new_index = {t: s for s, t in enumerate(layers)}
    student = {}
    for key, tensor in teacher_state.items():
        match = LAYER_KEY.match(key)
        if match is None:
            student[key] = tensor
        elif int(match["index"]) in new_index:
            student[f"{match['prefix']}{new_index[int(match['index'])]}.{match['rest']}"] = tensor
    return student


def _with_bert_prefix(teacher: PreTrainedModel) -> dict:
    """The teacher's state dict with base-model keys under `bert.` (a bare BertModel has no prefix)."""
    state = teacher.state_dict()
    if teacher.base_model_prefix and not hasattr(teacher, teacher.base_model_prefix):
        state = {f"{teacher.base_model_prefix}.{k}": v for k, v in state.items()}
    return state


def set_depth(config, teacher_config, depth: int, layers: Sequence[int] | None = None) -> None:
    """`config.num_hidden_layers = depth`, with the per-layer list ModernBERT keeps (`layer_types`, which its config
    requires to be that long): the entries of the copied teacher `layers`, else the teacher's pattern repeated."""
    config.num_hidden_layers = depth
    types = getattr(teacher_config, "layer_types", None)
    if types:
        config.layer_types = [types[t] for t in layers] if layers is not None else \
            [types[i % len(types)] for i in range(depth)]


def extract_student(
    teacher: PreTrainedModel,
    layers: Sequence[int] | str | None = None,
    random_init: bool = False,
    architecture: str = "auto",
    fold_token_type: bool = True,
) -> PreTrainedModel:
    """Return a new student model built from `teacher` (which is left untouched).

    layers: teacher layer indices, student layer i <- teacher layer layers[i], or a rule name of LAYER_MAP_RULES
        (default "spread": half the layers, the first and last kept).
    random_init: same student architecture and sizes, freshly initialised weights (ablation).
    architecture: "auto" (BERT -> DistilBERT, others -> same class), "distilbert", or "same".
    fold_token_type: add BERT's token_type_embeddings[0] to the DistilBERT position embeddings.
    """
    config = teacher.config
    layers = resolve_layer_map(config.num_hidden_layers, layers)
    kind = student_architecture(teacher, architecture)
    attn = getattr(config, "_attn_implementation", None) or "sdpa"
    if kind == "distilbert":
        head = type(teacher).__name__.removeprefix("Bert")
        if head not in DISTILBERT_HEADS:
            raise ValueError(f"no DistilBERT counterpart for {type(teacher).__name__}; "
                             f"supported: {['Bert' + h for h in DISTILBERT_HEADS]}")
        student_class = DISTILBERT_HEADS[head]
        student_config = distilbert_config_from_bert(config, len(layers))
    else:
        student_class = type(teacher)
        if config.model_type == "modernbert" and layers[0] != 0:  # its layer 0 alone has no attention LayerNorm
            raise ValueError(f"student_layers {list(layers)}: a ModernBERT student's first layer must copy the "
                             "teacher's layer 0 (ModernBERT's first layer has no attention LayerNorm)")
        student_config = config.__class__.from_dict(config.to_dict())
        set_depth(student_config, config, len(layers), layers)
    dtype = next(teacher.parameters()).dtype
    student = student_class._from_config(student_config, attn_implementation=attn, dtype=dtype)
    if random_init:
        return student
    if kind == "distilbert":
        state = bert_to_distilbert_state_dict(_with_bert_prefix(teacher), layers, fold_token_type)
        if student_class is DistilBertModel:  # bare model: no "distilbert." prefix, no head
            state = {k.removeprefix("distilbert."): v for k, v in state.items() if k.startswith("distilbert.")}
    else:
        state = same_architecture_state_dict(teacher.state_dict(), layers)
    state = {k: v.detach().clone() for k, v in state.items()}
    missing, unexpected = student.load_state_dict(state, strict=False)
    # Tied copies (vocab_projector.weight <- word embeddings) may be reported missing; anything else is a bug.
    tied = set(_tied_keys(student))
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise RuntimeError(f"student extraction from {type(teacher).__name__}: missing {missing}, "
                           f"unexpected {unexpected}")
    student.tie_weights()
    return student


def _tied_keys(model: PreTrainedModel) -> list[str]:
    keys = getattr(model, "_tied_weights_keys", None) or {}
    return list(keys) if model.config.tie_word_embeddings else []


def layer_map_description(teacher: PreTrainedModel, student: PreTrainedModel, layers: Sequence[int]) -> str:
    """Human-readable summary for logs and model cards, e.g. 'BertForMaskedLM[0, 2, 5] -> DistilBertForMaskedLM (3
    layers)'."""
    return f"{type(teacher).__name__}{list(layers)} -> {type(student).__name__} ({len(layers)} layers)"


# ---- shared vocabulary ----------------------------------------------------------------------------------------------
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer_config.json")


def tokenizer_dir(name_or_path: str | None) -> str | None:
    """The resolved directory of `name_or_path` when it holds tokenizer files, else None."""
    if name_or_path is None:
        return None
    path = Path(resolve_model_path(name_or_path))
    return str(path) if path.is_dir() and any((path / f).exists() for f in TOKENIZER_FILES) else None


def vocabulary_difference(vocab_a: dict[str, int], vocab_b: dict[str, int], limit: int = 3) -> str | None:
    """None when both token -> id maps are equal, else a short description of the first differences."""
    if vocab_a == vocab_b:
        return None
    diffs = [f"{tok!r}: {vocab_a.get(tok)} vs {vocab_b.get(tok)}"
             for tok in sorted(set(vocab_a) | set(vocab_b), key=lambda t: (vocab_a.get(t, 1 << 30), t))
             if vocab_a.get(tok) != vocab_b.get(tok)]
    return f"{len(vocab_a)} vs {len(vocab_b)} tokens; first differences {diffs[:limit]}"


def check_shared_vocabulary(teacher: PreTrainedModel, student: PreTrainedModel, teacher_path: str | None = None,
                            student_path: str | None = None, data_tokenizer=None) -> None:
    """Raise ValueError unless teacher and student (and the data's tokenizer) use the same vocabulary.

    Compares the embedding sizes, then the token -> id maps of the tokenizers saved with the teacher and the student
    (when both directories have one) and of the DataModule's tokenizer (when given).
    """
    t_size, s_size = teacher.config.vocab_size, student.config.vocab_size
    if t_size != s_size:
        raise ValueError(f"teacher ({teacher_path}) embeds {t_size} token ids but the student ({student_path}) "
                         f"embeds {s_size}: distillation needs one shared vocabulary")
    teacher_tok, student_tok = tokenizer_dir(teacher_path), tokenizer_dir(student_path)
    teacher_vocab = load_tokenizer(teacher_tok).get_vocab() if teacher_tok else None
    if teacher_vocab is not None and student_tok and student_tok != teacher_tok:
        diff = vocabulary_difference(teacher_vocab, load_tokenizer(student_tok).get_vocab())
        if diff:
            raise ValueError(f"the tokenizers of the teacher ({teacher_path}) and the student ({student_path}) "
                             f"differ: {diff}")
    if data_tokenizer is not None:
        if len(data_tokenizer) > t_size:
            raise ValueError(f"the data's tokenizer has {len(data_tokenizer)} ids but the teacher ({teacher_path}) "
                             f"embeds only {t_size}: set data.init_args.tokenizer to the teacher's directory")
        if teacher_vocab is not None:
            diff = vocabulary_difference(teacher_vocab, data_tokenizer.get_vocab())
            if diff:
                raise ValueError(f"the data's tokenizer differs from the teacher's ({teacher_path}): {diff}; "
                                 "set data.init_args.tokenizer to the teacher's directory")
