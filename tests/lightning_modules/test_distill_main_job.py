"""The main job's guard rails and its comparison script, on the tiny fixtures (the real run is in docs/distill.md)."""
import json
import os
import subprocess
from pathlib import Path

import torch
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

from models.student import extract_student
from tests.conftest import TINY

ROOT = Path(__file__).resolve().parents[2]


def test_main_job_stops_clearly_without_sst2(tmp_path):
    env = {**os.environ, "DATA_DIR": str(tmp_path)}
    result = subprocess.run(["bash", "scripts/main_job.sh"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 2
    assert "glue/SST-2" in result.stderr and str(tmp_path) in result.stderr
    env.pop("DATA_DIR")
    result = subprocess.run(["bash", "scripts/main_job.sh"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 2 and "DATA_DIR is not set" in result.stderr


def test_main_job_is_strict_bash():
    assert "set -euo pipefail" in (ROOT / "scripts" / "main_job.sh").read_text()


def test_compare_models_writes_markdown_and_json(tmp_path, data_dir, wordpiece_tokenizer_dir, capsys):
    from scripts.compare_models import main as compare

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(wordpiece_tokenizer_dir)
    teacher = BertForSequenceClassification(BertConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id,
                                                       **{**TINY, "num_hidden_layers": 4}))
    for name, model in (("teacher", teacher), ("student", extract_student(teacher))):
        model.save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
    out = tmp_path / "cmp" / "comparison.md"
    compare(["--teacher", str(tmp_path / "teacher"), "--student", str(tmp_path / "student"), "--task_name", "sst2",
             "--data_dir", str(data_dir), "--max_seq_length", "32", "--latency_examples", "8",
             "--latency_batch_size", "4", "--output", str(out)])
    progress = [line.split(":")[1].strip() for line in capsys.readouterr().out.splitlines()
                if line.startswith("compare: ")]  # a line per model and stage
    assert [p.split()[0] for p in progress] == ["preparing", "teacher", "teacher", "teacher", "student", "student",
                                                "student"]
    text = out.read_text()
    assert "| teacher |" in text and "| student |" in text and "dev accuracy (%)" in text
    rows = json.loads(out.with_suffix(".json").read_text())
    assert [r["layers"] for r in rows] == [4, 2]
    assert rows[1]["parameters"] < rows[0]["parameters"]
    assert all(0.0 <= r["dev"]["accuracy"] <= 100.0 and r["latency_ms"] > 0 for r in rows)
