"""MLM corpora of any size: sources -> documents -> token ids -> packed blocks, never the corpus in Python lists.

Sources (one corpus may mix local ones; see docs/data.md):
- `.txt` / `.tokens` / `.raw` / no suffix: text files, read line by line. `text_layout`: "auto" (the WikiText layout,
  where ` = Title = ` lines start articles, if the first MiB has such a line, else "paragraphs"), "wikitext",
  "paragraphs" (blank-line-separated documents) or "lines" (one document per line).
- `.jsonl` (JSON lines) and `.parquet`: one document per record, from its `text_column`.
- `.tsv` under `glue/<TASK>/`: each row a document (its text columns); `.json`: SQuAD (each article a document).
- a hub dataset by name (`load_dataset(dataset_name, dataset_config, split=...)`, a local dataset folder works the
  same way), one document per record of `text_column`.

Text as it reads: the lines (and paragraphs, GLUE columns, SQuAD contexts) of a document are stripped and joined
with one space, so a byte-level BPE sees every word start (`Ġword`) and no trailing space becomes a lone `Ġ`.
Records (JSON lines, Parquet, hub) are taken as written, stripped at both ends.

Pipeline, each step memory-bounded and written to memory-mapped Arrow by `datasets` (the maps run on ~256 MB chunks
of their input, `map_in_chunks`):
1. documents: `Dataset.from_generator` over the sources (files are read line by line, one document at a time);
2. tokens: batched `Dataset.map` with `num_proc` processes (`tokenize_documents`), ids stored as int32;
3. blocks: batched `Dataset.map` over the tokenized documents (`pack_full_sentences` / `pack_doc_sentences`), exact
   across batch and process boundaries: each batch of documents emits the blocks that start inside it and reads the
   few following documents it needs from the memory-mapped token table.
Packing (RoBERTa, Liu et al. 2019): FULL-SENTENCES fills every block with contiguous text that crosses document
boundaries, with an extra separator token between documents; DOC-SENTENCES never crosses a document. Each block is
`<s> ... </s>` (`[CLS] ... [SEP]` for BERT tokenizers) of at most `max_seq_length` tokens; only the final block (the
last of each document for DOC-SENTENCES) may be shorter, and `drop_last_block` drops the corpus' final partial one.
"""
from __future__ import annotations

import functools
import json
import re
import time
import uuid
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Iterator

import numpy as np

from datamodules.files import DataFormatError, iter_decoded_lines, iter_json_records

TEXT_LAYOUTS = ("auto", "wikitext", "paragraphs", "lines")
TEXT_SUFFIXES = (".txt", ".tokens", ".raw", "")
_TOP_HEADING = re.compile(r"^\s*= [^=].* =\s*$")


def is_top_heading(line: str) -> bool:
    """` = Title = ` (an article), not ` = = Section = = `."""
    return bool(_TOP_HEADING.match(line)) and len(line.strip()) > 4


def join_pieces(pieces) -> str:
    """A document's lines/paragraphs stripped and joined with one space (see the module docstring)."""
    return " ".join(p for p in (str(x).strip() for x in pieces) if p)


@dataclass(frozen=True)
class Source:
    """One corpus source: a local file, or a hub dataset split (`hub` = (name, config, split))."""
    path: Path | None = None
    hub: tuple[str, str | None, str] | None = None

    def describe(self) -> str:
        return str(self.path) if self.path is not None else "hub dataset {}{} split {}".format(
            self.hub[0], f" ({self.hub[1]})" if self.hub[1] else "", self.hub[2])


# ---- local files, read one document at a time ----------------------------------------------------------------
def detect_layout(path: Path, encoding: str) -> str:
    """'wikitext' if the first MiB of the file has a ` = Title = ` line, else 'paragraphs'."""
    seen = 0
    for _, line in iter_decoded_lines(path, encoding):
        if is_top_heading(line):
            return "wikitext"
        seen += len(line) + 1
        if seen > 1 << 20:
            break
    return "paragraphs"


