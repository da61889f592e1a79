"""Raw-text inference with any litbert export: text classification, extractive QA and fill-mask, from Python.

    from evaluation.inference import Predictor
    predictor = Predictor("artifacts/main_job/student/best")    # the kind comes from config.json's architectures
    predictor.classify(["a gripping, funny film"])              # [{"text", "label", "score", "scores"}]
    predictor.answer(["Who wrote it?"], ["... a context of any length ..."])   # [{"answer", "start", "end", "score"}]
    predictor.fill_mask(["the film was [MASK] ."], top_k=5)     # [{"text", "masks": [[{"token", "score"}, ...]]}]

Inference goes through the same code as evaluation, with the settings the export's model card records
(`models.model_card.read_model_card`; any of them can be overridden):
- classification: inputs tokenized by `datamodules.glue.tokenize_pairs`, truncated to the training max_seq_length;
  softmax probabilities by label name (`config.id2label`), or the value of a regression model (num_labels 1);
- QA: windows of `max_seq_length` tokens overlapping by `doc_stride` (`datamodules.squad.prepare_features`), the
  answer picked by `evaluation.squad.best_answers` (n_best_size, max_answer_length, and the v2.0 null answer when the
  card says the model was trained on squad_v2); `score` is the span's start + end logit, `start`/`end` are
  character offsets into the context;
- fill-mask: transformers' `fill-mask` pipeline (top_k tokens per mask token, with probabilities).
Batches group inputs of similar length (little padding) under `torch.inference_mode`, on the CPU or a GPU. Bad input
raises ValueError naming the input (`where`, e.g. "data.tsv, line 3"), for one-line errors.
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from transformers import (AutoConfig, AutoModelForMaskedLM, AutoModelForQuestionAnswering,
                          AutoModelForSequenceClassification)

from datamodules.glue import tokenize_pairs
from datamodules.tasks import GLUE_TASKS, hub_dataset_of_name, task_of_hub_dataset
from datamodules.squad import prepare_features
from evaluation.squad import best_answers
from models.inputs import MODEL_INPUTS, model_inputs
from models.last_layer import last_layer_at
from models.model_card import read_model_card
from models.pretrained import load_pretrained, load_tokenizer, max_input_length, resolve_model_path

# What an export does, by the suffix of its `architectures` entry, and the Auto class that loads it.
KINDS = {"ForSequenceClassification": ("classification", AutoModelForSequenceClassification),
         "ForQuestionAnswering": ("question-answering", AutoModelForQuestionAnswering),
         "ForMaskedLM": ("fill-mask", AutoModelForMaskedLM)}
# Evaluation's defaults (SQuADDataModule, QuestionAnsweringModule) where the card records nothing.
QA_DEFAULTS = {"max_seq_length": 384, "doc_stride": 128, "n_best_size": 20, "max_answer_length": 30,
               "null_score_diff_threshold": 0.0}
SETTINGS = ("max_seq_length", "doc_stride", "n_best_size", "max_answer_length", "null_score_diff_threshold",
            "version_2")


def export_kind(config, directory: str) -> str:
    """'classification', 'question-answering' or 'fill-mask' from the config's `architectures`."""
    for architecture in config.architectures or []:
        for suffix, (kind, _) in KINDS.items():
            if architecture.endswith(suffix):
                return kind
    raise ValueError(f"{directory}: config.json names the architectures {config.architectures}; raw-text inference "
                     f"serves *ForSequenceClassification, *ForQuestionAnswering and *ForMaskedLM exports")


