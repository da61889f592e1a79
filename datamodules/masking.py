"""MLMMasker: RoBERTa/BERT masked-language-model masking, applied per batch on the batch's device.

The mask of a sequence is a pure function of (seed, epoch, example index): every random number comes from a
counter-based hash of (seed, epoch, example index, position, stream) computed with integer tensor ops, so
- a resumed run, a different batch composition, a different number of workers or DDP ranks all give the same masks;
- each epoch gives new masks (RoBERTa's dynamic masking); `static_duplicates=k` reuses the masks of epoch % k
  (the paper's static baseline: the data duplicated k times, each copy masked once);
- CPU and GPU give identical masks (integer arithmetic kept below 2**63, no floating point except in smoothing).

Selection is by rank, not Bernoulli per token: each sequence gets exactly floor(p * n + u) selected tokens (n =
candidates, u a hashed uniform in [0, 1)), so the expected rate is exactly p, as in fairseq's MaskTokensDataset,
with no variance in the count from token to token. Tokens are ordered by a hashed key and the first ones taken.
- whole-word masking: every token of a word shares the key of the word's first token, so words are taken whole;
  a word is selected when its midpoint in the order falls inside the budget (expected count stays p * n).
- mlm_smoothing (DistilBERT): sampling without replacement with probability proportional to count**-smoothing,
  done per sequence with Efraimidis-Spirakis keys -log(u) / weight (the smallest keys win).
Candidates are tokens with attention_mask == 1 that are not special tokens (`tokenizer.all_special_ids`).
Selected tokens become <mask> with probability 0.8, a random non-special token with 0.1, and stay with 0.1.
Padding is assumed on the right (dynamic padding), so a token's position does not depend on the batch.
"""
from __future__ import annotations

import json
from typing import Sequence

import torch

from models.mlm import IGNORE_INDEX

_MASK32 = 0xFFFFFFFF
# Independent random streams drawn from the same (seed, epoch, index, position).
_STREAM_SELECT, _STREAM_ACTION, _STREAM_RANDOM_TOKEN, _STREAM_ROUNDING = 1, 2, 3, 4


def _mul32(x, c: int):
    """(x * c) mod 2**32 for 32-bit x, computed without int64 overflow (works on Python ints and tensors)."""
    low = (x & 0xFFFF) * c  # < 2**48
    high = (((x >> 16) * c) & 0xFFFF) << 16  # the part of (x_hi * 2**16 * c) that survives mod 2**32
    return (low + high) & _MASK32


