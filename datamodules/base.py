"""LitBertDataModule: what every litbert DataModule shares.

- the tokenizer (any Hugging Face fast tokenizer, `models.pretrained.load_tokenizer`) and the data facts that
  train.py links into the model (`task_name`, `num_labels`, `label_names`, `label_display_names`, `is_regression`,
  `vocab_size`, `pad_token_id`), all set in `__init__`;
- DATA_DIR resolution (`data_dir` argument, else `$DATA_DIR`, else `./data`);
- an on-disk cache of tokenized `datasets.Dataset`s keyed by the tokenizer's content, the source files' content and
  every setting that changes the result (written to a temporary folder and renamed: never half-written);
- a progress line per cache build (`data_progress`: what is built, then its rows and time), since a first build can
  take minutes and the `datasets` progress bars are off during it (one bar per map and save would flood a log);
- dataloaders with dynamic padding (`DataCollatorWithPadding`), optional length-grouped batches, and samplers that
  shard themselves across processes (`datamodules.samplers`; Lightning keeps them under DDP);
Reading the files themselves (with line numbers, `DataFormatError`) is `datamodules/files.py`.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding

from datamodules.atomic import atomic_directory
from datamodules.loaders import ResumableDataLoader
from datamodules.samplers import DistributedEvalSampler, DistributedTrainSampler
from models.pretrained import load_tokenizer

CACHE_FORMAT_VERSION = 2  # bump when a builder's output changes for the same settings
CACHE_MANIFEST = "litbert_cache.json"  # written last in a cache entry: its key and its Arrow files
MODEL_INPUT_COLUMNS = ["input_ids", "attention_mask", "token_type_ids"]


def data_progress(message: str) -> None:
    """One progress line of data preparation (stdout, flushed: it shows in logs as it happens)."""
    print(f"data: {message}", flush=True)


class _AlreadyBuilt(Exception):
    """Raised inside `atomic_directory` to drop a build another process finished first."""


def load_cache_entry(target: Path):
    """A cache entry as a `datasets.Dataset`: its Arrow files memory-mapped in order, or a `save_to_disk` folder."""
    import datasets

    manifest = json.loads((target / CACHE_MANIFEST).read_text())
    if manifest["files"] is None:
        return datasets.load_from_disk(str(target / "data"))
    return open_arrow_files([str(target / f) for f in manifest["files"]])


def open_arrow_files(files: list[str]):
    """Arrow files (written by `map`) as one memory-mapped dataset, in order."""
    import datasets

    parts = [datasets.Dataset.from_file(f) for f in files]
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


def row_lengths(dataset) -> list[int]:
    """Tokens per row of a tokenized dataset (its `length` column where it has one)."""
    if "length" in dataset.column_names:
        return [int(n) for n in dataset["length"]]
    return [len(ids) for ids in dataset["input_ids"]]


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    """`data_dir` if given, else `$DATA_DIR`, else `./data`."""
    return Path(data_dir or os.environ.get("DATA_DIR") or "data").expanduser()


def resolve_cache_dir(cache_dir: str | os.PathLike | None) -> Path:
    """`cache_dir` if given, else `$LITBERT_CACHE`, else `~/.cache/litbert`."""
    return Path(cache_dir or os.environ.get("LITBERT_CACHE") or "~/.cache/litbert").expanduser()


def resolve_data_file(data_dir: Path, path: str | os.PathLike) -> Path:
    """A path relative to DATA_DIR (absolute paths are kept); a clear error if the file does not exist."""
    full = Path(path).expanduser()
    if not full.is_absolute():
        full = data_dir / full
    if not full.is_file():
        raise FileNotFoundError(
            f"data file not found: {full} (relative paths are read under data_dir={data_dir}; "
            f"set data_dir or $DATA_DIR to the folder that holds it)"
        )
    return full


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes (a copy of the data elsewhere hits the same cache entry)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tokenizer_digest(tokenizer) -> str:
    """sha256 of what decides the tokenizer's output: its `tokenizer.json` content, class, specials and sides.

    The backend's truncation/padding state is left out: it changes with each call's arguments, not the tokenizer.
    """
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    backend.pop("truncation", None)
    backend.pop("padding", None)
    payload = {
        "class": type(tokenizer).__name__,
        "backend": backend,
        "special": {k: str(v) for k, v in tokenizer.special_tokens_map.items()},
        "padding_side": tokenizer.padding_side,
        "truncation_side": tokenizer.truncation_side,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def key_digest(key: dict) -> str:
    """A short stable digest of a cache key (also used as the `datasets` fingerprint of the map that builds it)."""
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]


class LitBertDataModule(pl.LightningDataModule):
    """Base DataModule: tokenizer, data facts, DATA_DIR, tokenized-dataset cache, dataloaders.

    Args:
        tokenizer: a tokenizer directory, hub name or `packaged:all-minilm-l6-v2`.
        data_dir: root of the data (None: `$DATA_DIR`, else `./data`); relative file options are read under it.
        max_seq_length: longest tokenized sequence (longer inputs are truncated or split into windows/blocks).
        batch_size: training examples per batch, per process (the global batch is batch_size x processes).
        eval_batch_size: evaluation examples per batch (None: batch_size).
        num_workers: DataLoader worker processes.
        num_proc: processes for tokenization (`datasets.map(num_proc=...)`).
        group_by_length: batch training examples of similar length (`datamodules.samplers.length_grouped_order`);
            next to no padding, so much faster for task data (SST-2: 4.6% padding instead of 67%).
        pad_to_multiple_of: pad each batch's length to a multiple of this (8 suits tensor cores); None: longest.
        cache_dir: tokenized-dataset cache (None: `$LITBERT_CACHE`, else `~/.cache/litbert`).
        seed: seed of the training order (a function of (seed, epoch), the same on every process).
    """

    # The training batches' column that numbers the rows of the training split (`train_dataset[i]` has the value i),
    # for per-row tables such as cached teacher logits; None where the DataModule has no such column.
    train_row_column: str | None = None

    @staticmethod
    def shared_arguments(values: dict[str, Any]) -> dict[str, Any]:
        """The base's `__init__` arguments picked by name from a subclass's `locals()`, to pass on by keyword (a new
        shared argument, or a reordered one, then needs no change in the subclasses' calls)."""
        names = list(inspect.signature(LitBertDataModule.__init__).parameters)[1:]  # without self
        return {name: values[name] for name in names}

    def __init__(
        self,
        tokenizer: str,
        data_dir: str | None = None,
        max_seq_length: int = 128,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        num_proc: int = 1,
        group_by_length: bool = True,
        pad_to_multiple_of: int | None = None,
        cache_dir: str | None = None,
        seed: int = 42,
    ):
        super().__init__()
        if max_seq_length < 8:
            raise ValueError(f"max_seq_length must be at least 8, got {max_seq_length}")
        for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if value is not None and value < 1:
                raise ValueError(f"data.init_args.{name} must be a positive number of examples per batch, got {value}")
        self.tokenizer_name = tokenizer
        self.tokenizer = load_tokenizer(tokenizer)
        if not self.tokenizer.is_fast:
            raise ValueError(f"tokenizer {tokenizer!r} is not a fast tokenizer (offset mappings need one)")
        self.data_dir = resolve_data_dir(data_dir)
        self.cache_dir = resolve_cache_dir(cache_dir)
        self.max_seq_length = max_seq_length
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.num_proc = max(1, num_proc)
        self.group_by_length = group_by_length
        self.pad_to_multiple_of = pad_to_multiple_of
        self.seed = seed
        # Data facts (docs/ARCHITECTURE.md); subclasses overwrite what applies to them.
        self.task_name: str | None = None
        self.num_labels: int | None = None
        self.label_names: list[str] | None = None  # the data's label strings, in id order
        self.label_display_names: list[str] | None = None  # what each id means, for the model's id2label
        self.is_regression: bool = False
        self.vocab_size = len(self.tokenizer)
        self.pad_token_id = self.tokenizer.pad_token_id
        self.collator = DataCollatorWithPadding(self.tokenizer, pad_to_multiple_of=pad_to_multiple_of)

    # ---- stages ------------------------------------------------------------------------------------------------
    def trainer_stage(self) -> str | None:
        """The running Trainer function ("fit", "validate", "test", "predict"), None without a Trainer."""
        trainer = self.trainer
        fn = getattr(getattr(trainer, "state", None), "fn", None) if trainer is not None else None
        return None if fn is None else str(fn.value)

    # ---- cache -------------------------------------------------------------------------------------------------
    def cache_key(self, **settings: Any) -> dict:
        """What identifies a tokenized dataset: class, tokenizer content, cache format and the given settings."""
        return {"builder": type(self).__name__, "format": CACHE_FORMAT_VERSION,
                "tokenizer": tokenizer_digest(self.tokenizer), **settings}

    def cached_dataset(self, name: str, key: dict, build: Callable[[Path], Any]):
        """Load `<cache_dir>/<name>-<hash(key)>` if present, else `build(workdir)` it and keep it, atomically.

        `build` returns a `datasets.Dataset`. A dataset whose Arrow files `build` wrote under `workdir` (the
        `cache_file_name`s of its maps) is kept as those files, memory-mapped, never copied; any other (in memory) is
        saved with `save_to_disk`. Everything else left in `workdir` is removed. The entry appears by one rename
        (`datamodules.atomic.atomic_directory`), so an error or a kill never leaves a half-written entry, and a finished
        entry that another process renamed first is kept. `key` must hold everything that changes the result.
        """
        import datasets

        target = self.cache_dir / f"{name}-{key_digest(key)}"
        if (target / CACHE_MANIFEST).is_file():
            return load_cache_entry(target)
        bars_were_on = not datasets.utils.are_progress_bars_disabled()
        datasets.disable_progress_bars()  # a build prints one bar per map/save otherwise: one line each instead
        start = time.monotonic()
        data_progress(f"building {name} (first use of these settings; cached in {self.cache_dir})")
        try:
            with atomic_directory(target) as tmp:
                dataset = build(tmp)
                data_progress(f"built {name}: {len(dataset):,} rows in {time.monotonic() - start:.1f} s")
                files = [Path(f["filename"]).resolve() for f in dataset.cache_files]
                kept = [f.relative_to(tmp.resolve()) for f in files if tmp.resolve() in f.parents]
                if not files or len(kept) != len(files) or dataset._indices is not None:
                    dataset.save_to_disk(str(tmp / "data"))
                    kept = None
                for path in sorted(tmp.iterdir()):  # intermediate files of the build
                    if path.name != "data" and (kept is None or not any(k.parts[0] == path.name for k in kept)):
                        shutil.rmtree(path) if path.is_dir() else path.unlink()
                manifest = {"key": key, "files": None if kept is None else [str(k) for k in kept]}
                (tmp / CACHE_MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True, default=str))
                if (target / CACHE_MANIFEST).is_file():  # another process finished the same entry first
                    raise _AlreadyBuilt
        except _AlreadyBuilt:
            pass
        finally:
            if bars_were_on:
                datasets.enable_progress_bars()
        return load_cache_entry(target)

    def map_kwargs(self, n_rows: int, digest: str) -> dict:
        """Arguments for `Dataset.map` on freshly built in-memory data: several processes when worth it."""
        num_proc = self.num_proc if n_rows >= 2 * self.num_proc and self.num_proc > 1 else None
        return dict(batched=True, num_proc=num_proc, new_fingerprint=digest, load_from_cache_file=False)

    # ---- dataloaders -------------------------------------------------------------------------------------------
    def distributed_context(self) -> tuple[int, int, int]:
        """(world size, global rank, accumulate_grad_batches) of the attached Trainer; (1, 0, 1) without one."""
        trainer = self.trainer
        if trainer is None:
            return 1, 0, 1
        return int(trainer.world_size), int(trainer.global_rank), int(trainer.accumulate_grad_batches)

    def make_dataloader(self, dataset, train: bool, columns: list[str] | None = None) -> DataLoader:
        """A DataLoader over `dataset` (only `columns` kept), padded per batch, sharded across processes.

        Training: `DistributedTrainSampler` (a random or, with `group_by_length`, length-grouped order that is a
        function of (seed, epoch); global batches of world_size * batch_size, one slice per rank; the epoch's batch
        count per rank a multiple of the Trainer's `accumulate_grad_batches`). Evaluation: `DistributedEvalSampler`
        (every example once, no repeats). Both are `DistributedSampler`s, so Lightning keeps them under DDP; rank and
        world size come from the attached Trainer (one process without a Trainer). See docs/data.md, "Many processes".
        """
        if columns is not None:
            dataset = dataset.select_columns([c for c in columns if c in dataset.column_names])
        batch_size = self.batch_size if train else self.eval_batch_size
        world, rank, accumulate = self.distributed_context()
        if train:
            lengths = row_lengths(dataset) if self.group_by_length else None
            sampler = DistributedTrainSampler(len(dataset), batch_size, num_replicas=world, rank=rank, seed=self.seed,
                                              lengths=lengths, accumulate_grad_batches=accumulate)
        else:
            sampler = DistributedEvalSampler(len(dataset), num_replicas=world, rank=rank)
        if "length" in dataset.column_names:
            dataset = dataset.remove_columns("length")
        if not train:
            return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=self.collator,
                              num_workers=self.num_workers, persistent_workers=self.num_workers > 0)
        return self.resumable(ResumableDataLoader(dataset, batch_size=batch_size, sampler=sampler,
                                                  collate_fn=self.collator, num_workers=self.num_workers,
                                                  persistent_workers=self.num_workers > 0))

    def train_inference_loader(self, batch_size: int = 256, num_replicas: int = 1, rank: int = 0) -> DataLoader:
        """The training split once, for a forward pass of a frozen model over it (task distillation's cached teacher
        logits, lightning_modules/distill_tasks.py): rows sorted by length, longest first, so that batches of
        `batch_size` pad next to nothing; rank `rank` of `num_replicas` takes sorted positions rank, rank + W, ...
        (shards of about equal cost). Batches hold the model inputs and `train_row_column`.

        Args:
            batch_size: rows per batch (no gradients are kept, so far more than the training batch fits).
            num_replicas / rank: the number of processes sharing the pass, and this one's global rank.
        """
        dataset = getattr(self, "train_dataset", None)
        if dataset is None or self.train_row_column is None:
            raise ValueError(f"{type(self).__name__} has no numbered training split (train_row_column) loaded")
        lengths = row_lengths(dataset)
        dataset = dataset.select_columns([c for c in MODEL_INPUT_COLUMNS + [self.train_row_column]
                                          if c in dataset.column_names])
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])[rank::num_replicas]
        batches = [order[i: i + batch_size] for i in range(0, len(order), batch_size)]
        # its own generator: iterating a DataLoader draws a seed, which would otherwise move torch's global one
        return DataLoader(dataset, batch_sampler=batches, collate_fn=self.collator, num_workers=self.num_workers,
                          generator=torch.Generator())

    # ---- the training loader's position in checkpoints (datamodules/loaders.py) ----------------------------------
    def resumable(self, loader: ResumableDataLoader) -> ResumableDataLoader:
        """Remember `loader` as the training loader, at the position a restored checkpoint holds (if any)."""
        pending = getattr(self, "_train_loader_state", None)
        if pending is not None:
            loader.load_state_dict(pending)
            self._train_loader_state = None
        self._train_loader = loader
        return loader

    def state_dict(self) -> dict:
        """Lightning stores this in every checkpoint: the training loader's position on every rank."""
        loader = getattr(self, "_train_loader", None)
        if loader is None:
            return {}
        state = loader.state_dict()
        world, rank, _ = self.distributed_context()
        if world > 1:  # each rank reads its own shard (streaming: its own position); rank 0 writes the checkpoint
            import torch.distributed as dist

            states = [None] * world
            dist.all_gather_object(states, state)
            return {"train_loader": states}
        return {"train_loader": [state]}

    def load_state_dict(self, state_dict: dict) -> None:
        """Keep this rank's saved loader position for the training loader made next (`resumable`)."""
        states = state_dict.get("train_loader")
        if states:
            world, rank, _ = self.distributed_context()
            if len(states) != world:
                raise ValueError(f"the checkpoint holds the data position of {len(states)} processes, this run has "
                                 f"{world}: resume with the same number of processes (devices x nodes)")
            self._train_loader_state = states[rank]

    def state_summary(self) -> dict:
        """The data facts as a dict (for logs and model cards)."""
        return {k: getattr(self, k) for k in ("task_name", "num_labels", "label_names", "label_display_names",
                                              "is_regression", "vocab_size", "pad_token_id")}
