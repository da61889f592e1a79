"""SQuAD scoring (official normalisation, max over gold answers, v2 empty answers) and n-best post-processing."""
import pytest

from evaluation.squad import NO_SPAN_NULL_ODDS, gold_answers, normalize_answer, postprocess_qa_predictions, squad_scores


def test_normalisation_follows_the_official_rules():
    assert normalize_answer("The  Quick, brown fox!") == "quick brown fox"
    assert normalize_answer("an apple and A pear") == "apple and pear"
    assert normalize_answer("Theory of the\tatom.") == "theory of atom"  # articles only as whole words
    assert normalize_answer("  U.S.-based ") == "usbased"


def test_exact_match_and_f1_max_over_gold_answers():
    refs = {"q1": ["a cat sat on the mat", "dog"], "q2": ["Denver Broncos", "The Denver Broncos."],
            "q3": ["blue"]}
    preds = {"q1": "The cat sat", "q2": "denver broncos", "q3": "red"}
    scores = squad_scores(preds, refs)
    # q1: tokens [cat, sat] vs [cat, sat, on, mat]: precision 1, recall 1/2 -> F1 2/3; EM 0. q2: EM 1. q3: 0.
    assert scores["exact_match"] == pytest.approx(100 * 1 / 3)
    assert scores["f1"] == pytest.approx(100 * (2 / 3 + 1 + 0) / 3)
    assert scores["total"] == 3


def test_f1_counts_repeated_tokens_once_per_occurrence():
    # pred [the->dropped] [big, big, dog], gold [big, dog]: common = {big:1, dog:1} = 2, P = 2/3, R = 1 -> F1 0.8.
    assert squad_scores({"q": "big big dog"}, {"q": ["big dog"]})["f1"] == pytest.approx(80.0)


def test_missing_prediction_scores_zero():
    assert squad_scores({}, {"q": ["x"]})["exact_match"] == 0.0


def test_version_2_empty_answers_and_breakdown():
    refs = {"has1": ["Paris"], "has2": ["London"], "no1": [], "no2": [], "only_article": ["the"]}
    preds = {"has1": "Paris", "has2": "", "no1": "", "no2": "something", "only_article": ""}
    scores = squad_scores(preds, refs, version_2=True)
    # gold "the" normalises to "" -> dropped -> the question counts as unanswerable, "" is right.
    assert gold_answers(["the"], version_2=True) == [""]
    assert gold_answers([], version_2=False) == [""]
    assert scores["exact_match"] == pytest.approx(100 * 3 / 5)
    assert scores["f1"] == pytest.approx(100 * 3 / 5)
    assert scores["HasAns_total"] == 2 and scores["NoAns_total"] == 3
    assert scores["HasAns_exact_match"] == pytest.approx(50.0)
    assert scores["NoAns_exact_match"] == pytest.approx(100 * 2 / 3)
    assert scores["NoAns_f1"] == pytest.approx(100 * 2 / 3)


# One example, context split into two overlapping windows. Token layout per feature: [CLS] q [SEP] ctx... [SEP].
CONTEXT = "alpha beta gamma delta epsilon"
#          0     6    11    17    23
WORDS = {"alpha": (0, 5), "beta": (6, 10), "gamma": (11, 16), "delta": (17, 22), "epsilon": (23, 30)}
OFFSETS = [
    [None, None, None, WORDS["alpha"], WORDS["beta"], WORDS["gamma"], None],
    [None, None, (-1, -1), WORDS["gamma"], WORDS["delta"], WORDS["epsilon"], None],
]


def _logits(start_at, end_at, n=7, high=5.0, cls=0.0):
    start, end = [0.0] * n, [0.0] * n
    start[0] = end[0] = cls
    for i, v in start_at.items():
        start[i] = v
    for i, v in end_at.items():
        end[i] = v
    return start, end


def _run(starts_ends, **kwargs):
    starts, ends = zip(*starts_ends)
    return postprocess_qa_predictions([CONTEXT], ["q"], [0, 0], OFFSETS, list(starts), list(ends), **kwargs)


def test_best_span_can_be_in_the_second_window():
    f0 = _logits({3: 1.0}, {4: 1.0})          # "alpha beta", score 2
    f1 = _logits({4: 3.0}, {5: 3.0})          # "delta epsilon", score 6
    preds, odds = _run([f0, f1])
    assert preds == {"q": "delta epsilon"} and odds == {}


def test_spans_outside_context_and_reversed_spans_are_rejected():
    # Highest logits sit on the question token (1) and on a reversed span (end 3 < start 5): both rejected.
    f0 = _logits({1: 9.0, 5: 8.0}, {1: 9.0, 3: 8.5, 5: 1.0})
    f1 = _logits({2: 9.0}, {2: 9.0})          # index 2 has offset (-1, -1): outside the context
    preds, _ = _run([f0, f1])
    assert preds["q"] == "gamma"              # start 5 / end 5 is the best valid span


def test_answer_longer_than_max_answer_length_is_rejected():
    f0 = _logits({3: 5.0, 4: 1.0}, {5: 5.0})  # "alpha beta gamma" (3 tokens) scores 10, "beta gamma" 6
    f1 = _logits({}, {})
    assert _run([f0, f1], max_answer_length=3)[0]["q"] == "alpha beta gamma"
    assert _run([f0, f1], max_answer_length=2)[0]["q"] == "beta gamma"


def test_null_answer_chosen_by_score_difference_threshold():
    f0 = _logits({3: 2.0}, {3: 2.0}, cls=3.0)  # null 6 vs "alpha" 4 -> diff 2
    f1 = _logits({}, {}, cls=4.0)              # null 8: the minimum null score over features is used (6)
    preds, odds = _run([f0, f1], version_2=True)
    assert preds["q"] == "" and odds["q"] == pytest.approx(2.0)
    preds, odds = _run([f0, f1], version_2=True, null_score_diff_threshold=2.5)
    assert preds["q"] == "alpha" and odds["q"] == pytest.approx(2.0)


def test_no_valid_span_gives_empty_answer():
    no_context = [[None] * 7, [None] * 7]
    starts, ends = [[1.0] * 7] * 2, [[1.0] * 7] * 2
    preds, odds = postprocess_qa_predictions([CONTEXT], ["q"], [0, 0], no_context, starts, ends, version_2=True)
    assert preds == {"q": ""} and odds == {"q": NO_SPAN_NULL_ODDS}


def test_mismatched_feature_lists_raise():
    with pytest.raises(ValueError, match="one entry per feature"):
        postprocess_qa_predictions([CONTEXT], ["q"], [0], OFFSETS, [[0.0] * 7], [[0.0] * 7])