def iter_text_documents(path: Path, layout: str = "auto", encoding: str = "utf-8") -> Iterator[str]:
    """Documents of a text file, one at a time (memory: one document)."""
    if layout not in TEXT_LAYOUTS:
        raise ValueError(f"text_layout must be one of {TEXT_LAYOUTS}, got {layout!r}")
    if layout == "auto":
        layout = detect_layout(path, encoding)
    pieces: list[str] = []
    for _, line in iter_decoded_lines(path, encoding):
        if layout == "lines":
            if line.strip():
                yield line.strip()
            continue
        boundary = is_top_heading(line) if layout == "wikitext" else not line.strip()
        if boundary and pieces:
            yield join_pieces(pieces)
            pieces = []
        if line.strip():
            pieces.append(line)
    if pieces:
        yield join_pieces(pieces)


def iter_jsonl_documents(path: Path, text_column: str, encoding: str = "utf-8") -> Iterator[str]:
    for number, record in iter_json_records(path, encoding):
        if text_column not in record:
            raise DataFormatError(f"{path}, line {number}: expected a JSON object with the text column "
                                  f"{text_column!r} (set text_column), got {sorted(record)}")
        if record[text_column] is not None and str(record[text_column]).strip():
            yield str(record[text_column]).strip()


def iter_parquet_documents(path: Path, text_column: str) -> Iterator[str]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as err:  # pyarrow raises several types for a non-Parquet file
        raise DataFormatError(f"{path}: not a Parquet file ({err})") from None
    names = parquet.schema_arrow.names
    if text_column not in names:
        raise DataFormatError(f"{path}: no text column {text_column!r} (set text_column); the file has {names}")
    for batch in parquet.iter_batches(batch_size=1024, columns=[text_column]):
        for text in batch.column(0).to_pylist():
            if text is not None and str(text).strip():
                yield str(text).strip()


def iter_glue_documents(path: Path) -> Iterator[str]:
    """Each row of a GLUE TSV is a document: its text column(s) joined."""
    from datamodules.files import read_table
    from datamodules.tasks import GLUE_TASKS, normalize_task_name

    try:
        spec = GLUE_TASKS[normalize_task_name(path.parent.name)]
    except ValueError:
        raise DataFormatError(f"{path}: a .tsv corpus source must be a GLUE file under glue/<TASK>/ (to know its "
                              f"text columns); {path.parent.name!r} is not a GLUE task folder") from None
    is_test = path.name.startswith("test")
    table = read_table(path, header=spec.header or is_test)
    columns = spec.test_text_columns if is_test and spec.test_text_columns else spec.text_columns
    for row in zip(*(table.values(c) for c in columns)):
        text = join_pieces(row)
        if text:
            yield text


def iter_squad_documents(path: Path) -> Iterator[str]:
    """Each SQuAD article is a document: its paragraphs' contexts joined."""
    from datamodules.squad import load_squad_json

    data = load_squad_json(path)
    try:
        articles = [[p["context"] for p in article["paragraphs"]] for article in data["data"]]
    except (KeyError, TypeError) as err:
        raise DataFormatError(f"{path}: expected SQuAD articles with paragraphs[].context ({err!r})") from None
    for contexts in articles:
        if join_pieces(contexts):
            yield join_pieces(contexts)


def iter_file_documents(path: Path, text_column: str = "text", text_layout: str = "auto",
                        encoding: str = "utf-8") -> Iterator[str]:
    """The documents of one local file, by its suffix (see the module docstring)."""
    suffix = path.suffix.lower()
    if suffix in TEXT_SUFFIXES:
        return iter_text_documents(path, text_layout, encoding)
    if suffix == ".jsonl":
        return iter_jsonl_documents(path, text_column, encoding)
    if suffix == ".parquet":
        return iter_parquet_documents(path, text_column)
    if suffix == ".tsv":
        return iter_glue_documents(path)
    if suffix == ".json":
        return iter_squad_documents(path)
    raise DataFormatError(f"{path}: unknown corpus format {suffix!r}; expected .txt (WikiText layout, blank-line "
                          f"separated or one document per line), .jsonl or .parquet (text_column), .tsv (a GLUE "
                          f"file) or .json (SQuAD)")


