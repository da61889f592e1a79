"""SQuAD v1.1 / v2.0 (or any file in SQuAD JSON format) as extractive-QA features for fast tokenizers.

Each question + context is split into overlapping windows (`max_seq_length` tokens, `doc_stride` tokens of overlap,
question first and the context truncated when the tokenizer pads on the right). A window's `start_positions` /
`end_positions` are the answer's first/last tokens, or the CLS index (0) when the question is unanswerable or the
answer is not fully inside that window. For post-processing the DataModule keeps `eval_examples` (one row per
question) and `eval_features` (one row per window: `example_index`, `offset_mapping` with None outside the context).

There is no SQuAD train file in the shared data: the documented convention is to train on the first 38 articles of
dev-v1.1.json and evaluate on the other 10 (`train_articles: [0, 38]`, `eval_articles: [38, 48]`, the defaults).
"""
from __future__ import annotations

import json
from functools import partial
from pathlib import Path

from lightning.pytorch.utilities.rank_zero import rank_zero_only

from datamodules.base import LitBertDataModule, file_digest, key_digest, resolve_data_file
from datamodules.files import DataFormatError, decode_text_file

# training and evaluation alike: `feature_index` keys the evaluation logits and the training windows' cached teacher
# logits (lightning_modules/distill_tasks.py)
BATCH_COLUMNS = ["input_ids", "attention_mask", "token_type_ids", "start_positions", "end_positions", "feature_index"]


def load_squad_json(path: Path) -> dict:
    text = decode_text_file(path, option=None)  # JSON is UTF-8
    if not text.strip():
        raise DataFormatError(f"{path}: the file is empty; expected SQuAD JSON (an object with a 'data' list of "
                              f"articles)")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataFormatError(f"{path}, line {err.lineno}: not valid JSON ({err.msg})") from None
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise DataFormatError(f"{path}: expected a SQuAD JSON object with a 'data' list of articles")
    return data


def count_unanswerable(data: dict) -> tuple[int, int]:
    """(unanswerable questions, all questions) of a SQuAD JSON: unanswerable = `is_impossible: true` or no answers.
    (A file whose questions all carry `is_impossible: false` has none: it is scored as v1.1.)"""
    def items(obj, key):  # tolerant: a malformed entry is reported by `read_squad_examples`, naming it
        value = obj.get(key) if isinstance(obj, dict) else None
        return [x for x in value if isinstance(x, dict)] if isinstance(value, list) else []

    questions = [qa for article in data["data"] for paragraph in items(article, "paragraphs")
                 for qa in items(paragraph, "qas")]
    return sum(qa.get("is_impossible") is True or not qa.get("answers") for qa in questions), len(questions)


def align_answer(context: str, text: str, start: int) -> tuple[str, int] | None:
    """(text, answer_start) of an answer whose `answer_start` points at `text` in `context`, or None.

    Tolerated, as real SQuAD-format files have it: leading/trailing whitespace in the answer text, and an
    `answer_start` on the whitespace just before the answer; the answer is then its stripped text at the position where
    it really starts. Anything else is a mismatch (None).
    """
    if 0 <= start and context[start:start + len(text)] == text:
        return text, start
    stripped = text.strip()
    if not stripped or start < 0:
        return None
    after_space = start
    while after_space < len(context) and context[after_space].isspace():
        after_space += 1
    for candidate in (after_space, start + len(text) - len(text.lstrip())):
        if context[candidate:candidate + len(stripped)] == stripped:
            return stripped, candidate
    return None


def answer_mismatch(path: Path, qid: str, where: str, context: str, text: str, start: int) -> DataFormatError:
    """The error for an answer whose `answer_start` does not point at its text: both spans, and where the text is."""
    found = context.find(text.strip()) if text.strip() else -1
    hint = (f"the text occurs at character {found}" if found >= 0 else "the text does not occur in the context")
    return DataFormatError(f"{path}: question {qid!r} ({where}): answer text {text!r} does not match the context at "
                           f"answer_start {start}, which reads {context[start:start + len(text)]!r}; {hint}")


