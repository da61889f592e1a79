"""A student of any shape in the teacher's family: the teacher's config with other sizes. Plain model code.

`build_sized_student(teacher, size, layers, random_init)`:
- `size` overrides the teacher's `num_hidden_layers`, `hidden_size`, `num_attention_heads` and `intermediate_size`
  (any subset; the others stay the teacher's). The student is the teacher's class (its head included), with the
  teacher's vocabulary, positions, activation and dropout, and the same attention implementation.
- Widths equal to the teacher's (hidden, heads, intermediate): the layers are copied from the teacher, student layer
  i <- teacher layer layers[i] (`models.student.extract_student` with architecture "same"), unless `random_init`.
- Any other width: freshly initialised (no teacher tensor has the student's shape). The layer-wise objectives
  (`hidden_mse` through a learned projection, the relations) are what transfer the teacher's knowledge then.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from transformers import PreTrainedModel

from models.student import default_layer_map, extract_student, set_depth

SIZE_KEYS = ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size")
WIDTH_KEYS = SIZE_KEYS[1:]
# config attributes of families that name a size otherwise (DistilBERT maps the other three itself: attribute_map)
SIZE_ALIASES = {"intermediate_size": "hidden_dim"}
# config attributes that follow a size when the teacher had them equal to it (DeBERTa-v2's pooler width; the
# factorised embedding width of ELECTRA and ALBERT, which else keeps the teacher's and adds a projection to the width)
FOLLOWERS = {"pooler_hidden_size": "hidden_size", "embedding_size": "hidden_size"}


def size_attribute(config, key: str) -> str:
    """The config attribute that holds size `key` (e.g. DistilBERT's feed-forward width is `hidden_dim`)."""
    return key if hasattr(config, key) or key not in SIZE_ALIASES else SIZE_ALIASES[key]


def sized_config(teacher: PreTrainedModel, size: Mapping[str, int]):
    """The teacher's config (a copy) with the sizes of `size`; checks the keys and that the heads divide the width."""
    unknown = sorted(set(size) - set(SIZE_KEYS))
    if unknown:
        raise ValueError(f"student_size: unknown keys {unknown}; expected some of {list(SIZE_KEYS)}")
    config = teacher.config.__class__.from_dict(teacher.config.to_dict())
    for key, value in size.items():
        if int(value) <= 0:
            raise ValueError(f"student_size: {key} must be > 0, got {value}")
        setattr(config, size_attribute(config, key), int(value))
    set_depth(config, teacher.config, config.num_hidden_layers)  # ModernBERT's layer_types: one entry per layer
    for follower, key in FOLLOWERS.items():
        if getattr(teacher.config, follower, None) == getattr(teacher.config, key):
            setattr(config, follower, getattr(config, key))
    if config.hidden_size % config.num_attention_heads:
        raise ValueError(f"student_size: hidden_size {config.hidden_size} is not a multiple of num_attention_heads "
                         f"{config.num_attention_heads}")
    return config


def widths_match(teacher: PreTrainedModel, size: Mapping[str, int]) -> bool:
    """True when the student differs from the teacher in depth only (its layers can be copied)."""
    config = teacher.config
    current = {k: getattr(config, size_attribute(config, k)) for k in WIDTH_KEYS}
    return all(int(size.get(k, value)) == value for k, value in current.items())


def copied_layers(teacher: PreTrainedModel, size: Mapping[str, int],
                  layers: Sequence[int] | None = None) -> list[int] | None:
    """The teacher layers a student of `size` copies (student layer i <- teacher layer [i]), or None when its widths
    differ from the teacher's (nothing to copy). Default: spread over the teacher's depth, first and last included."""
    depth = sized_config(teacher, size).num_hidden_layers
    if not widths_match(teacher, size):
        if layers is not None:
            raise ValueError("student_layers copies teacher layers, which needs the teacher's widths; leave it unset "
                             f"for a student of another width ({dict(size)})")
        return None
    n = teacher.config.num_hidden_layers
    if layers is None or isinstance(layers, str):  # a rule of models/student.py ("spread" by default)
        if depth > n:
            raise ValueError(f"student_size: {depth} layers, more than the teacher's {n}; a deeper student cannot "
                             "copy its layers")
        return default_layer_map(n, depth, layers or "spread")
    if len(layers) != depth:
        raise ValueError(f"student_layers {list(layers)} has {len(layers)} entries but student_size asks for "
                         f"{depth} layers")
    return [int(i) for i in layers]


def build_sized_student(teacher: PreTrainedModel, size: Mapping[str, int], layers: Sequence[int] | None = None,
                        random_init: bool = False) -> PreTrainedModel:
    """A student of the teacher's class with the sizes in `size` (see the module docstring); the teacher is untouched.

    layers: teacher layers to copy when only the depth differs (None: `copied_layers`' default).
    """
    config = sized_config(teacher, size)
    copied = copied_layers(teacher, size, layers)
    if copied is not None:
        return extract_student(teacher, copied, random_init=random_init, architecture="same")
    attn = getattr(teacher.config, "_attn_implementation", None) or "sdpa"
    dtype = next(teacher.parameters()).dtype
    return type(teacher)._from_config(config, attn_implementation=attn, dtype=dtype)


def size_description(teacher: PreTrainedModel, student: PreTrainedModel, copied: bool) -> str:
    """For logs and model cards, e.g. 'RobertaForMaskedLM (2 layers, hidden 128, 4 heads, ffn 512), random init'."""
    c = student.config
    how = "layers copied from the teacher" if copied else "random init"
    ffn = getattr(c, size_attribute(c, "intermediate_size"))
    return (f"{type(student).__name__} ({c.num_hidden_layers} layers, hidden {c.hidden_size}, "
            f"{c.num_attention_heads} heads, ffn {ffn}) from {type(teacher).__name__}, {how}")