def generate_documents(paths: list[str], text_column: str, text_layout: str, encoding: str) -> Iterator[dict]:
    """`Dataset.from_generator` body: {"text": document} for every document of every file, in order."""
    for path in paths:
        for text in iter_file_documents(Path(path), text_column, text_layout, encoding):
            yield {"text": text}


def load_hub_documents(name: str, config: str | None, split: str, text_column: str, streaming: bool = False):
    """A hub dataset split (or a local dataset folder, read the same way) as a one-column {"text"} dataset.

    A cached (non-streaming) split is loaded once per process (the cache key asks for its fingerprint, the build for
    its rows); a streamed one is made anew each time, since iterating it changes its state."""
    if streaming:
        return _load_hub_documents(name, config, split, text_column, streaming=True)
    return _load_hub_documents_once(name, config, split, text_column)


@functools.lru_cache(maxsize=16)
def _load_hub_documents_once(name: str, config: str | None, split: str, text_column: str):
    return _load_hub_documents(name, config, split, text_column, streaming=False)


def _load_hub_documents(name: str, config: str | None, split: str, text_column: str, streaming: bool):
    import datasets

    try:
        data = datasets.load_dataset(name, config, split=split, streaming=streaming)
    except (ConnectionError, FileNotFoundError, ValueError) as err:
        raise DataFormatError(f"could not load dataset {name!r} (config {config!r}, split {split!r}): {err}. "
                              f"Offline, use a local dataset folder or local files (train_files)") from None
    columns = list(data.column_names or []) if data.column_names is not None else list(data.features or {})
    if text_column not in columns:
        raise DataFormatError(f"dataset {name!r} split {split!r} has no text column {text_column!r} "
                              f"(set text_column); its columns are {columns}")
    data = data.select_columns([text_column])
    return data.rename_column(text_column, "text") if text_column != "text" else data


def documents_dataset(sources: list[Source], text_column: str, text_layout: str, encoding: str,
                      workdir: Path | None = None, streaming: bool = False):
    """One {"text"} dataset of all documents of `sources`, in order: Arrow files under `workdir / "documents"`
    (`Dataset.from_generator`), or an `IterableDataset` when streaming (one shard per file)."""
    import datasets

    parts, features = [], datasets.Features({"text": datasets.Value("string")})
    for source in sources:
        if source.hub is not None:
            parts.append(load_hub_documents(*source.hub, text_column, streaming=streaming))
            continue
        kwargs = dict(paths=[str(source.path)], text_column=text_column, text_layout=text_layout, encoding=encoding)
        if streaming:
            parts.append(datasets.IterableDataset.from_generator(generate_documents, gen_kwargs=kwargs))
            continue
        try:
            parts.append(datasets.Dataset.from_generator(generate_documents, gen_kwargs=kwargs, features=features,
                                                         cache_dir=str(workdir / "documents")))
        except datasets.exceptions.DatasetGenerationError as err:  # our reader's own message, unwrapped
            if isinstance(err.__cause__, DataFormatError):
                raise err.__cause__ from None
            raise
        except ValueError as err:  # `datasets` refuses a generator that yields nothing
            if "corresponds to no data" not in str(err):
                raise
            parts.append(datasets.Dataset.from_dict({"text": []}, features=features))
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


# ---- tokenize and pack (the functions `Dataset.map` runs, in several processes) --------------------------------
BATCH_TEXT_BYTES = 4 << 20  # text per map batch: the token lists of one batch are Python objects until written
CHUNK_BYTES = 256 << 20  # input per `map` call of `map_in_chunks`: the memory-mapped pages one call keeps resident


