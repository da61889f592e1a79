"""The one table of task knowledge: GLUE task facts (files, columns, labels and their readable names, metrics and the
main one, hub dataset id and config, submission file names) and the hub ids of the SQuAD tasks.

Kept free of heavy imports (no torch, no datasets) so that the DataModules, the fine-tuning modules, the prediction
writers, the model cards and inference all read the same facts, e.g. `GLUE_TASKS["cola"].metrics == ("matthews",)`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class TaskSpec:
    """One task's facts. Columns are header names, or 0-based indices for files without a header (CoLA).

    `dev_files` / `test_files`: (split name, file name, hub split) per evaluation set (MNLI has two).
    `hub_label_names[i]` is the label string (one of `label_names`) of the hub's integer label i.
    """
    name: str
    folder: str
    text_columns: tuple
    label_column: str | int
    label_names: tuple[str, ...] | None  # None: regression
    metrics: tuple[str, ...]
    main_metric: str
    header: bool = True
    train_file: str = "train.tsv"
    dev_files: tuple = (("dev", "dev.tsv", "validation"),)
    test_files: tuple = (("test", "test.tsv", "test"),)
    test_text_columns: tuple | None = None  # test.tsv names its columns differently (CoLA)
    hub_text_columns: tuple = ("sentence1", "sentence2")
    hub_label_names: tuple[str, ...] | None = ("0", "1")
    # What the labels mean, for a model's `id2label` (the hub's glue names, or your display names for coded labels);
    # the files' strings where None.
    readable_label_names: tuple[str, ...] | None = None
    # Output-only facts (not in the tokenized cache's key, see `cache_facts`): the hub dataset id (its config is the
    # task name) and the file names the GLUE server expects, one per evaluation set (None: `<folder>.tsv`).
    hub_dataset: str | None = "nyu-mll/glue"
    submission_files: tuple[str, ...] | None = None

    def cache_facts(self) -> dict:
        """The facts that shape the tokenized data, for a cache key (the output-only ones would only invalidate
        caches when they change)."""
        facts = asdict(self)
        for name in ("hub_dataset", "submission_files"):
            facts.pop(name)
        return facts

    @property
    def submission_file_names(self) -> tuple[str, ...]:
        """`SST-2.tsv`; MNLI's `MNLI-m.tsv`, `MNLI-mm.tsv` (matched, mismatched)."""
        return self.submission_files or (f"{self.folder or self.name}.tsv",)

    @property
    def model_label_names(self) -> tuple[str, ...] | None:
        """Label names for `config.id2label`: readable where the files say only 0/1 (or 1..4)."""
        return self.readable_label_names or self.label_names

    @property
    def is_regression(self) -> bool:
        return self.label_names is None

    @property
    def num_labels(self) -> int:
        return 1 if self.label_names is None else len(self.label_names)


_ENTAIL = ("entailment", "not_entailment")
GLUE_TASKS: dict[str, TaskSpec] = {s.name: s for s in (
    TaskSpec("cola", "CoLA", (3,), 1, ("0", "1"), ("matthews",), "matthews", header=False,
             test_text_columns=("sentence",), hub_text_columns=("sentence",),
             readable_label_names=("unacceptable", "acceptable")),
    TaskSpec("sst2", "SST-2", ("sentence",), "label", ("0", "1"), ("accuracy",), "accuracy",
             hub_text_columns=("sentence",), readable_label_names=("negative", "positive")),
    TaskSpec("mrpc", "MRPC", ("#1 String", "#2 String"), "Quality", ("0", "1"), ("f1", "accuracy"), "f1",
             readable_label_names=("not_equivalent", "equivalent")),
    TaskSpec("stsb", "STS-B", ("sentence1", "sentence2"), "score", None, ("pearson", "spearman"), "pearson",
             hub_label_names=None),
    TaskSpec("qqp", "QQP", ("question1", "question2"), "is_duplicate", ("0", "1"), ("f1", "accuracy"), "f1",
             hub_text_columns=("question1", "question2"), readable_label_names=("not_duplicate", "duplicate")),
    TaskSpec("mnli", "MNLI", ("sentence1", "sentence2"), "gold_label", ("contradiction", "entailment", "neutral"),
             ("accuracy",), "accuracy",
             dev_files=(("matched", "dev_matched.tsv", "validation_matched"),
                        ("mismatched", "dev_mismatched.tsv", "validation_mismatched")),
             test_files=(("matched", "test_matched.tsv", "test_matched"),
                         ("mismatched", "test_mismatched.tsv", "test_mismatched")),
             hub_text_columns=("premise", "hypothesis"), hub_label_names=("entailment", "neutral", "contradiction"),
             submission_files=("MNLI-m.tsv", "MNLI-mm.tsv")),
    TaskSpec("qnli", "QNLI", ("question", "sentence"), "label", _ENTAIL, ("accuracy",), "accuracy",
             hub_text_columns=("question", "sentence"), hub_label_names=_ENTAIL),
    TaskSpec("rte", "RTE", ("sentence1", "sentence2"), "label", _ENTAIL, ("accuracy",), "accuracy",
             hub_label_names=_ENTAIL),
    TaskSpec("wnli", "WNLI", ("sentence1", "sentence2"), "label", ("0", "1"), ("accuracy",), "accuracy",
             readable_label_names=("not_entailment", "entailment")),
)}