def read_squad_examples(path: Path, data: dict, articles: list[int] | None) -> dict:
    """Columns (one row per question) of the articles `articles = [start, end)` (None: all).

    id, title, question, context, answers (`{"text": [...], "answer_start": [...]}`, as in the hub's `squad`),
    is_impossible (v2.0's flag, or no gold answer). Each answer's `answer_start` must point at its text
    (`align_answer`: whitespace offsets are corrected, any other mismatch is a DataFormatError naming the question).
    """
    n_articles = len(data["data"])
    if articles is not None and len(articles) != 2:
        raise ValueError(f"article range {articles} for {path}: expected [start, end)")
    start, end = (0, n_articles) if articles is None else articles
    if not 0 <= start < end <= n_articles:
        raise ValueError(f"article range {articles} is not within the {n_articles} articles of {path} "
                         f"(expected [start, end) with 0 <= start < end <= {n_articles})")
    columns = {k: [] for k in ("id", "title", "question", "context", "answers", "is_impossible")}
    for a in range(start, end):
        article = data["data"][a]
        where = f"data[{a}]"
        try:
            for p, paragraph in enumerate(article["paragraphs"]):
                where = f"data[{a}].paragraphs[{p}]"
                context = paragraph["context"]
                for q, qa in enumerate(paragraph["qas"]):
                    where = f"data[{a}].paragraphs[{p}].qas[{q}]"
                    answers = []
                    for ans in qa["answers"]:
                        text, start = ans["text"], int(ans["answer_start"])
                        aligned = align_answer(context, text, start)
                        if aligned is None:
                            raise answer_mismatch(path, str(qa["id"]), where, context, text, start)
                        answers.append({"text": aligned[0], "answer_start": aligned[1]})
                    columns["id"].append(str(qa["id"]))
                    columns["title"].append(str(article.get("title", "")))
                    columns["question"].append(qa["question"])
                    columns["context"].append(context)
                    columns["answers"].append({"text": [ans["text"] for ans in answers],
                                               "answer_start": [int(ans["answer_start"]) for ans in answers]})
                    columns["is_impossible"].append(bool(qa.get("is_impossible", False)) or not answers)
        except DataFormatError:
            raise
        except (KeyError, TypeError, ValueError) as err:
            raise DataFormatError(f"{path}: {where} is malformed ({type(err).__name__}: {err}); expected SQuAD "
                                  f"format (paragraphs -> context + qas -> id, question, answers)") from None
    return columns


def prepare_features(batch: dict, tokenizer, max_seq_length: int, doc_stride: int) -> dict:
    """Windows of question + context with answer token positions and context-only offsets (batched map)."""
    pad_on_right = tokenizer.padding_side == "right"
    questions = [q.lstrip() for q in batch["question"]]  # leading spaces would take room in every window
    first, second = (questions, batch["context"]) if pad_on_right else (batch["context"], questions)
    enc = tokenizer(first, second, truncation="only_second" if pad_on_right else "only_first",
                    max_length=max_seq_length, stride=doc_stride, return_overflowing_tokens=True,
                    return_offsets_mapping=True)
    context_id = 1 if pad_on_right else 0
    starts, ends, example_index, offsets_out = [], [], [], []
    for i, offsets in enumerate(enc["offset_mapping"]):
        sample = enc["overflow_to_sample_mapping"][i]
        sequence_ids = enc.sequence_ids(i)
        ids = enc["input_ids"][i]
        cls_index = ids.index(tokenizer.cls_token_id) if tokenizer.cls_token_id in ids else 0
        context_tokens = [k for k, s in enumerate(sequence_ids) if s == context_id]
        example_index.append(batch["example_index"][sample])
        offsets_out.append([list(o) if sequence_ids[k] == context_id else None for k, o in enumerate(offsets)])
        start_token = end_token = cls_index
        answers = batch["answers"][sample]
        if answers["text"] and not batch["is_impossible"][sample]:
            start_char = answers["answer_start"][0]  # train on the first gold answer (as the official scripts)
            end_char = start_char + len(answers["text"][0])
            inside = offsets[context_tokens[0]][0] <= start_char and offsets[context_tokens[-1]][1] >= end_char
            if inside:
                start_token = max(k for k in context_tokens if offsets[k][0] <= start_char)
                end_token = min(k for k in context_tokens if offsets[k][1] >= end_char)
        starts.append(start_token)
        ends.append(end_token)
    out = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
    out.update(start_positions=starts, end_positions=ends, example_index=example_index, offset_mapping=offsets_out)
    return out


