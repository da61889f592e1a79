"""scripts/predict_text.py: one command for every export, inputs from options or files, outputs printed or written,
bad input as one `error:` line, and the command `make train` (scripts/main_job.sh) prints at its end."""
import json
import shlex
import subprocess
from pathlib import Path

import pytest
import torch
from transformers import BertForSequenceClassification

from scripts.predict_text import main, run
from tests.evaluation.conftest import bert_config, save

ROOT = Path(__file__).resolve().parents[2]


def test_texts_and_pairs_from_options_print_label_names(classifier_dir, capsys):
    records = main([str(classifier_dir), "--text", "a gripping , funny film", "--text", "bad", "--device", "cpu"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].endswith("  a gripping , funny film")
    assert lines[0].startswith(f"{records[0]['label']} (") and records[0]["label"] in ("negative", "positive")
    main([str(classifier_dir), "--text", "the film", "--text_pair", "was good"])
    assert capsys.readouterr().out.strip().endswith("the film  |  was good")


def test_file_in_tsv_and_jsonl_out(classifier_dir, tmp_path, capsys):
    # the GLUE export reads SST-2's own column by default; a CSV with text/text_pair columns reads those
    (tmp_path / "dev.tsv").write_text("sentence\tlabel\nthe film was good \t1\nbad\t0\n", encoding="utf-8")
    out = tmp_path / "out" / "predictions.tsv"
    main([str(classifier_dir), "--input", str(tmp_path / "dev.tsv"), "--output", str(out)])
    assert capsys.readouterr().out.strip() == f"wrote 2 predictions to {out}"
    header, *rows = [line.split("\t") for line in out.read_text(encoding="utf-8").splitlines()]
    assert header == ["line", "text", "label", "score", "score_negative", "score_positive"]
    assert [r[0] for r in rows] == ["2", "3"] and all(r[2] in ("negative", "positive") for r in rows)
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # atomic: no temporary left

    (tmp_path / "pairs.csv").write_text('text,text_pair\n"a film, funny",was good\n', encoding="utf-8")
    main([str(classifier_dir), "--input", str(tmp_path / "pairs.csv"), "--output", str(tmp_path / "p.jsonl")])
    record = json.loads((tmp_path / "p.jsonl").read_text(encoding="utf-8"))
    assert record["line"] == 2 and (record["text"], record["text_pair"]) == ("a film, funny", "was good")
    assert set(record["scores"]) == {"negative", "positive"}
    assert record["score"] == pytest.approx(record["scores"][record["label"]])


def test_qa_from_jsonl_and_options(qa_dir, tmp_path, capsys):
    context = "the film was made in paris by a young director . " * 8 + "the dog named rex loves music ."
    (tmp_path / "q.jsonl").write_text(json.dumps({"id": "q1", "question": "who loves music ?", "context": context})
                                      + "\n", encoding="utf-8")
    main([str(qa_dir), "--input", str(tmp_path / "q.jsonl"), "--output", str(tmp_path / "a.jsonl"),
          "--max_seq_length", "32", "--doc_stride", "8"])
    record = json.loads((tmp_path / "a.jsonl").read_text(encoding="utf-8"))
    assert (record["line"], record["id"]) == (1, "q1") and context[record["start"]:record["end"]] == record["answer"]
    capsys.readouterr()
    main([str(qa_dir), "--question", "who loves music ?", "--question", "where ?", "--context", context])
    out = capsys.readouterr().out
    assert out.count("Q: ") == 2 and out.count("A: ") == 2 and "characters" in out


def test_fill_mask_prints_top_k(tiny_bert_dir, capsys):
    main([str(tiny_bert_dir), "--text", "the film was [MASK] .", "--top_k", "2"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "the film was [MASK] ." and lines[1].startswith("  mask 1: ") and lines[1].count("(") == 2


@pytest.mark.parametrize("args, message", [
    (["--question", "who?"], "error: --question does not apply: {cls} is a classification model; give --text"),
    ([], "error: nothing to predict: give --text (and --text_pair for pairs), or a file with --input"),
    (["--text", "a", "--text", "b", "--text_pair", "c"], "error: --text_pair given 1 times for 2 --text"),
    (["--text", "a", "--output", "out.txt"], "error: --output out.txt: cannot tell the output format from the "
                                            "extension '.txt'; expected .tsv or .jsonl"),
    (["--text", "a", "--top_k", "x"], "error: argument --top_k: invalid int value: 'x'"),
    (["--text", "a", "--top_k", "3"], "error: --top_k does not apply: {cls} is a classification model"),
    (["--text", "  "], "error: --text: empty text"),
    (["--input", "{tmp}/missing.tsv"], "error: --input {tmp}/missing.tsv: no such file"),
    (["--input", "{tmp}/bad.tsv"], "error: {tmp}/bad.tsv, line 1: missing column 'text'; the header has ['review']"
                                   " (choose the column with --text_column)"),
    (["--input", "{tmp}/empty_cell.jsonl"], "error: {tmp}/empty_cell.jsonl, line 2: empty text"),
    (["--text", "a", "--max_seq_length", "999"], "error: max_seq_length=999: the model ({cls}) takes 1 to 130"),
])
def test_bad_input_is_one_line(classifier_dir, tmp_path, capsys, args, message):
    (tmp_path / "bad.tsv").write_text("review\nfine\n", encoding="utf-8")
    (tmp_path / "empty_cell.jsonl").write_text('{"text": "good"}\n{"text": ""}\n', encoding="utf-8")
    args = [a.format(tmp=tmp_path) for a in args]
    try:
        status = run([str(classifier_dir), *args])
    except SystemExit as exit_:  # argparse's own errors
        status = exit_.code
    assert status == 2
    err = capsys.readouterr().err
    assert err.startswith(message.format(cls=classifier_dir, tmp=tmp_path)), err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_other_kinds_refuse_options_of_classifiers(qa_dir, tiny_bert_dir, capsys):
    assert run([str(qa_dir), "--text", "a"]) == 2
    assert capsys.readouterr().err.startswith(f"error: --text does not apply: {qa_dir} is a question-answering "
                                              f"model; give --question and --context")
    assert run([str(tiny_bert_dir), "--text", "no mask here"]) == 2
    assert capsys.readouterr().err.startswith("error: --text: no [MASK] in the text")


def test_the_command_main_job_prints_works(tmp_path, wordpiece_tokenizer_dir, capsys):
    """The lines of scripts/main_job.sh that print the inference command, expanded by bash with its PY and OUT, give
    a command that runs on a student export where main_job.sh puts it."""
    lines = [line for line in (ROOT / "scripts" / "main_job.sh").read_text().splitlines()
             if line.startswith("echo") and "predict_text.py" in line]
    assert lines, "main_job.sh no longer prints how to run inference"
    out = tmp_path / "main_job"
    script = f"PY=.venv/bin/python; OUT={out}; " + "; ".join(lines)
    printed = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True).stdout
    command = [line for line in printed.splitlines() if "predict_text.py" in line and "--text" in line]
    argv = shlex.split(command[-1])
    assert argv[:2] == [".venv/bin/python", "scripts/predict_text.py"] and argv[2] == f"{out}/student/best"

    torch.manual_seed(0)
    config = bert_config(wordpiece_tokenizer_dir, num_labels=2, id2label={0: "negative", 1: "positive"},
                         label2id={"negative": 0, "positive": 1})
    save(BertForSequenceClassification(config), wordpiece_tokenizer_dir, out / "student" / "best")
    capsys.readouterr()
    assert run(argv[2:]) == 0
    assert capsys.readouterr().out.split(" (")[0] in ("negative", "positive")
