"""MLM corpora: documents from text files, GLUE TSVs or SQuAD JSON, packed into blocks; masking per batch.

Sources (paths relative to data_dir; the format is told by the extension and layout):
- `.txt`: WikiText layout (` = Heading = ` top-level lines start an article = a document; ` = = Sub = = ` lines are
  sections inside it; blank lines separate paragraphs). A text file without top-level headings is read as documents
  separated by blank lines (the BERT pretraining-data convention).
- `.tsv` under `glue/<TASK>/`: each row a document (the task's text column(s)).
- `.json`: SQuAD format: each article a document (its paragraphs' contexts).

Packing (RoBERTa, Liu et al. 2019): FULL-SENTENCES fills every block with contiguous text that crosses document
boundaries, with an extra separator token between documents; DOC-SENTENCES never crosses a document, so blocks at
document ends are shorter. Each block is `<s> ... </s>` (`[CLS] ... [SEP]` for BERT tokenizers) of at most
`max_seq_length` tokens. Only the very last block may be partial, and `drop_last_block` drops it.
"""
from __future__ import annotations

import itertools
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np

from datamodules.base import (DataFormatError, LitBertDataModule, decode_text_file, file_digest, key_digest,
                              read_table, resolve_data_file)

BATCH_COLUMNS = ["input_ids", "example_index"]


def is_top_heading(line: str) -> bool:
    """` = Title = ` (an article), not ` = = Section = = `."""
    s = line.strip()
    return len(s) > 4 and s.startswith("= ") and s.endswith(" =") and not s.startswith("= =")


def read_text_documents(path: Path) -> list[list[str]]:
    """Documents (lists of non-blank lines) of a WikiText-layout or blank-line-separated text file."""
    lines = decode_text_file(path).splitlines()
    docs: list[list[str]] = []
    if any(is_top_heading(line) for line in lines):
        for line in lines:
            if is_top_heading(line) or not docs:
                docs.append([])
            if line.strip():
                docs[-1].append(line)
    else:
        for blank, group in itertools.groupby(lines, key=lambda x: not x.strip()):
            if not blank:
                docs.append(list(group))
    return [d for d in docs if d]


def read_glue_documents(path: Path) -> list[list[str]]:
    """Each row of a GLUE TSV is a document; its text column(s) are its lines."""
    from datamodules.glue import GLUE_TASKS, normalize_task_name

    try:
        spec = GLUE_TASKS[normalize_task_name(path.parent.name)]
    except ValueError:
        raise DataFormatError(f"{path}: a .tsv corpus source must be a GLUE file under glue/<TASK>/ (to know its "
                              f"text columns); {path.parent.name!r} is not a GLUE task folder") from None
    is_test = path.name.startswith("test")
    table = read_table(path, header=spec.header or is_test)
    columns = spec.test_text_columns if is_test and spec.test_text_columns else spec.text_columns
    values = [table.values(c) for c in columns]
    return [[str(v) for v in row] for row in zip(*values)]


def read_squad_documents(path: Path) -> list[list[str]]:
    """Each SQuAD article is a document; its paragraphs' contexts are its lines."""
    from datamodules.squad import load_squad_json

    data = load_squad_json(path)
    try:
        return [[p["context"] for p in article["paragraphs"]] for article in data["data"]]
    except (KeyError, TypeError) as err:
        raise DataFormatError(f"{path}: expected SQuAD articles with paragraphs[].context ({err!r})") from None


def read_documents(path: Path) -> list[list[str]]:
    suffix = path.suffix.lower()
    if suffix == ".json":
        return read_squad_documents(path)
    if suffix == ".tsv":
        return read_glue_documents(path)
    if suffix in (".txt", ".tokens", ".raw", ""):
        return read_text_documents(path)
    raise DataFormatError(f"{path}: unknown corpus format {suffix!r}; expected .txt (WikiText layout or blank-line "
                          f"separated documents), .tsv (a GLUE file) or .json (SQuAD)")


def tokenize_lines(batch: dict, tokenizer) -> dict:
    return {"ids": tokenizer(batch["text"], add_special_tokens=False, verbose=False)["input_ids"]}


def pack_blocks(documents: list[list[int]], max_seq_length: int, mode: str, bos_id: int, eos_id: int,
                separator_id: int, drop_last_block: bool) -> tuple[list[list[int]], list[int]]:
    """(blocks, index of the document each block starts in). Each block is [bos] + up to L-2 tokens + [eos]."""
    size = max_seq_length - 2
    chunks, first_doc = [], []
    if mode == "full_sentences":
        stream, doc_of = [], []
        for d, doc in enumerate(documents):
            if stream:
                stream.append(separator_id)  # the extra separator between documents
                doc_of.append(d)
            stream.extend(doc)
            doc_of.extend([d] * len(doc))
        for i in range(0, len(stream), size):
            chunks.append(stream[i:i + size])
            first_doc.append(doc_of[i])
    else:
        for d, doc in enumerate(documents):
            for i in range(0, len(doc), size):
                chunks.append(doc[i:i + size])
                first_doc.append(d)
    if drop_last_block and chunks and len(chunks[-1]) < size:
        chunks.pop()
        first_doc.pop()
    return [[bos_id, *c, eos_id] for c in chunks], first_doc


