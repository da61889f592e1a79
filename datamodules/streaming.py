"""Streaming mode of the text DataModule (`streaming: true`): corpora larger than the disk or one machine's preparation.

The training split is never cached: documents stream from the sources (`datasets` streaming: a hub dataset with
`load_dataset(..., streaming=True)`, local files through `IterableDataset.from_generator`, one shard per file), are
tokenized in batches and packed on the fly (FULL-SENTENCES with a carry-over, or DOC-SENTENCES).

- Sharding: `datasets.distributed.split_dataset_by_node` gives each (rank, DataLoader worker) pair its own part of
  the stream: whole shards (files) when their number is a multiple of ranks x workers, else every
  (ranks x workers)-th document (every reader then reads all the data and keeps its share).
- Masks: the example index of a streamed block is a 62-bit hash of its tokens, so its masks are a function of
  (seed, epoch, block content), whatever the number of ranks and workers.
- Resume: the DataLoader is `datamodules.loaders.ResumableDataLoader` (torchdata's `StatefulDataLoader`), which
  Lightning saves in the checkpoint. Each worker's state is the source position (`datasets`
  `IterableDataset.state_dict()`) at the batch of documents where the next block starts, plus the number of that
  batch's stream tokens already emitted, so `--ckpt_path` continues with the block after the last one trained on. With `shuffle_buffer > 0` the documents in the shuffle buffer at the time of
  the checkpoint are not restored (a `datasets` limitation), so exact resume needs `shuffle_buffer: 0`.
- Epochs: the training loader never ends (train for `max_steps`): when a reader's stream ends it starts its next
  pass, with the shard order and shuffle buffer seeded by (seed, pass), and each block carries its pass number, the
  epoch its masks use. Ranks whose shares differ in length therefore never disagree about the end of an epoch (a
  DDP run would hang at the first rank's epoch end otherwise), and Lightning's own epoch counter stays at 0.
"""
from __future__ import annotations

import copy
import hashlib
from functools import partial

import numpy as np
import torch
from torch.utils.data import IterableDataset

from datamodules.corpus import documents_dataset, tokenize_documents

DOCUMENT_BATCH = 64  # documents tokenized per call (the resume granularity of the source)


def block_hash(block: np.ndarray) -> int:
    """A 62-bit id of a block's content (its example index for masking)."""
    return int.from_bytes(hashlib.blake2b(block.astype(np.int32).tobytes(), digest_size=8).digest(), "little") >> 2