def tokenize_batch_size(documents, sample: int = 1000) -> int:
    """Documents per `map` batch so a batch holds about BATCH_TEXT_BYTES of text (from the first `sample`)."""
    import pyarrow.compute as pc

    head = documents.with_format("arrow")[:sample].column("text")
    mean = (pc.mean(pc.binary_length(head)).as_py() or 1) if len(head) else 1  # bytes per document
    return int(min(1000, max(8, BATCH_TEXT_BYTES // max(1, mean))))


def documents_per_chunk(batch_size: int) -> int:
    """Documents per `map_in_chunks` call, for batches of `batch_size` documents of about BATCH_TEXT_BYTES."""
    return max(batch_size, batch_size * (CHUNK_BYTES // BATCH_TEXT_BYTES))


def _shift_indices(batch: dict, indices: list[int], *, function, offset: int) -> dict:
    return function(batch, [i + offset for i in indices])


def map_in_chunks(dataset, function, *, name: str, workdir: Path, rows_per_chunk: int, num_proc: int,
                  with_indices: bool = False, **map_kwargs) -> list[str]:
    """`dataset.map(function, batched=True, ...)` run on consecutive row ranges, each written to
    `<workdir>/<name>-<i>.arrow`; returns the written files, in order.

    Why by hand: a map reads its input through one memory map that stays mapped until the map ends, so the pages it
    has read stay resident in the process (they show in its RSS/PSS) and one map over a 1 GB table holds about 1 GB
    of page cache. Each chunk here reopens the input (`pickle` round trip: a new memory map of the same files, with
    the same selections) and drops it when done, so at most CHUNK_BYTES of input pages are mapped at a time.
    `with_indices` passes the row's index in the whole `dataset`.
    """
    import gc
    import pickle

    from datamodules.base import data_progress

    files, began, chunks = [], time.monotonic(), -(-len(dataset) // rows_per_chunk)
    for i, start in enumerate(range(0, len(dataset), rows_per_chunk)):
        stop = min(start + rows_per_chunk, len(dataset))
        if chunks > 1:  # a large corpus: one line per chunk of about CHUNK_BYTES, with the time so far
            data_progress(f"{name}: chunk {i + 1}/{chunks} (rows {start:,}-{stop - 1:,} of {len(dataset):,}), "
                          f"{time.monotonic() - began:.0f} s so far")
        part = pickle.loads(pickle.dumps(dataset)).select(range(start, stop))
        fn = partial(_shift_indices, function=function, offset=start) if with_indices else function
        procs = num_proc if num_proc > 1 and stop - start >= 2 * num_proc else None
        out = part.map(fn, batched=True, with_indices=with_indices, num_proc=procs,
                       cache_file_name=str(workdir / f"{name}-{i:05d}.arrow"), load_from_cache_file=False,
                       new_fingerprint=f"{name}-{i}-{uuid.uuid4().hex}", **map_kwargs)
        files.extend(f["filename"] for f in out.cache_files)
        del part, out
        gc.collect()
    return files


def tokenize_documents(batch: dict, tokenizer) -> dict:
    """{"ids": token ids of each document (no special tokens), "n": their count}."""
    ids = tokenizer(batch["text"], add_special_tokens=False, verbose=False)["input_ids"]
    return {"ids": ids, "n": [len(x) for x in ids]}


def _blocks_from_chunks(chunks: list[np.ndarray], bos: int, eos: int) -> list[np.ndarray]:
    return [np.concatenate(([bos], c, [eos])).astype(np.int32) for c in chunks]


def full_sentences_starts(lengths: np.ndarray) -> np.ndarray:
    """Stream position of each document's first token (one separator between documents); last entry = total."""
    cum = np.concatenate(([0], np.cumsum(lengths, dtype=np.int64)))
    starts = cum + np.arange(len(cum))  # d separators precede document d
    if len(lengths):
        starts[-1] -= 1  # none follows the last document
    return starts


def owner_starts(starts: np.ndarray) -> np.ndarray:
    """Where each document's owned range begins: its separator (the first document: position 0)."""
    owned = starts[:-1] - 1
    owned[:1] = 0
    return owned


def pack_full_sentences(batch: dict, indices: list[int], *, tokens, starts: np.ndarray, n_blocks: int, size: int,
                        bos: int, eos: int, sep: int) -> dict:
    """The FULL-SENTENCES blocks that start inside this batch of documents (see the module docstring).

    The stream is doc_0 sep doc_1 sep ... doc_{D-1}; `starts[d]` is where doc d begins and `starts[D]` the total.
    Documents 0..D-1 own the stream ranges [starts[d] - 1 (its separator), starts[d+1] - 1); block b covers
    [b * size, (b + 1) * size) and belongs to the document owning position b * size.
    """
    first, last = indices[0], indices[-1]
    n_docs = len(starts) - 1
    lo = max(starts[first] - 1, 0)
    hi = starts[last + 1] - 1 if last + 1 < n_docs else starts[n_docs]
    b0, b1 = -(-lo // size), min(-(-hi // size), n_blocks)
    if b1 <= b0:
        return {"input_ids": [], "example_index": [], "document_index": []}
    end = min(b1 * size, starts[n_docs])
    docs = [np.asarray(x, dtype=np.int32) for x in batch["ids"]]
    d = last + 1
    while d < n_docs and starts[d] - 1 < end:  # the following documents the last block reaches into
        docs.append(np.asarray(tokens[d]["ids"], dtype=np.int32))
        d += 1
    pieces = []
    for i, doc in enumerate(docs):
        if first + i > 0:
            pieces.append(np.array([sep], dtype=np.int32))
        pieces.append(doc)
    offset = starts[first] - (1 if first > 0 else 0)  # stream position of pieces[0]
    stream = np.concatenate(pieces)
    chunks = [stream[b * size - offset: min((b + 1) * size, starts[n_docs]) - offset] for b in range(b0, b1)]
    doc_of = np.searchsorted(owner_starts(starts), np.arange(b0, b1, dtype=np.int64) * size, side="right") - 1
    return {"input_ids": _blocks_from_chunks(chunks, bos, eos), "example_index": list(range(b0, b1)),
            "document_index": doc_of.tolist()}


def pack_doc_sentences(batch: dict, indices: list[int], *, first_block: np.ndarray, n_blocks: int, size: int,
                       bos: int, eos: int) -> dict:
    """DOC-SENTENCES: each document cut into blocks of its own; `first_block[d]` numbers them across the corpus."""
    blocks, example_index, document_index = [], [], []
    for d, ids in zip(indices, batch["ids"]):
        ids = np.asarray(ids, dtype=np.int32)
        for j, start in enumerate(range(0, len(ids), size)):
            b = int(first_block[d]) + j
            if b >= n_blocks:
                break
            blocks.append(ids[start:start + size])
            example_index.append(b)
            document_index.append(d)
    return {"input_ids": _blocks_from_chunks(blocks, bos, eos), "example_index": example_index,
            "document_index": document_index}


def block_counts(lengths: np.ndarray, size: int, packing: str, drop_last_block: bool,
                 limit: int | None) -> tuple[int, np.ndarray | None]:
    """(number of blocks, first block of each document for DOC-SENTENCES / None for FULL-SENTENCES)."""
    if packing == "full_sentences":
        total = int(full_sentences_starts(lengths)[-1])
        n_blocks = total // size if drop_last_block else -(-total // size)
        first_block = None
    else:
        per_doc = -(-lengths.astype(np.int64) // size)
        first_block = np.concatenate(([0], np.cumsum(per_doc)))
        n_blocks = int(first_block[-1])
        nonempty = np.nonzero(per_doc)[0]
        if drop_last_block and len(nonempty) and lengths[nonempty[-1]] % size:
            n_blocks -= 1
    if limit is not None:
        n_blocks = min(n_blocks, int(limit))
    return n_blocks, first_block
