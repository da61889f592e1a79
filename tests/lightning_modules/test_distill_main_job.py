"""The main job's guard rails and its comparison script, on the tiny fixtures (the real run is in docs/distill.md)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

from models.student import extract_student
from tests.conftest import TINY

ROOT = Path(__file__).resolve().parents[2]


def main_job(cwd: Path, **env_vars: str) -> subprocess.CompletedProcess:
    """`bash scripts/main_job.sh` started from `cwd` (where ./data and ../shared/data are looked for), DATA_DIR unset
    unless given, offline (tests/conftest.py sets HF_HUB_OFFLINE), the test's Python as the job's."""
    env = {k: v for k, v in os.environ.items() if k != "DATA_DIR"}
    env.update(PY=sys.executable, **env_vars)
    return subprocess.run(["bash", str(ROOT / "scripts" / "main_job.sh")], cwd=cwd, env=env, capture_output=True,
                          text=True)


def test_main_job_offline_without_sst2_says_how_to_get_it(tmp_path):
    result = main_job(tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert f"no SST-2 found (glue/SST-2/{{train,dev}}.tsv under {tmp_path}/data {tmp_path}/../shared/data), and " \
           f"the hub is not reachable (offline)." in result.stderr
    assert "glue/SST-2/train.tsv and glue/SST-2/dev.tsv" in result.stderr and "make train DATA_DIR=<folder>" in \
        result.stderr
    result = main_job(ROOT, DATA_DIR=str(tmp_path))  # a DATA_DIR without SST-2: the same advice, naming it
    assert result.returncode == 2 and f"under {tmp_path})" in result.stderr


def test_main_job_chooses_local_files_or_the_hub(tmp_path, data_dir):
    """The arguments each source gives the three steps (DRY_RUN=1 prints the commands; nothing runs)."""
    local = main_job(tmp_path, DATA_DIR=str(data_dir), DRY_RUN="1")
    assert local.returncode == 0, local.stderr
    assert f"main_job: SST-2 from {data_dir}/glue/SST-2" in local.stdout
    assert local.stdout.count(f"--data.init_args.data_dir={data_dir}") == 2
    assert f"--data_dir {data_dir}" in local.stdout and "hub_name" not in local.stdout
    assert "--model.init_args.student_layers=spread" in local.stdout  # the default map, [0, 2, 5] of 6 layers
    old_map = main_job(tmp_path, DATA_DIR=str(data_dir), DRY_RUN="1", STUDENT_LAYERS="every_other")
    assert "--model.init_args.student_layers=every_other" in old_map.stdout
    (tmp_path / "data").symlink_to(data_dir)  # ./data of the folder the job starts from
    assert f"SST-2 from {tmp_path}/data/glue/SST-2" in main_job(tmp_path, DRY_RUN="1").stdout
    hub = main_job(tmp_path, DATA_DIR=str(tmp_path / "nowhere"), DRY_RUN="1", SST2_SOURCE="hub")
    assert hub.returncode == 0, hub.stderr
    assert "main_job: loading SST-2 from the hub (nyu-mll/glue, config sst2" in hub.stdout
    assert hub.stdout.count("--data.init_args.hub_name=nyu-mll/glue") == 2 and "--hub_name nyu-mll/glue" in hub.stdout
    assert "data_dir" not in hub.stdout
    wrong = main_job(tmp_path, SST2_SOURCE="web")
    assert wrong.returncode == 2 and "SST2_SOURCE=web; expected auto, files or hub" in wrong.stderr


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