class TextCorpusDataModule(LitBertDataModule):
    """Packed MLM blocks; batches (after `on_after_batch_transfer`): masked `input_ids`, `attention_mask`,
    `labels` (-100 where not selected), `example_index` (the block's index in its split).

    Args (besides LitBertDataModule's; `max_seq_length` is the block length, special tokens included):
        train_files / val_files / test_files: sources relative to data_dir (see the module docstring).
        packing: "full_sentences" or "doc_sentences". drop_last_block: drop the corpus' final partial block.
        max_train_samples / max_eval_samples: keep the FIRST N blocks (deterministic).
        mlm_probability, masking ("dynamic": a new mask per epoch; "static": `static_duplicates` fixed masks used in
            turn), whole_word_mask, mlm_smoothing (DistilBERT: mask rare tokens more, counts from the train blocks),
            mask_seed: the `datamodules.masking.MLMMasker` settings; masks are a function of (seed, epoch, block).
        mask: False gives unmasked batches (no `labels`), e.g. for a distillation module that masks itself.
    """

    def __init__(
        self,
        tokenizer: str,
        train_files: list[str] = ["wikitext-2/train.txt"],  # noqa: B006 (never mutated)
        val_files: list[str] = ["wikitext-2/valid.txt"],  # noqa: B006
        test_files: list[str] = ["wikitext-2/test.txt"],  # noqa: B006
        packing: Literal["full_sentences", "doc_sentences"] = "full_sentences",
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
        super().__init__(tokenizer, data_dir, max_seq_length, batch_size, eval_batch_size, num_workers, num_proc,
                         group_by_length, pad_to_multiple_of, cache_dir, seed)
        self.save_hyperparameters()
        if packing not in ("full_sentences", "doc_sentences"):
            raise ValueError(f"packing must be 'full_sentences' or 'doc_sentences', got {packing!r}")
        if masking not in ("dynamic", "static"):
            raise ValueError(f"masking must be 'dynamic' or 'static', got {masking!r}")
        self.task_name = "mlm"
        self.files = {"train": list(train_files), "val": list(val_files), "test": list(test_files)}
        self.packing, self.drop_last_block = packing, drop_last_block
        self.masker_kwargs = dict(mlm_probability=mlm_probability, seed=mask_seed, whole_word_mask=whole_word_mask,
                                  static_duplicates=static_duplicates if masking == "static" else None,
                                  mlm_smoothing=mlm_smoothing)
        self.mask = mask
        self.max_samples = {"train": max_train_samples, "val": max_eval_samples, "test": max_eval_samples}
        self.datasets: dict = {}
        self.masker = None

    def load_split(self, split: str):
        """The packed blocks of `split` ("train", "val", "test") as a `datasets.Dataset` (cached)."""
        from datasets import Dataset

        if not self.files[split]:
            raise ValueError(f"no {split}_files given, but this stage needs the {split} split")
        paths = [resolve_data_file(self.data_dir, f) for f in self.files[split]]
        limit = self.max_samples[split]
        key = self.cache_key(sources=[(str(f), file_digest(p)) for f, p in zip(self.files[split], paths)],
                             packing=self.packing, max_seq_length=self.max_seq_length, limit=limit,
                             drop_last_block=self.drop_last_block)

        def build():
            docs = [doc for p in paths for doc in read_documents(p)]
            lines = Dataset.from_dict({"doc": [d for d, doc in enumerate(docs) for _ in doc],
                                       "text": [line for doc in docs for line in doc]})
            ids = lines.map(partial(tokenize_lines, tokenizer=self.tokenizer), remove_columns=["text"],
                            **self.map_kwargs(len(lines), key_digest(key)))
            token_docs = [[] for _ in docs]  # concatenate each document's lines
            for d, line_ids in zip(ids["doc"], ids["ids"]):
                token_docs[d].extend(line_ids)
            tok = self.tokenizer
            blocks, first_doc = pack_blocks([d for d in token_docs], self.max_seq_length, self.packing,
                                            tok.cls_token_id, tok.sep_token_id, tok.sep_token_id,
                                            self.drop_last_block)
            if limit is not None:
                blocks, first_doc = blocks[:limit], first_doc[:limit]
            if not blocks:
                raise DataFormatError(f"no text in {[str(p) for p in paths]}: the {split} split has no blocks")
            return Dataset.from_dict({"input_ids": blocks, "example_index": list(range(len(blocks))),
                                      "document_index": first_doc})

        return self.cached_dataset(f"mlm-{split}", key, build)

    def token_counts(self) -> np.ndarray:
        """Occurrences of each token id in the train blocks (for mlm_smoothing)."""
        import pyarrow.compute as pc

        flat = pc.list_flatten(self.datasets["train"].data.column("input_ids")).to_numpy()
        return np.bincount(flat, minlength=len(self.tokenizer))

    def setup(self, stage: str | None = None) -> None:
        needed = {"fit": ["train", "val"], "validate": ["val"], "test": ["test"], "predict": ["val"],
                  None: ["train", "val"]}[stage]
        if self.masker_kwargs["mlm_smoothing"] > 0 and self.mask:
            needed = ["train", *needed]
        for split in needed:
            if split not in self.datasets:
                self.datasets[split] = self.load_split(split)
        if self.mask and self.masker is None:
            from datamodules.masking import MLMMasker

            counts = self.token_counts() if self.masker_kwargs["mlm_smoothing"] > 0 else None
            self.masker = MLMMasker(self.tokenizer, token_counts=counts, **self.masker_kwargs)

    def train_dataloader(self):
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
        epoch = trainer.current_epoch if trainer is not None and trainer.training else 0
        batch["input_ids"], batch["labels"] = self.masker(batch["input_ids"], batch["attention_mask"],
                                                          batch["example_index"], epoch)
        return batch