class SQuADDataModule(LitBertDataModule):
    """SQuAD-format extractive QA. Batches: `input_ids`, `attention_mask`, [`token_type_ids`], `start_positions`,
    `end_positions`, `feature_index` (the window's row in `train_dataset` or `eval_features`).

    The arguments LitBertDataModule documents are not repeated here; `max_seq_length` defaults to 384.

    Args:
        train_file: the training SQuAD JSON file, relative to data_dir (or absolute).
        eval_file: the evaluation SQuAD JSON file (validate/test/predict; `eval_examples` / `eval_features`).
        train_articles: `[start, end)` article range of train_file (None: every article); the default is the
            convention for the shared data: train on dev-v1.1's articles 0-37.
        eval_articles: `[start, end)` article range of eval_file (None: every article); default: 38-47.
        version_2_with_negative: SQuAD 2.0 scoring with unanswerable questions; None detects it from the eval file.
        doc_stride: tokens of overlap between consecutive windows of a long context.
        version_2_with_negative: v2.0 scoring (the null answer) or v1.1; None: v2.0 exactly when the eval file has
            unanswerable questions (`is_impossible: true` or no answers). The choice is printed once.
        max_train_samples: keep the FIRST N training questions (after the article range).
        max_eval_samples: keep the FIRST N evaluation questions (after the article range).
    """

    train_row_column = "feature_index"

    def __init__(
        self,
        tokenizer: str,
        train_file: str | None = "squad/dev-v1.1.json",
        eval_file: str = "squad/dev-v1.1.json",
        train_articles: list[int] | None = [0, 38],  # noqa: B006 (copied, never mutated)
        eval_articles: list[int] | None = [38, 48],  # noqa: B006
        version_2_with_negative: bool | None = None,
        doc_stride: int = 128,
        data_dir: str | None = None,
        max_seq_length: int = 384,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        num_proc: int = 1,
        group_by_length: bool = True,
        pad_to_multiple_of: int | None = None,
        cache_dir: str | None = None,
        seed: int = 42,
        max_train_samples: int | None = None,
        max_eval_samples: int | None = None,
    ):
        super().__init__(**self.shared_arguments(locals()))
        self.save_hyperparameters()
        if not 0 < doc_stride < max_seq_length // 2:
            raise ValueError(f"doc_stride must be in (0, max_seq_length / 2), got {doc_stride} with "
                             f"max_seq_length {max_seq_length}")
        self.train_file, self.eval_file, self.doc_stride = train_file, eval_file, doc_stride
        self.articles = {"train": None if train_articles is None else list(train_articles),
                         "eval": None if eval_articles is None else list(eval_articles)}
        self.max_samples = {"train": max_train_samples, "eval": max_eval_samples}
        eval_path = resolve_data_file(self.data_dir, eval_file)
        if version_2_with_negative is None:
            unanswerable, total = count_unanswerable(load_squad_json(eval_path))
            version_2_with_negative = unanswerable > 0
            why = (f"{unanswerable} of the {total} questions of {eval_path} are unanswerable" if unanswerable else
                   f"every question of {eval_path} has an answer")
        else:
            why = f"data.init_args.version_2_with_negative={version_2_with_negative}"
        if rank_zero_only.rank == 0:
            print(f"SQuAD {'v2.0' if version_2_with_negative else 'v1.1'} scoring "
                  f"({'with' if version_2_with_negative else 'without'} the null answer): {why}")
        self.version_2_with_negative = version_2_with_negative
        self.task_name = "squad_v2" if version_2_with_negative else "squad"
        self.train_dataset = self.eval_features = self.eval_examples = None

    def load_split(self, split: str):
        """(examples, features) of "train" (train_file) or "eval" (eval_file) as `datasets.Dataset`s."""
        from datasets import Dataset

        relative = self.train_file if split == "train" else self.eval_file
        if relative is None:
            raise ValueError("SQuADDataModule has train_file: null, but fitting needs a train file")
        path = resolve_data_file(self.data_dir, relative)
        examples = read_squad_examples(path, load_squad_json(path), self.articles[split])
        limit = self.max_samples[split]
        if limit is not None:
            examples = {k: v[:limit] for k, v in examples.items()}
        examples["example_index"] = list(range(len(examples["id"])))
        examples = Dataset.from_dict(examples)
        key = self.cache_key(source=file_digest(path), articles=self.articles[split], limit=limit,
                             max_seq_length=self.max_seq_length, doc_stride=self.doc_stride,
                             v2=self.version_2_with_negative)

        def build(_workdir):  # in-memory result: cached with save_to_disk
            prepare = partial(prepare_features, tokenizer=self.tokenizer, max_seq_length=self.max_seq_length,
                              doc_stride=self.doc_stride)
            features = examples.map(prepare, remove_columns=examples.column_names,
                                    **self.map_kwargs(len(examples), key_digest(key)))
            return features.add_column("feature_index", list(range(len(features))))

        return examples, self.cached_dataset(f"squad-{split}", key, build)

    def prepare_data(self) -> None:
        """Build (tokenize and cache) the features this run needs, once: Lightning calls this on local rank 0 before
        `setup` runs on any rank (which then only memory-maps the cached entries). fit: train + eval; else eval."""
        if self.trainer_stage() in (None, "fit"):
            self.load_split("train")
        self.load_split("eval")

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.train_dataset is None:
            _, self.train_dataset = self.load_split("train")
        if self.eval_features is None and stage in (None, "fit", "validate", "test", "predict"):
            self.eval_examples, self.eval_features = self.load_split("eval")

    def train_dataloader(self):
        return self.make_dataloader(self.train_dataset, train=True, columns=BATCH_COLUMNS)

    def val_dataloader(self):
        return self.make_dataloader(self.eval_features, train=False, columns=BATCH_COLUMNS)

    def test_dataloader(self):
        return self.val_dataloader()

    def predict_dataloader(self):
        return self.val_dataloader()
