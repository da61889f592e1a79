"""GLUE tasks (classic TSV layout or the hub) and your own classification/regression files (CSV, TSV, JSON lines).

The task facts (files, columns, labels, metrics) come from the one table `datamodules.tasks.GLUE_TASKS`. Task names
are accepted as `SST-2`, `sst2`, `sst-2`, ...
"""
from __future__ import annotations

from functools import partial
from pathlib import Path

from datamodules.base import LitBertDataModule, file_digest, key_digest, resolve_data_file
from datamodules.files import DataFormatError, Table, first_row_width, read_table
from datamodules.tasks import GLUE_TASKS, TaskSpec, custom_task_metrics, normalize_task_name

BATCH_COLUMNS = ["input_ids", "attention_mask", "token_type_ids", "labels", "example_index"]


def infer_label_names(values: list[str]) -> list[str]:
    """Distinct labels, sorted (numerically when all are integers)."""
    distinct = {str(v).strip() for v in values}
    try:
        return sorted(distinct, key=int)
    except ValueError:
        return sorted(distinct)


def tokenize_pairs(batch: dict, tokenizer, max_seq_length: int) -> dict:
    """Tokenize one column or a pair (`text_b`), truncating the longest side to `max_seq_length`."""
    pair = [batch["text_b"]] if "text_b" in batch else []
    return tokenizer(batch["text_a"], *pair, truncation=True, max_length=max_seq_length)