def mix32(x):
    """lowbias32 (C. Wellons): a 32-bit integer hash with good avalanche; Python ints or int64 tensors."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def hash_keys(seed: int, epoch: int, stream: int, example_index: torch.Tensor, length: int) -> torch.Tensor:
    """Uniform 32-bit integers [B, L] (int64 tensor) from (seed, epoch, stream, example index, position)."""
    base = mix32(mix32(mix32(seed & _MASK32) ^ (seed >> 32 & _MASK32)) ^ (epoch & _MASK32))
    base = mix32(base ^ (stream * 0x9E3779B9 & _MASK32))
    index = example_index.to(torch.int64).unsqueeze(1)  # [B, 1]
    h = mix32(mix32(base ^ (index & _MASK32)) ^ (index >> 32 & _MASK32))
    positions = torch.arange(length, device=example_index.device, dtype=torch.int64).unsqueeze(0)  # [1, L]
    return mix32(h ^ positions)  # [B, L]


def _component_json(backend, name: str) -> dict | None:
    """The JSON description of `backend.<name>` (pre_tokenizer / normalizer / model), None if unset.

    Each component pickles to its own JSON (`__getstate__`), which avoids serialising a large vocabulary; the whole
    tokenizer JSON (`to_str()`) is the fallback."""
    component = getattr(backend, name, None)
    if component is None:
        return None
    try:
        return json.loads(component.__getstate__())
    except Exception:  # noqa: BLE001 - any failure: read it from the full serialisation instead
        return json.loads(backend.to_str()).get(name)


def _flatten(spec: dict | None, list_key: str) -> list[dict]:
    """The leaves of a (possibly nested) `Sequence` pre-tokenizer / normalizer description."""
    if not spec:
        return []
    if spec.get("type") == "Sequence":
        return [leaf for child in spec.get(list_key, []) for leaf in _flatten(child, list_key)]
    return [spec]


def word_start_rule(tokenizer) -> tuple[str, str]:
    """How the tokenizer marks words, decided from its backend (the `tokenizers` model and pre-tokenizer), never
    from the vocabulary: ("continuation", prefix) when continuation pieces carry a prefix (WordPiece '##'), or
    ("start", marker) when word-initial pieces carry a marker (byte-level BPE 'Ġ', SentencePiece-style Metaspace '▁').

    Looking at the vocabulary instead is wrong: a byte-level BPE trained on web or markdown text learns tokens such as
    '##' and '###', which would make every token without '##' a word start (whole-word masking silently becoming
    per-token masking). Raises ValueError for a tokenizer whose kind it cannot tell."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    name = type(tokenizer).__name__
    if backend is None:
        raise ValueError(f"whole_word_mask needs a fast tokenizer (with a `tokenizers` backend); {name} has none")
    model = backend.model
    kind = type(model).__name__  # WordPiece, BPE, Unigram, WordLevel
    pre = _flatten(_component_json(backend, "pre_tokenizer"), "pretokenizers")
    norm = _flatten(_component_json(backend, "normalizer"), "normalizers")
    byte_level = any(p.get("type") == "ByteLevel" for p in pre)
    metaspace = [p.get("replacement", "▁") for p in pre if p.get("type") == "Metaspace"]
    # Llama/T5-style tokenizers without a Metaspace pre-tokenizer: the normalizer replaces ' ' by '▁' (and prepends it).
    metaspace += [n.get("content") for n in norm if n.get("type") == "Replace"
                  and (n.get("pattern") or {}).get("String") == " " and n.get("content")]
    prefix = getattr(model, "continuing_subword_prefix", None)
    if kind == "WordPiece":
        return "continuation", prefix or "##"
    if kind == "BPE" and byte_level:
        return "start", "Ġ"  # byte-level BPE (GPT-2/RoBERTa): a leading space is the byte 'Ġ'
    if kind in ("BPE", "Unigram") and metaspace:
        return "start", metaspace[0]
    if kind == "BPE" and prefix:
        return "continuation", prefix  # a BPE trained with continuing_subword_prefix (e.g. '##')
    raise ValueError(
        f"whole_word_mask: cannot tell word starts for {name} (model {kind}, pre-tokenizers "
        f"{[p.get('type') for p in pre] or None}, normalizers {[n.get('type') for n in norm] or None}); supported: "
        "WordPiece ('##' continuations), byte-level BPE ('Ġ' word starts), BPE/Unigram with a Metaspace pre-tokenizer "
        "or a ' '->'▁' normalizer ('▁' word starts), BPE with a continuing_subword_prefix"
    )


def word_start_table(tokenizer) -> torch.Tensor:
    """Bool [len(tokenizer)]: does this token start a word? The rule comes from the tokenizer's kind
    (`word_start_rule`): WordPiece: no '##' prefix; byte-level BPE: 'Ġ' prefix; Metaspace BPE/Unigram: '▁' prefix.
    Added (non-special) tokens count as word starts: they are split out before the model, as whole units.
    (A token right after a special token or at position 0 also starts a word: the masker handles that.)"""
    how, affix = word_start_rule(tokenizer)
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    tokens = ["" if t is None else t for t in tokens]
    if how == "continuation":
        starts = [not t.startswith(affix) for t in tokens]
    else:
        starts = [t.startswith(affix) for t in tokens]
    for token_id in tokenizer.get_added_vocab().values():
        if 0 <= token_id < len(starts):
            starts[token_id] = True
    return torch.tensor(starts, dtype=torch.bool)


