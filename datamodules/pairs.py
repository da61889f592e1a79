"""SEGMENT-PAIR and SENTENCE-PAIR inputs for MLM pretraining, with NSP / SOP labels (RoBERTa's section 4.2 formats).

Two steps, so a resumed run sees the same pairs and the cache stays independent of the sentence objective:

1. Cached, once per split (`pair_examples`, a batched `datasets.map` over the documents): each document is tokenized
   whole (the same ids FULL-SENTENCES gets), cut into sentences by `split_sentences`, and the sentences are grouped
   into chunks of at most `budget` tokens (`budget` = max_seq_length minus the pair's special tokens). A chunk is cut
   at a sentence boundary into segment A (`first`) and its true continuation B (`second`): SEGMENT-PAIR chunks hold as
   many sentences as fit (BERT's format), SENTENCE-PAIR chunks exactly two sentences. As in BERT's
   `create_pretraining_data.py`, a SEGMENT-PAIR chunk is built to a shorter random length, uniform in [2, budget], with
   probability `short_seq_prob` (BERT's and ALBERT's 0.1), so the model also sees short inputs; the draw is seeded by
   (document index, chunk index). Such a chunk holds at least one piece. The cut of a SEGMENT-PAIR chunk
   is drawn at build time from a generator seeded by (document index, chunk index), as BERT's `a_end`. A sentence
   longer than budget / 2 is cut into pieces of budget / 2 tokens, and a document's last chunk with one piece only is
   cut at its middle token, so every chunk has a non-empty A and B. Pairs never cross a document, nor a split (each
   split is built from its own files).
2. Per example, when a batch is made (`PairDataset`): the pair's variant is drawn from a generator seeded by
   (seed, epoch, example index): NSP takes the true B (label 0) or, with probability 1/2, a segment from another
   document of the split (label 1), cut to the length the true B leaves room for; SOP takes (A, B) in order (label 0)
   or swapped (label 1). The training sampler hands out (epoch, index) keys (`EpochKeyedSampler`), so the epoch
   reaches DataLoader workers too; evaluation uses epoch 0 (the same pairs every validation).

Encoding: the tokenizer's own pair template (its post-processor): `<s> A </s></s> B </s>` for RoBERTa,
`[CLS] A [SEP] B [SEP]` with `token_type_ids` 0/1 for BERT tokenizers (whose model_input_names include them).

Sentence splitter: a regular expression, not nltk/punkt (punkt needs a model download, impossible offline, and a new
dependency): a sentence ends at `.`, `!` or `?` followed by whitespace and then a character that is not a lower-case
letter. It suits WikiText, whose periods are tokenised as " . " and whose sentences start with a capital, a digit or
a quote; it also splits after abbreviations followed by a capitalised word ("lit . Valkyria"), and WikiText's
` = = Section = = ` headings stay at the start of the sentence that follows them.
"""
from __future__ import annotations

import re

import numpy as np
from torch.utils.data import Dataset

from datamodules.samplers import DistributedTrainSampler

PAIR_PACKINGS = ("segment_pair", "sentence_pair")
SENTENCE_OBJECTIVES = ("none", "nsp", "sop")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[^\sa-z])")
_PAIR_STREAM = 0x5E6  # the pair generator's own stream, apart from the masks' (masking.py hashes other streams)
_SHORT_STREAM = 0x5E7  # the stream of the short-chunk draws, apart from the chunk's cut (a_end)
BERT_SHORT_SEQ_PROB = 0.1  # BERT's (and ALBERT's) short_seq_prob: chunks built to a random shorter length


def split_sentences(text: str) -> list[int]:
    """Character offsets where the sentences of `text` start (the first is 0); see the module docstring."""
    return [0] + [m.end() for m in _SENTENCE_END.finditer(text)]


def sentence_lengths(offsets: list[tuple[int, int]], starts: list[int]) -> np.ndarray:
    """Tokens per sentence: token t belongs to the sentence holding its last character (a byte-level BPE token's
    offsets may include the space before a word, so its start can fall into the previous sentence)."""
    if not offsets:
        return np.zeros(0, dtype=np.int64)
    last_char = np.asarray([max(end - 1, start) for start, end in offsets], dtype=np.int64)
    sentence = np.searchsorted(np.asarray(starts, dtype=np.int64), last_char, side="right") - 1
    counts = np.bincount(sentence, minlength=len(starts))
    return counts[counts > 0]


def chunk_target(budget: int, short_seq_prob: float, document: int, chunk: int) -> int:
    """Tokens chunk `chunk` of `document` is built to: `budget`, or with probability `short_seq_prob` a length drawn
    uniformly from [2, budget] (BERT's `target_seq_length`)."""
    if short_seq_prob <= 0:
        return budget
    rng = np.random.default_rng([document, chunk, _SHORT_STREAM])
    return int(rng.integers(2, budget + 1)) if rng.random() < short_seq_prob else budget


