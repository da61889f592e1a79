"""TextCorpusDataModule: packed MLM blocks from corpora of any size, masked per batch on the device.

Where the blocks come from is `datamodules/corpus.py` (sources, text as it reads, tokenize and pack with batched
`datasets.map` into a memory-mapped Arrow cache); `datamodules/streaming.py` is the streaming mode for corpora larger
than the disk (`streaming: true`: the training split is read, tokenized and packed on the fly, sharded across ranks
and workers, resumable). Masking is `datamodules/masking.py`, applied in `on_after_batch_transfer`.
"""
from __future__ import annotations

import time
from functools import partial
from typing import Literal

import numpy as np
import torch

from datamodules.base import LitBertDataModule, data_progress, file_digest, open_arrow_files, resolve_data_file
from datamodules.corpus import (TEXT_LAYOUTS, Source, block_counts, documents_dataset, documents_per_chunk,
                                full_sentences_starts, load_hub_documents, map_in_chunks,
                                owner_starts, pack_doc_sentences, pack_full_sentences,
                                tokenize_batch_size, tokenize_documents)
from datamodules.files import DataFormatError
from datamodules.pairs import BERT_SHORT_SEQ_PROB, PAIR_PACKINGS, SENTENCE_OBJECTIVES
from models.mlm import IGNORE_INDEX

BATCH_COLUMNS = ["input_ids", "example_index"]  # (+ "epoch" in streamed batches: the pass the block comes from)
SPLITS = ("train", "val", "test")
PACKINGS = ("full_sentences", "doc_sentences", *PAIR_PACKINGS)