def resolve_device(device: str | None) -> torch.device:
    """`device` as a torch.device; None: the GPU when there is one, else the CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ValueError(f"device {device!r} is not a device name (expected cpu, cuda or cuda:N)") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: no CUDA GPU is available here (use cpu)")
    return resolved


def recorded_settings(directory: str) -> dict[str, Any]:
    """The evaluation settings an export's model card records: max_seq_length, doc_stride, n_best_size,
    max_answer_length, null_score_diff_threshold, version_2 (trained on squad_v2) and task (a GLUE task name)."""
    front_matter, values = read_model_card(directory)
    settings = {k: values[k] for k in SETTINGS if isinstance(values.get(k), (int, float))}
    # The task: the model-index's hub dataset + config (nyu-mll/glue + sst2), the front matter's hub ids
    # (rajpurkar/squad_v2), the DataModule's task_name in the tables; older cards' names (glue/sst2, squad_v2) too.
    evaluated = [(str(result.get("dataset", {}).get("type")), result.get("dataset", {}).get("config"))
                 for entry in front_matter.get("model-index") or [] for result in entry.get("results") or []]
    named = [hub_dataset_of_name(str(d)) for d in front_matter.get("datasets") or []]
    tasks = [task_of_hub_dataset(dataset, config) for dataset, config in evaluated + named]
    tasks = [t for t in tasks if t] + ([str(values["task_name"])] if values.get("task_name") else [])
    if tasks and tasks[0] in ("squad", "squad_v2"):
        settings["version_2"] = tasks[0] == "squad_v2"
    glue = [t for t in tasks if t in GLUE_TASKS]
    settings["task"] = glue[0] if glue else None
    return settings


def check_texts(texts: Sequence, where: Sequence[str], name: str) -> None:
    """Every entry a non-empty string, else a ValueError naming it."""
    for text, place in zip(texts, where):
        if not isinstance(text, str):
            raise ValueError(f"{place}: {name} must be a string, got {type(text).__name__} {text!r}")
        if not text.strip():
            raise ValueError(f"{place}: empty {name}")


class Predictor:
    """A loaded export ready for raw text; which methods apply depends on `kind`.

    Args:
        model_dir: an export directory (HFExport, scripts/convert_checkpoint.py, any save_pretrained folder).
        device: "cpu", "cuda", "cuda:N"; None: the GPU when there is one.
        max_seq_length: longest input in tokens (default: the card's, else 384 for QA and the model's longest input
            for the others, within the model's positions).
        doc_stride: QA: tokens of overlap between windows of a long context (default: the card's, else 128, at
            most a third of max_seq_length).
        n_best_size: QA: start and end candidates per window (default: the card's, else 20).
        max_answer_length: QA: longest answer in tokens (default: the card's, else 30).
        version_2: QA: allow the null answer "" (default: True when the card says squad_v2).
        null_score_diff_threshold: QA v2.0: answer "" when null score - best span score exceeds it (default 0).
    """

    def __init__(self, model_dir: str | os.PathLike, device: str | None = None, max_seq_length: int | None = None,
                 doc_stride: int | None = None, n_best_size: int | None = None, max_answer_length: int | None = None,
                 version_2: bool | None = None, null_score_diff_threshold: float | None = None):
        self.directory = resolve_model_path(model_dir)
        if not os.path.isdir(self.directory):
            raise FileNotFoundError(f"{model_dir}: no such directory; expected an export directory (e.g. "
                                    f"artifacts/main_job/student/best)")
        if not os.path.isfile(os.path.join(self.directory, "config.json")):
            raise FileNotFoundError(f"{model_dir}: no config.json in this directory; expected an export directory "
                                    f"(save_pretrained files: config.json, model.safetensors, tokenizer files)")
        config = AutoConfig.from_pretrained(self.directory)
        self.kind = export_kind(config, str(model_dir))
        self.device = resolve_device(device)
        overrides = dict(max_seq_length=max_seq_length, doc_stride=doc_stride, n_best_size=n_best_size,
                         max_answer_length=max_answer_length, version_2=version_2,
                         null_score_diff_threshold=null_score_diff_threshold)
        recorded = recorded_settings(self.directory)
        self.task = recorded.pop("task")
        s = self.settings = {**recorded, **{k: v for k, v in overrides.items() if v is not None}}
        limit = max_input_length(config) or 512
        if self.kind == "question-answering":  # evaluation's defaults where the card records nothing
            s.setdefault("max_seq_length", min(QA_DEFAULTS["max_seq_length"], limit))
            s.setdefault("doc_stride", min(QA_DEFAULTS["doc_stride"], s["max_seq_length"] // 3))
            for key, value in {**QA_DEFAULTS, "version_2": False}.items():
                s.setdefault(key, value)
        s.setdefault("max_seq_length", limit)
        if not 0 < s["max_seq_length"] <= limit:
            raise ValueError(f"max_seq_length={s['max_seq_length']}: the model ({model_dir}) takes 1 to {limit} "
                             f"tokens")
        if self.kind == "question-answering" and not 0 < s["doc_stride"] < s["max_seq_length"] // 2:
            raise ValueError(f"doc_stride={s['doc_stride']} must be in (0, max_seq_length / 2) with "
                             f"max_seq_length={s['max_seq_length']} (the rule of evaluation's SQuADDataModule)")
        auto_class = next(auto for kind, auto in KINDS.values() if kind == self.kind)
        self.model = load_pretrained(auto_class, self.directory).to(self.device).eval()
        self.tokenizer = load_tokenizer(self.directory)
        self._fill_mask = None  # the transformers pipeline, built on first use

    # ---- shared -------------------------------------------------------------------------------------------------
    def _expect(self, kind: str, method: str) -> None:
        if self.kind != kind:
            raise ValueError(f"{method} needs a {kind} export, but {self.directory} is a {self.kind} model "
                             f"({type(self.model).__name__})")

    def _forward(self, encoded: dict[str, list], batch_size: int) -> Iterator[tuple[list[int], Any]]:
        """(row indices, model output) over batches of `encoded` (tokenized, unpadded lists), rows of similar
        length batched together so that dynamic padding adds little."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        keys = [k for k in MODEL_INPUTS if k in encoded]
        order = sorted(range(len(encoded["input_ids"])), key=lambda i: len(encoded["input_ids"][i]))
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            batch = self.tokenizer.pad({k: [encoded[k][r] for r in rows] for k in keys}, return_tensors="pt")
            batch = {k: v.to(self.device) for k, v in batch.items()}
            # a classifier's last layer at the first token only (all its head reads); other kinds run unchanged
            with last_layer_at(self.model):
                output = self.model(**model_inputs(self.model, batch))
            yield rows, output

    # ---- classification -------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def classify(self, texts: Sequence[str], text_pairs: Sequence[str] | None = None, batch_size: int = 32,
                 where: Sequence[str] | None = None) -> list[dict]:
        """One record per text: `label` (by name), `score` (its probability) and `scores` (every label's), or
        `value` for a regression model; `text` (and `text_pair`) echoed.

        texts / text_pairs: single texts, or the first and second texts of pairs (as the model was trained).
        batch_size: inputs per forward pass. where: how to name each input in errors (default "input i").
        """
        self._expect("classification", "classify")
        where = list(where or [f"input {i + 1}" for i in range(len(texts))])
        check_texts(texts, where, "text")
        columns = {"text_a": list(texts)}
        if text_pairs is not None:
            if len(text_pairs) != len(texts):
                raise ValueError(f"{len(texts)} texts but {len(text_pairs)} text pairs: give one pair per text")
            check_texts(text_pairs, where, "text pair")
            columns["text_b"] = list(text_pairs)
        encoded = tokenize_pairs(columns, self.tokenizer, self.settings["max_seq_length"])
        id2label = {int(k): v for k, v in self.model.config.id2label.items()}
        regression = self.model.config.num_labels == 1
        records = [{"text": t} if text_pairs is None else {"text": t, "text_pair": p}
                   for t, p in zip(texts, text_pairs or texts)]
        for rows, out in self._forward(encoded, batch_size):
            logits = out.logits.float().cpu()
            for row, row_logits in zip(rows, logits):
                if regression:
                    records[row]["value"] = float(row_logits[0])
                    continue
                probabilities = row_logits.softmax(-1).tolist()
                best = max(range(len(probabilities)), key=probabilities.__getitem__)
                records[row].update(label=id2label.get(best, str(best)), score=probabilities[best],
                                    scores={id2label.get(k, str(k)): p for k, p in enumerate(probabilities)})
        return records

    # ---- extractive question answering ----------------------------------------------------------------------------
    @torch.inference_mode()
    def answer(self, questions: Sequence[str], contexts: Sequence[str], batch_size: int = 32,
               where: Sequence[str] | None = None) -> list[dict]:
        """One record per question: `answer` (text), `start` / `end` (character offsets, `context[start:end] ==
        answer`; None for no answer), `score` (start + end logit), and `null_odds` for a v2.0 model; `question` and
        `context` echoed. Contexts of any length: windows and post-processing as in evaluation.

        questions / contexts: one context per question. batch_size: windows per forward pass.
        where: how to name each input in errors (default "input i").
        """
        self._expect("question-answering", "answer")
        if len(questions) != len(contexts):
            raise ValueError(f"{len(questions)} questions but {len(contexts)} contexts: give one context per question")
        where = list(where or [f"input {i + 1}" for i in range(len(questions))])
        check_texts(questions, where, "question")
        check_texts(contexts, where, "context")
        s = self.settings
        # Every window holds the whole question: what is left must exceed the overlap (the tokenizer's rule).
        room = s["max_seq_length"] - self.tokenizer.num_special_tokens_to_add(pair=True) - s["doc_stride"]
        for question, place in zip(questions, where):
            length = len(self.tokenizer(question.lstrip(), add_special_tokens=False)["input_ids"])
            if length >= room:
                raise ValueError(f"{place}: the question is {length} tokens long; with max_seq_length="
                                 f"{s['max_seq_length']} and doc_stride={s['doc_stride']} it must be under {room} "
                                 f"(shorten it, or raise max_seq_length / lower doc_stride)")
        n = len(questions)
        examples = {"question": list(questions), "context": list(contexts), "example_index": list(range(n)),
                    "answers": [{"text": [], "answer_start": []}] * n, "is_impossible": [False] * n}
        features = prepare_features(examples, self.tokenizer, s["max_seq_length"], s["doc_stride"])
        starts, ends = [None] * len(features["input_ids"]), [None] * len(features["input_ids"])
        for rows, out in self._forward(features, batch_size):
            for row, start, end in zip(rows, out.start_logits.float().cpu(), out.end_logits.float().cpu()):
                starts[row], ends[row] = start, end
        answers = best_answers(list(contexts), features["example_index"], features["offset_mapping"], starts, ends,
                               s["n_best_size"], s["max_answer_length"], s["version_2"],
                               s["null_score_diff_threshold"])
        return [{"question": q, "context": c, "answer": a.pop("text"), **a}
                for q, c, a in zip(questions, contexts, answers)]

    # ---- fill-mask ---------------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def fill_mask(self, texts: Sequence[str], top_k: int = 5, batch_size: int = 32,
                  where: Sequence[str] | None = None) -> list[dict]:
        """One record per text: `masks`, for each mask token in order its `top_k` tokens ({"token", "score"}).

        texts: texts holding the tokenizer's mask token (e.g. [MASK] or <mask>) once or more.
        top_k: tokens per mask. batch_size: texts per forward pass. where: how to name each input in errors.
        """
        self._expect("fill-mask", "fill_mask")
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        where = list(where or [f"input {i + 1}" for i in range(len(texts))])
        check_texts(texts, where, "text")
        mask, length = self.tokenizer.mask_token, self.settings["max_seq_length"]
        encoded = self.tokenizer(list(texts), truncation=True, max_length=length)["input_ids"]
        for text, ids, place in zip(texts, encoded, where):
            if mask not in text:
                raise ValueError(f"{place}: no {mask} in the text; mark each word to predict with {mask}")
            if self.tokenizer.mask_token_id not in ids:
                raise ValueError(f"{place}: the {mask} comes after the first {length} tokens (max_seq_length)")
        if self._fill_mask is None:
            from transformers import pipeline

            self._fill_mask = pipeline("fill-mask", model=self.model, tokenizer=self.tokenizer, device=self.device)
        outputs = self._fill_mask(list(texts), top_k=top_k, batch_size=batch_size,
                                  tokenizer_kwargs={"truncation": True, "max_length": length})
        outputs = [outputs] if len(texts) == 1 else outputs  # the pipeline unwraps a list of one text
        records = []
        for text, out in zip(texts, outputs):
            per_mask = out if isinstance(out[0], list) else [out]  # the pipeline nests only for several masks
            records.append({"text": text, "masks": [[{"token": c["token_str"], "score": float(c["score"])}
                                                     for c in candidates] for candidates in per_mask]})
        return records


def table_rows(kind: str, record: dict) -> list[dict]:
    """A prediction record as flat rows for a TSV file: one row per input (fill-mask: one per mask and rank)."""
    if kind == "fill-mask":
        base = {k: v for k, v in record.items() if k != "masks"}
        return [{**base, "mask": m + 1, "rank": r + 1, **candidate}
                for m, candidates in enumerate(record["masks"]) for r, candidate in enumerate(candidates)]
    row = {k: v for k, v in record.items() if k != "scores"}
    row.update({f"score_{label}": p for label, p in record.get("scores", {}).items()})
    return [row]
