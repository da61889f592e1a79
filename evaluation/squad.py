"""SQuAD v1.1 / v2.0 evaluation: the official answer normalisation and EM/F1, and n-best span post-processing.

Scoring uses torchmetrics' SQuAD metric (the official v1.1 script's normalisation: lower case, strip punctuation,
drop the articles a/an/the, collapse white space; EM and F1 as the max over the gold answers). SQuAD 2.0's official
script adds one rule that torchmetrics lacks: gold answers that normalise to nothing are dropped, and a question with
no gold answer left is scored against [""] (so the empty prediction gets EM = F1 = 1). `gold_answers` applies it.

Post-processing follows the BERT/HF recipe: for every feature (window) of an example, take the `n_best_size` highest
start and end logits, keep spans that lie inside the context, end after they start and are at most
`max_answer_length` tokens long, and return the best-scoring span over all features of the example. For v2.0 the
null answer ([CLS] start and end) is predicted when `null score - best span score > null_score_diff_threshold`.
`best_answers` gives each answer's text, character span and score (evaluation and raw-text inference both use it);
`postprocess_qa_predictions` the texts by example id.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torchmetrics.functional.text.squad import _normalize_text, squad

# Score difference reported as the null odds of an example without any valid span (JSON has no infinity).
NO_SPAN_NULL_ODDS = 1e9


def normalize_answer(text: str) -> str:
    """The official SQuAD normalisation (torchmetrics implements it exactly as the official script)."""
    return _normalize_text(text)


def gold_answers(texts: Sequence[str], version_2: bool) -> list[str]:
    """The gold answer texts to score against: v2.0 drops those that normalise to "" and uses [""] when none is left."""
    texts = list(texts)
    if version_2:
        texts = [t for t in texts if normalize_answer(t)]
    return texts or [""]


def _subset_scores(predictions: Mapping[str, str], references: Mapping[str, list[str]]) -> dict[str, float]:
    preds = [{"id": qid, "prediction_text": predictions.get(qid, "")} for qid in references]
    target = [{"id": qid, "answers": {"text": answers, "answer_start": [0] * len(answers)}}
              for qid, answers in references.items()]
    scores = squad(preds, target)  # percentages
    return {"exact_match": float(scores["exact_match"]), "f1": float(scores["f1"])}


def squad_scores(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]],
                 version_2: bool = False) -> dict[str, float]:
    """EM and F1 in percent over all questions of `references` ({id: gold answer texts}; [] for unanswerable).

    A question without a prediction counts as answered "" (as the official script counts it as wrong/empty).
    For v2.0 also HasAns_/NoAns_ exact_match and f1 and the two counts (`HasAns_total`, `NoAns_total`).
    """
    if not references:
        raise ValueError("squad_scores: no reference questions to score")
    golds = {qid: gold_answers(texts, version_2) for qid, texts in references.items()}
    result = _subset_scores(predictions, golds)
    result["total"] = len(golds)
    if version_2:
        for name, keep in (("HasAns", True), ("NoAns", False)):
            subset = {qid: g for qid, g in golds.items() if (g != [""]) == keep}
            result[f"{name}_total"] = len(subset)
            if subset:
                for key, value in _subset_scores(predictions, subset).items():
                    result[f"{name}_{key}"] = value
    return result


def _valid(offset) -> bool:
    """An offset pair that points into the context (the DataModule marks other tokens None or (-1, -1))."""
    return offset is not None and offset[0] is not None and offset[0] >= 0


def best_answers(
    contexts: Sequence[str],
    feature_example_index: Sequence[int],
    feature_offsets: Sequence[Sequence],
    start_logits: Sequence,
    end_logits: Sequence,
    n_best_size: int = 20,
    max_answer_length: int = 30,
    version_2: bool = False,
    null_score_diff_threshold: float = 0.0,
) -> list[dict]:
    """The best answer of every example over all its features (windows), with its character span and score.

    Arguments: as `postprocess_qa_predictions` (without the ids). One dict per example: `text`, `start` / `end`
    (character offsets into its context, `context[start:end] == text`; None for the null answer and when no span is
    valid), `score` (start + end logit of the best span, the ranking score, kept when the null answer wins; None
    without a valid span), and for v2.0 `null_odds` (null score - best span score; the null answer "" is chosen when
    it exceeds the threshold).
    """
    if not len(feature_example_index) == len(feature_offsets) == len(start_logits) == len(end_logits):
        raise ValueError("QA post-processing: feature_example_index, feature_offsets, start_logits and "
                         "end_logits must have one entry per feature")
    features_of = defaultdict(list)
    for f, ex in enumerate(feature_example_index):
        features_of[int(ex)].append(f)

    answers = []
    for ex, context in enumerate(contexts):
        best_score, best_span = -np.inf, None
        null_score = np.inf  # the minimum [CLS] score over the example's features, as in BERT's run_squad
        for f in features_of.get(ex, []):
            offsets = feature_offsets[f]
            start = _as_numpy(start_logits[f])[: len(offsets)]
            end = _as_numpy(end_logits[f])[: len(offsets)]
            null_score = min(null_score, float(start[0] + end[0]))
            top_starts = np.argsort(start)[::-1][:n_best_size]
            top_ends = np.argsort(end)[::-1][:n_best_size]
            for i in top_starts:
                if not _valid(offsets[i]):
                    continue
                for j in top_ends:
                    if j < i or j - i + 1 > max_answer_length or not _valid(offsets[j]):
                        continue
                    score = float(start[i] + end[j])
                    if score > best_score:
                        best_score, best_span = score, (int(offsets[i][0]), int(offsets[j][1]))
        answer = {"text": "", "start": None, "end": None, "score": None}
        if best_span is not None:
            answer = {"text": context[best_span[0]: best_span[1]], "start": best_span[0], "end": best_span[1],
                      "score": best_score}
        if version_2:
            diff = null_score - best_score if best_span is not None else NO_SPAN_NULL_ODDS
            if not np.isfinite(diff):  # an example with no feature at all
                diff = NO_SPAN_NULL_ODDS
            answer["null_odds"] = float(diff)
            if diff > null_score_diff_threshold:
                answer.update(text="", start=None, end=None)
        answers.append(answer)
    return answers


def postprocess_qa_predictions(
    contexts: Sequence[str],
    example_ids: Sequence[str],
    feature_example_index: Sequence[int],
    feature_offsets: Sequence[Sequence],
    start_logits: Sequence,
    end_logits: Sequence,
    n_best_size: int = 20,
    max_answer_length: int = 30,
    version_2: bool = False,
    null_score_diff_threshold: float = 0.0,
) -> tuple[dict[str, str], dict[str, float]]:
    """Answer text per example id from per-feature start/end logits; returns (predictions, null_odds).

    contexts / example_ids: one entry per example. feature_example_index[f]: the example of feature f.
    feature_offsets[f]: (char_start, char_end) per token of feature f, None or (-1, -1) outside the context.
    start_logits[f] / end_logits[f]: 1-D logits of feature f (tokens past len(feature_offsets[f]) are ignored).
    null_odds[id] = null score - best span score (v2.0 only; empty dict for v1.1).
    """
    answers = best_answers(contexts, feature_example_index, feature_offsets, start_logits, end_logits, n_best_size,
                           max_answer_length, version_2, null_score_diff_threshold)
    predictions = {qid: a["text"] for qid, a in zip(example_ids, answers)}
    null_odds = {qid: a["null_odds"] for qid, a in zip(example_ids, answers)} if version_2 else {}
    return predictions, null_odds


def _as_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float32)