class GLUEDataModule(LitBertDataModule):
    """A GLUE task from `<data_dir>/glue/<TASK>/*.tsv` (or the hub with `hub_name`), or your own files (`custom`).

    Batches: `input_ids`, `attention_mask`, [`token_type_ids`], `labels` (long, float for regression; absent for
    unlabelled test rows), `example_index` (row number in the split). MNLI validates on [matched, mismatched]
    (`val_split_names`); `test` uses the labelled dev files too; `predict_split` is "dev" or "test" (test.tsv).

    The arguments LitBertDataModule documents (tokenizer, data_dir, lengths, batch sizes, ...) are not repeated here.

    Args:
        task_name: cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli (any case, "SST-2" style too) or "custom".
        hub_name: e.g. "nyu-mll/glue" to load the task with `datasets.load_dataset` (needs the network).
        predict_split: the split `predict` writes predictions for: "dev" or "test".
        max_train_samples: keep the FIRST N training rows (deterministic), for quick runs.
        max_eval_samples: keep the FIRST N rows of each evaluation split (deterministic), for quick runs.
        train_file: task "custom": the training file (.csv, .tsv, .jsonl), relative to data_dir or absolute.
        validation_file: task "custom": the validation file (same formats).
        test_file: task "custom": the test file (same formats; labels optional).
        text_columns: one or two columns (header names, JSON keys, or 0-based indices when header is false).
        label_column: the label column (header name, JSON key or 0-based index).
        label_names: the labels in id order, or display names for the sorted labels of the files (when they are
            not those labels and there are as many); None: the train (else validation) file's labels, sorted.
        label_map: raw label -> display name (e.g. {1: World, 2: Sports}); ids follow the sorted raw labels.
        header: whether CSV/TSV files start with a header line.
        is_regression: task "custom": float labels (num_labels 1).
        encoding: the files' text encoding.
    """

    train_row_column = "example_index"

    def __init__(
        self,
        tokenizer: str,
        task_name: str = "sst2",
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
        hub_name: str | None = None,
        predict_split: str = "dev",
        max_train_samples: int | None = None,
        max_eval_samples: int | None = None,
        train_file: str | None = None,
        validation_file: str | None = None,
        test_file: str | None = None,
        text_columns: list[str | int] | None = None,
        label_column: str | int | None = None,
        header: bool = True,
        label_names: list[str] | None = None,
        label_map: dict[str | int, str] | None = None,
        is_regression: bool = False,
        encoding: str = "utf-8",
    ):
        super().__init__(**self.shared_arguments(locals()))
        self.save_hyperparameters()
        if predict_split not in ("dev", "test"):
            raise ValueError(f"predict_split must be 'dev' or 'test', got {predict_split!r}")
        self.task_name = normalize_task_name(task_name)
        self.hub_name, self.predict_split, self.encoding = hub_name, predict_split, encoding
        self.max_train_samples, self.max_eval_samples = max_train_samples, max_eval_samples
        self.header = header
        if self.task_name == "custom":
            self.spec = self._custom_spec(train_file, validation_file, test_file, text_columns, label_column,
                                          label_names, label_map, is_regression)
            self.files = {"train": [("train", train_file)], "dev": [("dev", validation_file)],
                          "test": [("test", test_file)]}
        else:
            if hub_name is None and any(x is not None for x in (train_file, validation_file, test_file)):
                raise ValueError(f"train_file/validation_file/test_file are for task_name 'custom', not "
                                 f"{self.task_name!r} (whose files are {data_dir or '$DATA_DIR'}/glue/<TASK>/)")
            if label_names is not None or label_map is not None:
                raise ValueError(f"label_names/label_map are for task_name 'custom'; {self.task_name!r} has its "
                                 f"own labels")
            self.spec = GLUE_TASKS[self.task_name]
            self.header = self.spec.header
            glue_dir = Path("glue") / self.spec.folder
            self.files = {"train": [("train", str(glue_dir / self.spec.train_file))],
                          "dev": [(n, str(glue_dir / f)) for n, f, _ in self.spec.dev_files],
                          "test": [(n, str(glue_dir / f)) for n, f, _ in self.spec.test_files]}
        self.num_labels = self.spec.num_labels
        self.label_names = None if self.spec.is_regression else list(self.spec.label_names)
        self.label_display_names = None if self.spec.is_regression else list(self.spec.model_label_names)
        self.is_regression = self.spec.is_regression
        self.val_split_names = [name for name, _ in self.files["dev"]]
        self.predict_split_names = [name for name, _ in self.files[predict_split]]
        self.train_dataset = None
        self.eval_datasets: list = []
        self.predict_datasets: list = []

    def _custom_spec(self, train_file, validation_file, test_file, text_columns, label_column, label_names,
                     label_map, is_regression) -> TaskSpec:
        if not text_columns or len(text_columns) > 2 or label_column is None:
            raise ValueError("task_name 'custom' needs text_columns (one or two columns) and label_column")
        if train_file is None and validation_file is None and test_file is None:
            raise ValueError("task_name 'custom' needs train_file and/or validation_file (or test_file)")
        if label_names is not None and label_map is not None:
            raise ValueError("give label_names or label_map, not both")
        display = None
        if is_regression:
            if label_names is not None or label_map is not None:
                raise ValueError("label_names/label_map name classes; is_regression is true (float labels)")
            raw = None
        elif label_map is not None:  # ids follow the sorted raw labels, as when they are read from a file
            names = {str(code).strip(): str(name) for code, name in label_map.items()}
            raw = tuple(infer_label_names(list(names)))
            display = tuple(names[code] for code in raw)
        else:
            raw, display = self._custom_labels(train_file or validation_file, text_columns, label_column, label_names)
        if display is not None and len(set(display)) != len(display):
            raise ValueError(f"display names {list(display)} repeat a name: give one name per label")
        if display == raw:
            display = None
        metrics = custom_task_metrics(len(raw or ()), is_regression)
        return TaskSpec("custom", "", tuple(text_columns), label_column, raw, metrics, metrics[0],
                        header=self.header, hub_label_names=None, readable_label_names=display, hub_dataset=None)

    def _custom_labels(self, labelled_file, text_columns, label_column, label_names):
        """(labels in id order, display names or None): the labelled file's labels, sorted, named by `label_names`
        when those are not the labels themselves."""
        if labelled_file is None:
            if label_names is None:
                raise ValueError("task_name 'custom' with only a test_file needs label_names or label_map")
            return tuple(str(x) for x in label_names), None  # nothing to compare with: the labels themselves
        table = self._read(labelled_file)
        for column in text_columns:  # fail now, not at setup, if a text column is wrong
            table.column_reader(column)
        found = infer_label_names(table.values(label_column))
        if not found:
            raise DataFormatError(f"{table.path}: no rows, so no labels to infer; give label_names")
        if label_names is None:
            return tuple(found), None
        names = tuple(str(x) for x in label_names)
        if set(found) <= set(names):
            return names, None  # the labels themselves, in the id order given
        if len(names) == len(found) and not set(found) & set(names):
            return tuple(found), names  # display names of the sorted labels
        # other counts, or names of which only some are labels (a typo would otherwise rename the classes)
        raise ValueError(f"label_names {list(names)}: {table.path} has the labels {found}; give those labels (in the "
                         f"id order you want), or {len(found)} display names for them in this order, or label_map "
                         f"(label -> display name)")

    # ---- reading ------------------------------------------------------------------------------------------------
    def _read(self, relative: str) -> Table:
        return read_table(resolve_data_file(self.data_dir, relative), header=self.header, encoding=self.encoding)

    def _labels(self, table: Table, raw: list) -> list:
        """Label strings -> ids (floats for regression); a value outside the label list names its line."""
        label_to_id = {name: i for i, name in enumerate(self.spec.label_names or ())}
        out = []
        for value, line in zip(raw, table.line_numbers):
            text = str(value).strip()
            try:
                out.append(float(text) if self.is_regression else label_to_id[text])
            except (KeyError, ValueError):
                expected = "a number" if self.is_regression else f"one of {list(label_to_id)}"
                raise DataFormatError(f"{table.path}, line {line}: label {text!r} in column "
                                      f"{self.spec.label_column!r}; expected {expected}") from None
        return out

    def _read_file_columns(self, relative: str, split: str) -> dict:
        """text_a, [text_b], [labels] from a file; test files may lack the label column (GLUE test.tsv, your own
        unlabelled files) or leave it empty."""
        # GLUE test.tsv files all have a header line, CoLA's too (with other column names).
        header = True if split == "test" and self.task_name != "custom" else self.header
        table = read_table(resolve_data_file(self.data_dir, relative), header=header, encoding=self.encoding)
        use_test_columns = split == "test" and self.spec.test_text_columns is not None
        text_columns = self.spec.test_text_columns if use_test_columns else self.spec.text_columns
        label_column = self.spec.label_column
        if split == "test" and self.task_name == "custom" and table.header is None and not table.is_json:
            text_columns, label_column = self._headerless_test_layout(table)
        columns = {name: [str(v) for v in table.values(col)] for name, col in zip(("text_a", "text_b"), text_columns)}
        has_labels = label_column is not None and table.column_reader(label_column, required=False) is not None
        if self.task_name != "custom" and table.header is not None and not isinstance(label_column, str):
            has_labels = False  # CoLA's test.tsv: a header, and its label column index points at text
        raw = table.values(label_column) if has_labels else []
        if split == "test" and all(v is None or not str(v).strip() for v in raw):
            has_labels = False  # an unlabelled file that keeps the label column, empty (or null in JSON lines)
        if split != "test" or has_labels:  # a labelled split without the column: `values` names what is missing
            columns["labels"] = self._labels(table, raw or table.values(label_column))
        return columns

    def _headerless_test_layout(self, table: Table) -> tuple[tuple, int | None]:
        """(text columns, label column or None) of a headerless custom test file: the labelled layout (as wide as the
        train/validation file), or that layout without its label column (one column fewer, later indices shift)."""
        labelled = next((f for name, f in (*self.files["train"], *self.files["dev"]) if f is not None), None)
        width = (first_row_width(resolve_data_file(self.data_dir, labelled), self.encoding) if labelled
                 else max(int(c) for c in (*self.spec.text_columns, self.spec.label_column)) + 1)
        label = int(self.spec.label_column)
        found = len(table.rows[0])
        if found == width:
            return self.spec.text_columns, label
        if found == width - 1:
            return tuple(int(c) - (int(c) > label) for c in self.spec.text_columns), None
        raise DataFormatError(f"{table.path}, line {table.line_numbers[0]}: expected {width} columns (the labelled "
                              f"layout) or {width - 1} (without the label column {label}), found {found}")

    def _read_hub_columns(self, hub_split: str) -> tuple[dict, str]:
        from datasets import load_dataset

        try:
            data = load_dataset(self.hub_name, self.task_name, split=hub_split)
        except Exception as err:  # offline, unknown name, no network: one clear message
            raise ConnectionError(
                f"could not load hub dataset {self.hub_name!r} (config {self.task_name!r}, split {hub_split!r}): "
                f"{type(err).__name__}: {err}. Loading from the hub needs the network (HF_HUB_OFFLINE/"
                f"HF_DATASETS_OFFLINE must be unset); offline, leave hub_name unset and put the GLUE TSVs under "
                f"{self.data_dir}/glue/{self.spec.folder}/") from err
        columns = {name: list(data[col]) for name, col in zip(("text_a", "text_b"), self.spec.hub_text_columns)}
        labels = list(data["label"])
        if all(label is not None and label != -1 for label in labels):  # test splits have -1
            if self.is_regression:
                columns["labels"] = [float(x) for x in labels]
            else:
                columns["labels"] = [self.label_names.index(self.spec.hub_label_names[x]) for x in labels]
        return columns, data._fingerprint

    # ---- building -----------------------------------------------------------------------------------------------
    def load_split(self, split: str, index: int = 0):
        """The tokenized dataset of `split` ("train", "dev" or "test"; `index` picks MNLI's matched/mismatched)."""
        name, relative = self.files[split][index]
        if relative is None:
            raise ValueError(f"task_name 'custom' has no {'validation' if split == 'dev' else split}_file set, "
                             f"but the {split} split is needed for this stage")
        limit = self.max_train_samples if split == "train" else self.max_eval_samples
        if self.hub_name:
            hub_split = {"train": "train", "dev": self.spec.dev_files[index][2],
                         "test": self.spec.test_files[index][2]}[split]
            columns, source = self._read_hub_columns(hub_split)
        else:
            columns, source = None, file_digest(resolve_data_file(self.data_dir, relative))
        key = self.cache_key(spec=self.spec.cache_facts(), split=split, source=source, max_seq_length=self.max_seq_length,
                             limit=limit, encoding=self.encoding, header=self.header)

        def build(_workdir):  # in-memory result: cached with save_to_disk
            from datasets import Dataset

            data = columns if columns is not None else self._read_file_columns(relative, split)
            n = len(data["text_a"]) if limit is None else min(limit, len(data["text_a"]))
            data = {k: v[:n] for k, v in data.items()}
            data["example_index"] = list(range(n))
            dataset = Dataset.from_dict(data)
            tokenize = partial(tokenize_pairs, tokenizer=self.tokenizer, max_seq_length=self.max_seq_length)
            return dataset.map(tokenize, remove_columns=[c for c in ("text_a", "text_b") if c in data],
                               **self.map_kwargs(n, key_digest(key)))

        return self.cached_dataset(f"{self.task_name}-{split}-{name}", key, build)

    def needed_splits(self, stage: str | None) -> list[tuple[str, int]]:
        """(split, index) pairs `setup(stage)` loads: fit: train + dev; validate/test: dev; predict: `predict_split`."""
        needed = []
        if stage in (None, "fit"):
            needed.append(("train", 0))
        if stage in (None, "fit", "validate", "test"):
            needed += [("dev", i) for i in range(len(self.files["dev"]))]
        if stage in (None, "predict"):
            needed += [(self.predict_split, i) for i in range(len(self.files[self.predict_split]))]
        return needed

    def prepare_data(self) -> None:
        """Tokenize and cache the splits this run needs, once: Lightning calls this on local rank 0 before `setup`
        runs on any rank (which then only memory-maps the cached entries)."""
        for split, index in self.needed_splits(self.trainer_stage()):
            self.load_split(split, index)

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.train_dataset is None:
            self.train_dataset = self.load_split("train")
        if stage in (None, "fit", "validate", "test") and not self.eval_datasets:
            self.eval_datasets = [self.load_split("dev", i) for i in range(len(self.files["dev"]))]
        if stage in (None, "predict") and not self.predict_datasets:
            split = self.predict_split
            self.predict_datasets = [self.load_split(split, i) for i in range(len(self.files[split]))]

    def train_dataloader(self):
        return self.make_dataloader(self.train_dataset, train=True, columns=BATCH_COLUMNS)

    def _eval_loaders(self, datasets):
        loaders = [self.make_dataloader(d, train=False, columns=BATCH_COLUMNS) for d in datasets]
        return loaders[0] if len(loaders) == 1 else loaders

    def val_dataloader(self):
        return self._eval_loaders(self.eval_datasets)

    def test_dataloader(self):
        return self._eval_loaders(self.eval_datasets)

    def predict_dataloader(self):
        return self._eval_loaders(self.predict_datasets)