class MLMMasker:
    """Seeded masking for masked language modelling (dynamic or static, token or whole-word, optional smoothing).

    >>> masker = MLMMasker(tokenizer, mlm_probability=0.15, seed=0)
    >>> input_ids, labels = masker(input_ids, attention_mask, example_index, epoch)  # labels -100 where unselected
    """

    def __init__(
        self,
        tokenizer,
        mlm_probability: float = 0.15,
        mask_token_prob: float = 0.8,
        random_token_prob: float = 0.1,
        seed: int = 0,
        static_duplicates: int | None = None,
        whole_word_mask: bool = False,
        mlm_smoothing: float = 0.0,
        token_counts: Sequence[int] | torch.Tensor | None = None,
    ):
        if not 0.0 < mlm_probability < 1.0:
            raise ValueError(f"mlm_probability must be in (0, 1), got {mlm_probability}")
        if mask_token_prob < 0 or random_token_prob < 0 or mask_token_prob + random_token_prob > 1.0:
            raise ValueError(
                f"mask_token_prob ({mask_token_prob}) and random_token_prob ({random_token_prob}) must be >= 0 "
                "and sum to at most 1 (the rest keeps the original token)"
            )
        if static_duplicates is not None and static_duplicates < 1:
            raise ValueError(f"static_duplicates must be >= 1 (or None for dynamic masking), got {static_duplicates}")
        if mlm_smoothing < 0:
            raise ValueError(f"mlm_smoothing must be >= 0, got {mlm_smoothing}")
        if tokenizer.mask_token_id is None:
            raise ValueError(f"tokenizer {type(tokenizer).__name__} has no mask token: it cannot be used for MLM")
        self.mlm_probability = mlm_probability
        self.mask_token_prob = mask_token_prob
        self.random_token_prob = random_token_prob
        self.seed = int(seed)
        self.static_duplicates = static_duplicates
        self.whole_word_mask = whole_word_mask
        self.mlm_smoothing = mlm_smoothing
        self.mask_token_id = tokenizer.mask_token_id
        vocab_size = len(tokenizer)
        special = torch.zeros(vocab_size, dtype=torch.bool)
        special[torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)] = True
        # Lookup tables, built once on CPU and copied to each device on first use.
        self._tables = {"special": special, "random_ids": torch.nonzero(~special).squeeze(1)}
        if whole_word_mask:
            self._tables["word_start"] = word_start_table(tokenizer)
        if mlm_smoothing > 0:
            if token_counts is None:
                raise ValueError("mlm_smoothing > 0 needs token_counts (occurrences of each id in the train split)")
            counts = torch.as_tensor(token_counts, dtype=torch.float64)
            if counts.shape != (vocab_size,):
                raise ValueError(f"token_counts must have one entry per token id ({vocab_size}), got {tuple(counts.shape)}")
            self._tables["weight"] = counts.clamp(min=1.0) ** -mlm_smoothing  # DistilBERT: max(count, 1)**-0.7
        self._on_device: dict[torch.device, dict[str, torch.Tensor]] = {}

    def tables(self, device: torch.device) -> dict[str, torch.Tensor]:
        if device not in self._on_device:
            self._on_device[device] = {k: v.to(device) for k, v in self._tables.items()}
        return self._on_device[device]

    def mask_epoch(self, epoch: int) -> int:
        """The epoch whose masks are used: itself (dynamic) or epoch % k (static, k duplicates)."""
        return int(epoch) if self.static_duplicates is None else int(epoch) % self.static_duplicates

    @torch.no_grad()
    def select(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, example_index: torch.Tensor,
               epoch: int) -> torch.Tensor:
        """Bool [B, L]: the positions to predict."""
        t = self.tables(input_ids.device)
        batch, length = input_ids.shape
        epoch = self.mask_epoch(epoch)
        candidate = attention_mask.bool() & ~t["special"][input_ids]  # [B, L]
        positions = torch.arange(length, device=input_ids.device).expand(batch, length)

        # word_pos: position of the first token of each token's word (each token is its own word by default).
        if self.whole_word_mask:
            previous_candidate = torch.nn.functional.pad(candidate[:, :-1], (1, 0), value=False)
            starts = candidate & (t["word_start"][input_ids] | ~previous_candidate)
            word_pos = torch.where(starts, positions, torch.zeros_like(positions)).cummax(dim=1).values
        else:
            word_pos = positions

        # Order tokens by a hashed key shared by the whole word; non-candidates go last.
        u = hash_keys(self.seed, epoch, _STREAM_SELECT, example_index, length).gather(1, word_pos)  # [B, L]
        if self.mlm_smoothing > 0:
            weight = t["weight"][input_ids.gather(1, word_pos)]
            key = -torch.log((u.to(torch.float64) + 0.5) / 2.0**32) / weight  # Exp(weight): smallest first
            key = torch.where(candidate, key, torch.full_like(key, float("inf")))
        else:
            key = torch.where(candidate, u, torch.full_like(u, 1 << 40))
        # Lexicographic sort by (key, word_pos): two stable sorts keep each word's tokens together even on ties.
        by_word = torch.argsort(word_pos, dim=1, stable=True)
        order = by_word.gather(1, torch.argsort(key.gather(1, by_word), dim=1, stable=True))  # [B, L]
        rank = torch.empty_like(order).scatter_(1, order, positions)  # rank[b, i]: place of token i in the order

        # A word's first place in the order and its length, looked up for each of its tokens.
        word_first_rank = torch.full_like(rank, length).scatter_reduce(1, word_pos, rank, reduce="amin")
        word_length = torch.zeros_like(rank).scatter_add(1, word_pos, candidate.long())
        first_rank, n_word = word_first_rank.gather(1, word_pos), word_length.gather(1, word_pos)

        # Budget floor(p * n + r) with r uniform: exactly p * n tokens in expectation (fairseq's rounding).
        n_candidates = candidate.sum(dim=1, keepdim=True).to(torch.float64)
        r = hash_keys(self.seed, epoch, _STREAM_ROUNDING, example_index, 1).to(torch.float64) / 2.0**32
        budget = torch.floor(self.mlm_probability * n_candidates + r).long()  # [B, 1]
        # Select a word when its midpoint lies inside the budget (single tokens: exactly the first `budget`).
        return candidate & (2 * first_rank + n_word <= 2 * budget)

    @torch.no_grad()
    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, example_index: torch.Tensor,
                 epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (masked input_ids, labels) for [B, L] inputs; labels are -100 except at the selected positions."""
        if input_ids.dim() != 2 or attention_mask.shape != input_ids.shape:
            raise ValueError(f"expected input_ids and attention_mask of the same shape [B, L], got "
                             f"{tuple(input_ids.shape)} and {tuple(attention_mask.shape)}")
        if example_index.shape != input_ids.shape[:1]:
            raise ValueError(f"expected one example_index per row ({input_ids.shape[0]}), got {tuple(example_index.shape)}")
        selected = self.select(input_ids, attention_mask, example_index, epoch)
        labels = torch.where(selected, input_ids, torch.full_like(input_ids, IGNORE_INDEX))

        # 80/10/10 per selected token: a hashed uniform in [0, 2**32) compared with integer thresholds.
        t = self.tables(input_ids.device)
        epoch = self.mask_epoch(epoch)
        length = input_ids.shape[1]
        action = hash_keys(self.seed, epoch, _STREAM_ACTION, example_index, length)
        to_mask = selected & (action < int(self.mask_token_prob * 2**32))
        to_random = selected & ~to_mask & (action < int((self.mask_token_prob + self.random_token_prob) * 2**32))
        random_ids = t["random_ids"][hash_keys(self.seed, epoch, _STREAM_RANDOM_TOKEN, example_index, length)
                                     % t["random_ids"].numel()]
        masked = torch.where(to_mask, torch.full_like(input_ids, self.mask_token_id), input_ids)
        masked = torch.where(to_random, random_ids.to(input_ids.dtype), masked)
        return masked, labels