def normalize_task_name(name: str) -> str:
    """'SST-2' / 'sst2' / 'STS_B' -> 'sst2' / 'stsb'; 'custom' stays; anything else is a clear error."""
    key = name.lower().replace("-", "").replace("_", "")
    if key in GLUE_TASKS or key == "custom":
        return key
    raise ValueError(f"unknown task_name {name!r}; expected one of {sorted(GLUE_TASKS)} (any case, 'SST-2' or "
                     f"'sst2' style) or 'custom' with train_file/validation_file")



def custom_task_metrics(num_labels: int, is_regression: bool) -> tuple[str, ...]:
    """Metrics of your own task (`custom`): Pearson/Spearman for regression, accuracy + F1 (of label id 1) for two
    labels, accuracy otherwise. The one rule, read by the DataModule's spec and by the fine-tuning module."""
    if is_regression:
        return ("pearson", "spearman")
    return ("accuracy", "f1") if num_labels == 2 else ("accuracy",)



# Submission files of GLUE's diagnostic set (predicted by an MNLI model; no task of its own here).
DIAGNOSTIC_SUBMISSION_FILES = {"ax": ("AX.tsv",)}

# Hub ids (dataset, config) of the question-answering tasks (the GLUE tasks carry theirs in their spec).
QA_HUB_DATASETS = {"squad": ("rajpurkar/squad", None), "squad_v2": ("rajpurkar/squad_v2", None)}


def hub_dataset(task_name: str | None) -> tuple[str | None, str | None]:
    """(hub dataset id, config) of a task name ("sst2" -> ("nyu-mll/glue", "sst2")); (None, None) for others."""
    task = str(task_name or "")
    if task in GLUE_TASKS and GLUE_TASKS[task].hub_dataset:
        return GLUE_TASKS[task].hub_dataset, task
    return QA_HUB_DATASETS.get(task, (None, None))


# Hub ids (dataset, config) of the MLM corpora by the folder of their files (the shared data's wikitext-2 keeps
# `<unk>`, so it is the non-raw configuration).
CORPUS_HUB_DATASETS = {"wikitext-2": ("Salesforce/wikitext", "wikitext-2-v1"),
                       "wikitext-2-raw": ("Salesforce/wikitext", "wikitext-2-raw-v1"),
                       "wikitext-103": ("Salesforce/wikitext", "wikitext-103-v1"),
                       "wikitext-103-raw": ("Salesforce/wikitext", "wikitext-103-raw-v1")}


def hub_dataset_of_name(name: str) -> tuple[str, str | None]:
    """(hub id, config) of a dataset name a module or an older card gives: "glue/sst2" -> ("nyu-mll/glue", "sst2"),
    "squad_v2" -> ("rajpurkar/squad_v2", None), "wikitext-2" -> ("Salesforce/wikitext", "wikitext-2-v1"); a hub id
    or an unknown name is returned as it is (config None)."""
    task = name.removeprefix("glue/")
    if task in GLUE_TASKS or task in QA_HUB_DATASETS:
        return hub_dataset(task)
    return CORPUS_HUB_DATASETS.get(name, (name, None))


def task_of_hub_dataset(dataset: str, config: str | None) -> str | None:
    """The task name of a hub dataset and config (the inverse of `hub_dataset`): ("nyu-mll/glue", "sst2") -> "sst2",
    ("rajpurkar/squad_v2", None) -> "squad_v2"; None for others."""
    for task, (hub_id, hub_config) in QA_HUB_DATASETS.items():
        if dataset == hub_id:
            return task
    if config in GLUE_TASKS and dataset == GLUE_TASKS[config].hub_dataset:
        return config
    return None


def submission_file_names(task_name: str) -> tuple[str, ...]:
    """The GLUE server's file names of a task, one per evaluation set; `<task_name>.tsv` for others (custom)."""
    if task_name in GLUE_TASKS:
        return GLUE_TASKS[task_name].submission_file_names
    return DIAGNOSTIC_SUBMISSION_FILES.get(task_name, (f"{task_name}.tsv",))
