"""Prediction files: GLUE submission TSV contents and names, SQuAD JSONs, atomic writes."""
import json

import pytest

from evaluation.writers import (atomic_write_text, glue_submission_filename, write_glue_predictions,
                                write_squad_predictions)


def test_glue_tsv_with_label_strings_sorted_by_index(tmp_path):
    path = write_glue_predictions(tmp_path / "RTE.tsv", [2, 0, 1], [1, 0, 1],
                                  label_names=["entailment", "not_entailment"])
    assert path.read_text() == "index\tprediction\n0\tentailment\n1\tnot_entailment\n2\tnot_entailment\n"


def test_glue_tsv_regression_floats_and_plain_ids(tmp_path):
    assert write_glue_predictions(tmp_path / "STS-B.tsv", [0, 1], [3.14159, 0.5], is_regression=True
                                  ).read_text() == "index\tprediction\n0\t3.142\n1\t0.500\n"
    assert write_glue_predictions(tmp_path / "x.tsv", [0], [1]).read_text() == "index\tprediction\n0\t1\n"
    with pytest.raises(ValueError, match="2 indices but 1 predictions"):
        write_glue_predictions(tmp_path / "y.tsv", [0, 1], [1])


def test_submission_file_names():
    assert glue_submission_filename("sst2") == "SST-2.tsv"
    assert glue_submission_filename("stsb") == "STS-B.tsv"
    assert glue_submission_filename("mnli", 0) == "MNLI-m.tsv"
    assert glue_submission_filename("mnli", 1) == "MNLI-mm.tsv"
    assert glue_submission_filename("custom") == "custom.tsv"


def test_squad_json_files(tmp_path):
    written = write_squad_predictions(tmp_path / "out", {"q1": "Zorblax River", "q2": ""}, {"q1": -1.5, "q2": 2.0})
    assert [p.name for p in written] == ["predictions.json", "null_odds.json"]
    assert json.loads((tmp_path / "out" / "predictions.json").read_text()) == {"q1": "Zorblax River", "q2": ""}
    assert json.loads((tmp_path / "out" / "null_odds.json").read_text()) == {"q1": -1.5, "q2": 2.0}
    assert [p.name for p in write_squad_predictions(tmp_path / "v1", {"q": "x"})] == ["predictions.json"]


def test_atomic_write_leaves_no_temporary_file(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "one")
    atomic_write_text(tmp_path / "a.txt", "two")
    assert (tmp_path / "a.txt").read_text() == "two"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]
    # Same permissions as any new file (a mkstemp temporary would leave it 0600).
    (tmp_path / "plain.txt").write_text("x")
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == (tmp_path / "plain.txt").stat().st_mode & 0o777


def test_records_as_tsv_or_jsonl(tmp_path):
    from evaluation.writers import write_records

    records = [{"line": 2, "text": "tab\there,\nnewline", "score": 0.123456789, "start": None}]
    text = write_records(tmp_path / "r.tsv", records).read_text(encoding="utf-8")
    assert text == "line\ttext\tscore\tstart\n2\ttab here, newline\t0.123457\t\n"  # one character for one
    assert json.loads(write_records(tmp_path / "r.jsonl", records).read_text(encoding="utf-8")) == records[0]
    with pytest.raises(ValueError, match=r"r.csv: cannot tell the output format .* expected .tsv or .jsonl"):
        write_records(tmp_path / "r.csv", records)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.jsonl", "r.tsv"]