def document_chunks(ids: np.ndarray, lengths: np.ndarray, budget: int, max_pieces: int | None,
                    document: int, short_seq_prob: float = 0.0) -> list[tuple[np.ndarray, np.ndarray]]:
    """(A, B) pairs of one document: pieces (sentences, long ones cut to budget // 2 tokens) grouped into chunks of at
    most `budget` tokens (a shorter drawn target with probability `short_seq_prob`, at least one piece) and
    `max_pieces` pieces (None: as many as fit), each cut at a piece boundary."""
    half = max(1, budget // 2)
    pieces, start = [], 0
    for n in lengths.tolist():
        for cut in range(start, start + n, half):
            pieces.append(ids[cut: min(cut + half, start + n)])
        start += n
    chunks, current, size = [], [], 0
    target = chunk_target(budget, short_seq_prob, document, 0)
    for piece in pieces:
        if current and (size + len(piece) > target or (max_pieces and len(current) == max_pieces)):
            chunks.append(current)
            current, size = [], 0
            target = chunk_target(budget, short_seq_prob, document, len(chunks))
        current.append(piece)
        size += len(piece)
    if current:
        chunks.append(current)
    pairs = []
    for c, chunk in enumerate(chunks):
        if len(chunk) == 1:  # a document's last chunk (or a short one) holding one piece: cut it at its middle
            piece = chunk[0]
            if len(piece) >= 2:
                pairs.append((piece[: len(piece) // 2], piece[len(piece) // 2:]))
            continue
        # BERT's a_end: a random piece boundary, fixed at build time (seeded by document and chunk)
        a_end = 1 if len(chunk) == 2 else int(np.random.default_rng([document, c]).integers(1, len(chunk)))
        pairs.append((np.concatenate(chunk[:a_end]), np.concatenate(chunk[a_end:])))
    return pairs


def pair_examples(batch: dict, indices: list[int], *, tokenizer, budget: int, max_pieces: int | None,
                  short_seq_prob: float = 0.0) -> dict:
    """`Dataset.map` body: documents -> rows of `first` (A), `second` (B, its continuation), `document_index`,
    `length` (tokens of the encoded pair, for length grouping)."""
    encoded = tokenizer(batch["text"], add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    specials = tokenizer.num_special_tokens_to_add(pair=True)
    out = {"first": [], "second": [], "document_index": [], "length": []}
    for d, text, ids, offsets in zip(indices, batch["text"], encoded["input_ids"], encoded["offset_mapping"]):
        lengths = sentence_lengths(offsets, split_sentences(text))
        for first, second in document_chunks(np.asarray(ids, dtype=np.int32), lengths, budget, max_pieces, d,
                                             short_seq_prob):
            out["first"].append(first)
            out["second"].append(second)
            out["document_index"].append(d)
            out["length"].append(len(first) + len(second) + specials)
    return out


class PairTemplate:
    """The tokenizer's pair encoding, read once from its post-processor: prefix A middle B suffix, and the token
    type of each part (BERT: [CLS]=0 A=0 [SEP]=0 B=1 [SEP]=1; RoBERTa: all 0)."""

    def __init__(self, tokenizer):
        from tokenizers import Tokenizer

        backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())  # a copy: the padding/truncation some
        backend.no_padding()  # saved backends carry would pad the probe (the original is left as it is)
        backend.no_truncation()
        pair = backend.encode("a", "b", add_special_tokens=True)  # sequence_ids tell A, B and the specials apart
        seq, ids, types = pair.sequence_ids, pair.ids, pair.type_ids
        a0, a1 = seq.index(0), len(seq) - seq[::-1].index(0)
        b0, b1 = seq.index(1), len(seq) - seq[::-1].index(1)
        self.parts = [(ids[:a0], types[:a0]), (ids[a1:b0], types[a1:b0]), (ids[b1:], types[b1:])]
        self.type_a, self.type_b = types[a0], types[b0]
        self.with_types = "token_type_ids" in tokenizer.model_input_names

    def encode(self, a: np.ndarray, b: np.ndarray) -> dict:
        """{"input_ids": prefix A middle B suffix, ["token_type_ids"]} for token id arrays a and b."""
        (pre, pre_t), (mid, mid_t), (suf, suf_t) = self.parts
        out = {"input_ids": [*pre, *a.tolist(), *mid, *b.tolist(), *suf]}
        if self.with_types:
            out["token_type_ids"] = [*pre_t, *[self.type_a] * len(a), *mid_t, *[self.type_b] * len(b), *suf_t]
        return out


def pair_generator(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of example `index`'s pair choices in `epoch` (independent of batch, worker and rank)."""
    return np.random.default_rng([seed & 0xFFFFFFFF, epoch & 0xFFFFFFFF, index, _PAIR_STREAM])


class PairDataset(Dataset):
    """Encoded pairs of one split. Keys: an example index (epoch 0: evaluation) or (epoch, index) from
    `EpochKeyedSampler`. Items: `input_ids`, [`token_type_ids`], `example_index`, and `sentence_label` (0: true next /
    in order, 1: another document's segment / swapped) unless the objective is "none" (always the true pair).

    Args:
        rows: the cached `pair_examples` rows of the split (memory-mapped `datasets.Dataset`).
        tokenizer: the DataModule's tokenizer (its pair template).
        objective: "none", "nsp" or "sop".
        packing: "segment_pair" or "sentence_pair" (an NSP negative is one sentence for the latter).
        seed: pair choices are a function of (seed, epoch, example index).
    """

    def __init__(self, rows, tokenizer, objective: str, packing: str, seed: int):
        self.rows = rows.with_format("numpy", columns=["first", "second"])
        self.template = PairTemplate(tokenizer)
        self.objective, self.packing, self.seed = objective, packing, int(seed)
        columns = rows.with_format("arrow").select_columns(["document_index", "length"])[:]
        self.documents = columns.column("document_index").to_numpy().astype(np.int64)  # [N], non-decreasing
        self.pair_lengths = columns.column("length").to_numpy().astype(np.int64)  # [N], special tokens included
        documents = self.documents
        if objective == "nsp" and len(documents) and documents[0] == documents[-1]:
            raise ValueError("sentence_objective nsp draws negatives from other documents, but this split has one "
                             "document only: give more documents, or use sop")

    def __len__(self) -> int:
        return len(self.documents)

    def lengths(self) -> list[int]:
        """Tokens of each true pair (length grouping; an NSP negative is at most as long)."""
        return self.pair_lengths.tolist()

    def negative(self, index: int, room: int, rng: np.random.Generator) -> np.ndarray:
        """A segment of another document than example `index`'s, at most `room` tokens, starting at a sentence."""
        d = self.documents[index]
        lo, hi = np.searchsorted(self.documents, d, "left"), np.searchsorted(self.documents, d, "right")
        r = int(rng.integers(0, len(self.documents) - (hi - lo)))  # uniform over the rows of the other documents
        j = r if r < lo else r + (hi - lo)
        row = self.rows[j]
        tokens = row["first"] if self.packing == "sentence_pair" else np.concatenate((row["first"], row["second"]))
        return tokens[:room]

    def __getitem__(self, key) -> dict:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        row = self.rows[int(index)]
        a, b = row["first"], row["second"]
        item = {"example_index": int(index)}
        if self.objective != "none":
            rng = pair_generator(self.seed, int(epoch), int(index))
            label = int(rng.random() < 0.5)
            if label and self.objective == "nsp":
                b = self.negative(int(index), len(b), rng)
            elif label:  # sop
                a, b = b, a
            item["sentence_label"] = label
        return {**self.template.encode(a, b), **item}


class EpochKeyedSampler(DistributedTrainSampler):
    """`DistributedTrainSampler` yielding (epoch, index) keys: the epoch Lightning set (`set_epoch`) reaches the
    dataset in every DataLoader worker, so the pairs of an epoch are drawn there (workers hold copies of the dataset,
    whose own attributes the main process cannot change)."""

    def __iter__(self):
        return iter([(self.epoch, i) for batch in self.rank_batches() for i in batch])


def pair_dataloader(datamodule, dataset: PairDataset, train: bool):
    """The DataLoader of a pair split, sharded and padded as `LitBertDataModule.make_dataloader` does."""
    from torch.utils.data import DataLoader

    from datamodules.loaders import ResumableDataLoader
    from datamodules.samplers import DistributedEvalSampler

    dm = datamodule
    world, rank, accumulate = dm.distributed_context()
    workers = dict(collate_fn=dm.collator, num_workers=dm.num_workers, persistent_workers=dm.num_workers > 0)
    if not train:
        sampler = DistributedEvalSampler(len(dataset), num_replicas=world, rank=rank)
        return DataLoader(dataset, batch_size=dm.eval_batch_size, sampler=sampler, **workers)
    sampler = EpochKeyedSampler(len(dataset), dm.batch_size, num_replicas=world, rank=rank, seed=dm.seed,
                                lengths=dataset.lengths() if dm.group_by_length else None,
                                accumulate_grad_batches=accumulate)
    return dm.resumable(ResumableDataLoader(dataset, batch_size=dm.batch_size, sampler=sampler, **workers))