class TextCorpusDataModule(LitBertDataModule):
    """Packed MLM blocks; batches (after `on_after_batch_transfer`): masked `input_ids`, `attention_mask`,
    `labels` (-100 where not selected), `example_index` (the block's index in its split; a hash of the block in
    streaming mode). The pair formats (`packing: segment_pair | sentence_pair`, `datamodules/pairs.py`) add
    `token_type_ids` for tokenizers that make them, and `sentence_label` with a `sentence_objective`.

    The arguments LitBertDataModule documents are not repeated here; `max_seq_length` is the block length, special
    tokens included.

    Args:
        train_files: local training sources relative to data_dir (.txt, .jsonl, .parquet, GLUE .tsv, SQuAD .json).
        val_files: local validation sources (same formats).
        test_files: local test sources (same formats).
        dataset_name: a hub dataset (e.g. `Salesforce/wikitext`) or a local dataset folder, read with
            `datasets.load_dataset`; used for every split whose `*_split` is set, the files for the others.
        dataset_config: the dataset's configuration (e.g. `wikitext-103-raw-v1`), None for its default.
        train_split: the dataset's training split name (None: use train_files).
        val_split: the dataset's validation split name (None: use val_files).
        test_split: the dataset's test split name (None: use test_files).
        text_column: the text column of JSON lines, Parquet and hub records.
        text_layout: text files: "auto", "wikitext", "paragraphs" (blank-line separated) or "lines" (one per line).
        encoding: encoding of the text and JSON-lines files.
        streaming: read, tokenize and pack the training split on the fly (`datamodules/streaming.py`), no cache.
        shuffle_buffer: streaming mode: documents in the shuffle buffer (0: stream order, exactly resumable).
        packing: "full_sentences" (blocks cross documents, with a separator), "doc_sentences" (never cross),
            "segment_pair" (pairs of multi-sentence segments, BERT's input) or "sentence_pair" (pairs of sentences).
        sentence_objective: the pair formats' labels: "none", "nsp" (half the B segments from another document) or
            "sop" (half the pairs swapped); MaskedLMModule's `sentence_objective` must be the same.
        short_seq_prob: segment_pair: the fraction of segment chunks built to a random shorter length (BERT's 0.1).
        drop_last_block: drop the corpus' final partial block.
        mlm_probability: fraction of the tokens selected for prediction (`datamodules.masking.MLMMasker`).
        masking: "dynamic" (a new mask per epoch) or "static" (`static_duplicates` fixed masks used in turn).
        static_duplicates: number of fixed masks of static masking.
        whole_word_mask: select whole words (word starts by the tokenizer's kind).
        mlm_smoothing: DistilBERT's smoothing: mask rare tokens more (counts from the train blocks).
        mask_seed: masks are a function of (mask_seed, epoch, example_index).
        mask: False gives unmasked batches (no `labels`), e.g. for a distillation module that masks itself.
        max_train_samples: keep the FIRST N training blocks (deterministic).
        max_eval_samples: keep the FIRST N validation/test blocks.
    """

    def __init__(
        self,
        tokenizer: str,
        train_files: list[str] = ["wikitext-2/train.txt"],  # noqa: B006 (never mutated)
        val_files: list[str] = ["wikitext-2/valid.txt"],  # noqa: B006
        test_files: list[str] = ["wikitext-2/test.txt"],  # noqa: B006
        dataset_name: str | None = None,
        dataset_config: str | None = None,
        train_split: str | None = "train",
        val_split: str | None = "validation",
        test_split: str | None = "test",
        text_column: str = "text",
        text_layout: Literal["auto", "wikitext", "paragraphs", "lines"] = "auto",
        encoding: str = "utf-8",
        streaming: bool = False,
        shuffle_buffer: int = 10000,
        packing: Literal["full_sentences", "doc_sentences", "segment_pair", "sentence_pair"] = "full_sentences",
        sentence_objective: Literal["none", "nsp", "sop"] = "none",
        short_seq_prob: float = BERT_SHORT_SEQ_PROB,
        drop_last_block: bool = True,
        mlm_probability: float = 0.15,
        masking: Literal["dynamic", "static"] = "dynamic",
        static_duplicates: int = 10,
        whole_word_mask: bool = False,
        mlm_smoothing: float = 0.0,
        mask_seed: int = 0,
        mask: bool = True,
        data_dir: str | None = None,
        max_seq_length: int = 512,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        num_proc: int = 1,
        group_by_length: bool = False,
        pad_to_multiple_of: int | None = None,
        cache_dir: str | None = None,
        seed: int = 42,
        max_train_samples: int | None = None,
        max_eval_samples: int | None = None,
    ):
        super().__init__(**self.shared_arguments(locals()))
        self.save_hyperparameters()
        if packing not in PACKINGS:
            raise ValueError(f"packing must be one of {PACKINGS}, got {packing!r}")
        if sentence_objective not in SENTENCE_OBJECTIVES:
            raise ValueError(f"sentence_objective must be one of {SENTENCE_OBJECTIVES}, got {sentence_objective!r}")
        if sentence_objective != "none" and packing not in PAIR_PACKINGS:
            raise ValueError(f"sentence_objective {sentence_objective!r} needs pairs: set packing to segment_pair or "
                             f"sentence_pair (got {packing!r})")
        if not 0.0 <= short_seq_prob <= 1.0:
            raise ValueError(f"short_seq_prob must be a probability in [0, 1], got {short_seq_prob}")
        if streaming and packing in PAIR_PACKINGS:
            raise ValueError(f"packing {packing!r} is built in the cached mode only: set streaming false")
        if masking not in ("dynamic", "static"):
            raise ValueError(f"masking must be 'dynamic' or 'static', got {masking!r}")
        if text_layout not in TEXT_LAYOUTS:
            raise ValueError(f"text_layout must be one of {TEXT_LAYOUTS}, got {text_layout!r}")
        if streaming and mlm_smoothing > 0:
            raise ValueError("mlm_smoothing needs the token counts of the whole training split, which streaming mode "
                             "never sees: use the cached (non-streaming) mode for it")
        if streaming and max_train_samples is not None:
            raise ValueError("max_train_samples keeps the first N blocks of the cached training split; streaming mode "
                             "has no such split: bound the run with trainer.max_steps instead")
        self.task_name = "mlm"
        self.files = {"train": list(train_files or []), "val": list(val_files or []), "test": list(test_files or [])}
        self.dataset_name, self.dataset_config = dataset_name, dataset_config
        self.hub_splits = {"train": train_split, "val": val_split, "test": test_split}
        self.text_column, self.text_layout, self.encoding = text_column, text_layout, encoding
        self.streaming, self.shuffle_buffer = streaming, shuffle_buffer
        self.packing, self.drop_last_block = packing, drop_last_block
        self.sentence_objective, self.short_seq_prob = sentence_objective, short_seq_prob
        self.masker_kwargs = dict(mlm_probability=mlm_probability, seed=mask_seed, whole_word_mask=whole_word_mask,
                                  static_duplicates=static_duplicates if masking == "static" else None,
                                  mlm_smoothing=mlm_smoothing)
        self.mask = mask
        self.max_samples = {"train": max_train_samples, "val": max_eval_samples, "test": max_eval_samples}
        self.datasets: dict = {}
        self.masker = None

    # ---- sources -----------------------------------------------------------------------------------------------
    def sources(self, split: str) -> list[Source]:
        """The sources of `split`: the hub dataset's split if `dataset_name` and `<split>_split` are set, else files."""
        if self.dataset_name and self.hub_splits[split]:
            return [Source(hub=(self.dataset_name, self.dataset_config, self.hub_splits[split]))]
        if not self.files[split]:
            raise ValueError(f"no {split}_files given (and no dataset_name with a {split}_split), but this stage "
                             f"needs the {split} split")
        return [Source(path=resolve_data_file(self.data_dir, f)) for f in self.files[split]]

    def source_key(self, source: Source) -> tuple:
        """What identifies a source's content in the cache key (file bytes, or the hub dataset's fingerprint)."""
        if source.hub is not None:
            return (*source.hub, self.text_column, load_hub_documents(*source.hub, self.text_column)._fingerprint)
        return (source.path.name, file_digest(source.path))

    # ---- the cached (memory-mapped) blocks of a split -----------------------------------------------------------
    def load_split(self, split: str):
        """The packed blocks of `split` ("train", "val", "test") as a memory-mapped `datasets.Dataset` (cached)."""
        sources = self.sources(split)
        limit = self.max_samples[split]
        key = self.cache_key(sources=[self.source_key(s) for s in sources], text_layout=self.text_layout,
                             text_column=self.text_column, encoding=self.encoding, packing=self.packing,
                             max_seq_length=self.max_seq_length, limit=limit, drop_last_block=self.drop_last_block,
                             **({"short_seq_prob": self.short_seq_prob} if self.packing == "segment_pair" else {}))
        return self.cached_dataset(f"mlm-{split}", key, partial(self.build_blocks, sources, split, limit))

    def build_blocks(self, sources: list[Source], split: str, limit: int | None, workdir):
        """documents -> token ids -> blocks: batched maps with `num_proc` processes, all Arrow on disk, the input
        read about `datamodules.corpus.CHUNK_BYTES` at a time (`map_in_chunks`)."""
        import datasets

        Sequence, Value = datasets.Sequence, datasets.Value
        start = time.monotonic()
        docs = documents_dataset(sources, self.text_column, self.text_layout, self.encoding, workdir=workdir)
        if not len(docs):
            raise DataFormatError(f"no text in {[s.describe() for s in sources]}: the {split} split has no documents")
        data_progress(f"{split}: {len(docs):,} documents read in {time.monotonic() - start:.1f} s; tokenizing")
        batch = tokenize_batch_size(docs)  # documents of about BATCH_TEXT_BYTES
        chunk = documents_per_chunk(batch)
        if self.packing in PAIR_PACKINGS:
            return self.build_pairs(docs, split, limit, batch, chunk, workdir)
        features = datasets.Features({"ids": Sequence(Value("int32")), "n": Value("int64")})
        tokens = open_arrow_files(map_in_chunks(
            docs, tokenize_documents, name="tokens", workdir=workdir, rows_per_chunk=chunk, num_proc=self.num_proc,
            fn_kwargs={"tokenizer": self.tokenizer}, batch_size=batch, writer_batch_size=batch,
            remove_columns=docs.column_names, features=features))
        lengths = tokens.data.column("n").to_numpy()
        data_progress(f"{split}: {int(lengths.sum()):,} tokens after {time.monotonic() - start:.1f} s; packing blocks")
        size = self.max_seq_length - 2
        n_blocks, first_block = block_counts(lengths, size, self.packing, self.drop_last_block, limit)
        if n_blocks == 0:
            raise DataFormatError(f"no text in {[s.describe() for s in sources]}: the {split} split has no blocks "
                                  f"of {self.max_seq_length} tokens")
        tok = self.tokenizer
        if self.packing == "full_sentences":
            starts = full_sentences_starts(lengths)
            needed = int(np.searchsorted(owner_starts(starts), (n_blocks - 1) * size, side="right"))  # owners
            pack = partial(pack_full_sentences, tokens=tokens.select_columns(["ids"]), starts=starts,
                           n_blocks=n_blocks, size=size, bos=tok.cls_token_id, eos=tok.sep_token_id,
                           sep=tok.sep_token_id)
        else:
            needed = int(np.searchsorted(first_block, n_blocks - 1, side="right"))
            pack = partial(pack_doc_sentences, first_block=first_block, n_blocks=n_blocks, size=size,
                           bos=tok.cls_token_id, eos=tok.sep_token_id)
        owners = tokens.select(range(needed)) if needed < len(tokens) else tokens
        features = datasets.Features({"input_ids": Sequence(Value("int32")), "example_index": Value("int64"),
                                      "document_index": Value("int64")})
        # About 4 bytes of text per token, and 4 bytes per int32 id: the same documents per batch and per chunk.
        return open_arrow_files(map_in_chunks(
            owners.with_format("numpy"), pack, name="blocks", workdir=workdir, rows_per_chunk=chunk,
            num_proc=self.num_proc, with_indices=True, batch_size=batch, writer_batch_size=1024,
            remove_columns=tokens.column_names, features=features))

    def build_pairs(self, docs, split: str, limit: int | None, batch: int, chunk: int, workdir):
        """documents -> (A, B) segment pairs (`datamodules.pairs.pair_examples`, the document's sentences grouped
        within max_seq_length); the NSP/SOP variant of each pair is drawn per epoch by `PairDataset`."""
        import datasets

        from datamodules.pairs import pair_examples

        Sequence, Value = datasets.Sequence, datasets.Value
        budget = self.max_seq_length - self.tokenizer.num_special_tokens_to_add(pair=True)
        features = datasets.Features({"first": Sequence(Value("int32")), "second": Sequence(Value("int32")),
                                      "document_index": Value("int64"), "length": Value("int64")})
        build = partial(pair_examples, tokenizer=self.tokenizer, budget=budget,
                        max_pieces=2 if self.packing == "sentence_pair" else None,
                        short_seq_prob=self.short_seq_prob if self.packing == "segment_pair" else 0.0)
        pairs = open_arrow_files(map_in_chunks(
            docs, build, name="pairs", workdir=workdir, rows_per_chunk=chunk, num_proc=self.num_proc,
            with_indices=True, batch_size=batch, writer_batch_size=1024, remove_columns=docs.column_names,
            features=features))
        if not len(pairs):
            raise DataFormatError(f"the {split} split has no document of two or more tokens to make pairs from")
        if limit is not None and limit < len(pairs):  # the first N pairs, written anew (the cache keeps map files)
            pairs = pairs.select(range(limit)).flatten_indices(cache_file_name=str(workdir / "pairs-first.arrow"))
        return pairs

    def token_counts(self) -> np.ndarray:
        """Occurrences of each token id in the train blocks (for mlm_smoothing), read batch by batch."""
        import pyarrow.compute as pc

        counts = np.zeros(len(self.tokenizer), dtype=np.int64)
        train = self.datasets["train"]
        train = train.rows if hasattr(train, "rows") else train  # a PairDataset: its segments
        columns = [c for c in ("input_ids", "first", "second") if c in train.column_names]
        for table in train.with_format("arrow").select_columns(columns).iter(1 << 14):
            for column in columns:
                flat = pc.list_flatten(table.column(column)).to_numpy()
                counts += np.bincount(flat, minlength=len(counts))[: len(counts)]
        return counts

    # ---- Lightning hooks -------------------------------------------------------------------------------------------
    def needed_splits(self, stage: str | None) -> list[str]:
        needed = {"fit": ["train", "val"], "validate": ["val"], "test": ["test"], "predict": ["val"],
                  None: ["train", "val"]}[stage]
        if self.masker_kwargs["mlm_smoothing"] > 0 and self.mask and "train" not in needed:
            needed = ["train", *needed]
        return needed

    def cached_splits(self, stage: str | None) -> list[str]:
        """The splits read through the Arrow cache (all but a streamed training split)."""
        return [s for s in self.needed_splits(stage) if not (s == "train" and self.streaming)]

    def prepare_data(self) -> None:
        """Build the caches once (Lightning runs this on one process per node before the others' `setup`)."""
        for split in self.cached_splits(self.trainer_stage()):
            self.load_split(split)

    def setup(self, stage: str | None = None) -> None:
        for split in self.needed_splits(stage):
            if split in self.datasets:
                continue
            if split == "train" and self.streaming:
                from datamodules.streaming import StreamingBlocks

                self.datasets[split] = StreamingBlocks(self, self.sources(split))
            elif self.packing in PAIR_PACKINGS:
                from datamodules.pairs import PairDataset

                self.datasets[split] = PairDataset(self.load_split(split), self.tokenizer, self.sentence_objective,
                                                   self.packing, self.masker_kwargs["seed"])
            else:
                self.datasets[split] = self.load_split(split)
        if self.mask and self.masker is None:
            from datamodules.masking import MLMMasker

            counts = self.token_counts() if self.masker_kwargs["mlm_smoothing"] > 0 else None
            self.masker = MLMMasker(self.tokenizer, token_counts=counts, **self.masker_kwargs)

    def make_dataloader(self, dataset, train: bool, columns: list[str] | None = None):
        """The base's loader for packed blocks; pairs go through `datamodules.pairs.pair_dataloader` (keys carry
        the epoch, see there)."""
        if self.packing in PAIR_PACKINGS:
            from datamodules.pairs import pair_dataloader

            return pair_dataloader(self, dataset, train)
        return super().make_dataloader(dataset, train, columns)

    def train_dataloader(self):
        if self.streaming:
            from datamodules.streaming import streaming_dataloader

            return streaming_dataloader(self, self.datasets["train"])
        return self.make_dataloader(self.datasets["train"], train=True, columns=BATCH_COLUMNS)

    def val_dataloader(self):
        return self.make_dataloader(self.datasets["val"], train=False, columns=BATCH_COLUMNS)

    def test_dataloader(self):
        return self.make_dataloader(self.datasets["test"], train=False, columns=BATCH_COLUMNS)

    def predict_dataloader(self):
        return self.val_dataloader()

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """Mask on the device: epoch = trainer.current_epoch while training, 0 otherwise (comparable validation)."""
        if not self.mask or "labels" in batch:
            return batch
        if self.masker is None:
            raise RuntimeError("TextCorpusDataModule.setup() must run before batches are masked")
        trainer = self.trainer
        training = trainer is not None and trainer.training
        passes = batch.pop("epoch", None)  # streamed blocks carry the pass they come from
        if passes is None or not training:
            epoch = trainer.current_epoch if training else 0
            batch["input_ids"], batch["labels"] = self.masker(batch["input_ids"], batch["attention_mask"],
                                                              batch["example_index"], epoch)
            return batch
        input_ids, labels = batch["input_ids"].clone(), torch.full_like(batch["input_ids"], IGNORE_INDEX)
        for epoch in passes.unique().tolist():  # one pass per batch, two where a stream wraps around
            rows = passes == epoch
            input_ids[rows], labels[rows] = self.masker(batch["input_ids"][rows], batch["attention_mask"][rows],
                                                        batch["example_index"][rows], epoch)
        batch["input_ids"], batch["labels"] = input_ids, labels
        return batch