class StreamingBlocks(IterableDataset):
    """Packed blocks of a streamed corpus: dicts of `input_ids` (int list), `example_index` (a content hash) and
    `epoch` (the pass over the stream the block comes from: the epoch its masks use)."""

    def __init__(self, datamodule, sources):
        super().__init__()
        self.sources = sources
        self.documents = partial(documents_dataset, sources, datamodule.text_column, datamodule.text_layout,
                                 datamodule.encoding, streaming=True)  # () -> a new datasets.IterableDataset
        self.tokenizer = datamodule.tokenizer
        self.size = datamodule.max_seq_length - 2
        self.packing = datamodule.packing
        self.drop_last_block = datamodule.drop_last_block
        self.bos, self.eos = datamodule.tokenizer.cls_token_id, datamodule.tokenizer.sep_token_id
        self.seed, self.shuffle_buffer = datamodule.seed, datamodule.shuffle_buffer
        self.rank, self.world_size, self.epoch = 0, 1, 0
        self.cycle = False  # True: start the next pass when the stream ends (the training loader's setting)
        self._state: dict | None = None  # position of the next block (set while iterating)
        self._resume: dict | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def set_rank(self, rank: int, world_size: int) -> None:
        self.rank, self.world_size = int(rank), int(world_size)

    def stream(self, epoch: int):
        """The documents of this rank and DataLoader worker: stream r * workers + w of ranks * workers."""
        from datasets.distributed import split_dataset_by_node

        docs = self.documents()
        if self.shuffle_buffer > 0:
            docs = docs.shuffle(seed=self.seed, buffer_size=self.shuffle_buffer)
        docs.set_epoch(epoch)
        worker = torch.utils.data.get_worker_info()
        workers, worker_id = (worker.num_workers, worker.id) if worker is not None else (1, 0)
        if self.world_size * workers > 1:
            docs = split_dataset_by_node(docs, rank=self.rank * workers + worker_id,
                                         world_size=self.world_size * workers)
        return docs

    # torchdata's StatefulDataLoader calls these inside each worker (or in the main process without workers).
    def state_dict(self) -> dict:
        return copy.deepcopy(self._state) if self._state is not None else {"epoch": self.epoch, "source": None}

    def load_state_dict(self, state: dict) -> None:
        self._resume = copy.deepcopy(state)

    def segments(self, batch: dict, first: bool) -> list[tuple[np.ndarray, bool]]:
        """A batch of documents as (tokens, ends a document) segments: FULL-SENTENCES one segment with a separator
        before every document but the stream's first, DOC-SENTENCES one segment per document."""
        docs = [np.asarray(ids, dtype=np.int32) for ids in tokenize_documents(batch, self.tokenizer)["ids"] if ids]
        if self.packing == "doc_sentences":
            return [(doc, True) for doc in docs]
        pieces = []
        for doc in docs:
            if pieces or not first:
                pieces.append(np.array([self.eos], dtype=np.int32))
            pieces.append(doc)
        return [(np.concatenate(pieces), False)] if pieces else []

    def __iter__(self):
        """One pass over this reader's stream, or (`cycle`) pass after pass with the pass number as the epoch."""
        resume, self._resume = self._resume, None
        if resume is None or resume.get("source") is None:
            resume = None
        epoch = resume["epoch"] if resume is not None else self.epoch
        while True:
            blocks = 0
            for example in self.one_pass(epoch, resume):
                blocks += 1
                yield example
            if not self.cycle:
                return
            if not blocks and resume is None:
                raise ValueError(f"streaming: rank {self.rank}'s share of {[s.describe() for s in self.sources]} "
                                 f"holds no block: give at least as many files (shards) as ranks x workers")
            resume, epoch = None, epoch + 1

    def one_pass(self, epoch: int, resume: dict | None):
        docs = self.stream(epoch)
        origin = {"epoch": epoch, "source": docs.state_dict(), "first": True, "skip": 0}
        if resume is not None:
            docs.load_state_dict(resume["source"])
            origin = resume
        skip = origin["skip"]
        carry = np.zeros(0, dtype=np.int32)
        batch_state, first = origin["source"], origin["first"]
        for batch in docs.iter(batch_size=DOCUMENT_BATCH):
            segments = self.segments(batch, first)
            cut = 0
            while skip and segments:  # resuming: drop what was already emitted
                tokens, boundary = segments[0]
                n = min(skip, len(tokens))
                skip, cut = skip - n, cut + n
                segments[0] = (tokens[n:], boundary)
                if not len(segments[0][0]):
                    segments.pop(0)
            if not len(carry):  # the next block starts in this batch: it is the resume point
                origin = {"epoch": epoch, "source": batch_state, "first": first, "skip": cut}
            for tokens, boundary in segments:
                carry = np.concatenate((carry, tokens))
                while len(carry) >= self.size or (boundary and len(carry)):
                    block, carry = carry[: self.size], carry[self.size:]
                    origin = dict(origin, skip=origin["skip"] + len(block))
                    self._state = origin
                    yield self._example(block, epoch)
            batch_state, first = docs.state_dict(), False
        if len(carry) and not self.drop_last_block:
            self._state = dict(origin, skip=origin["skip"] + len(carry))
            yield self._example(carry, epoch)

    def _example(self, chunk: np.ndarray, epoch: int) -> dict:
        block = np.concatenate(([self.bos], chunk, [self.eos])).astype(np.int64)
        return {"input_ids": block.tolist(), "example_index": block_hash(block), "epoch": epoch}


def streaming_dataloader(datamodule, dataset: StreamingBlocks):
    """An endless `ResumableDataLoader` over `dataset` (the stream starts its next pass by itself), this rank's share."""
    from datamodules.loaders import ResumableDataLoader

    world_size, rank, _ = datamodule.distributed_context()
    dataset.set_rank(rank, world_size)
    dataset.cycle = True
    return datamodule.resumable(ResumableDataLoader(dataset, batch_size=datamodule.batch_size,
                                                    collate_fn=datamodule.collator,
                                                    num_workers=datamodule.num_workers, persistent_workers=False))
