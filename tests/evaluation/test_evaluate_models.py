"""scripts/evaluate_models.py end to end on the tiny fixtures: runs, medians table, plot."""
import json
import re
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

import evaluate_models  # noqa: E402


def test_two_tasks_two_seeds_table_and_plot(data_dir, tiny_bert_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    results_md = tmp_path / "RESULTS.md"
    rows = evaluate_models.main([
        "--models", str(tiny_bert_dir), "--names", "tiny", "--tasks", "sst2", "stsb", "--seeds", "1", "2",
        "--data_dir", str(data_dir), "--max_train_samples", "8", "--batch_size", "4", "--latency_batch_size", "4",
        "--latency_repeats", "2", "--out_dir", str(out), "--results_md", str(results_md), "--accelerator", "cpu",
    ])
    # progress: a line as each run starts and ends (run i/N, model, task, seed, elapsed, ETA)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[run ")]
    assert lines[0] == "[run 1/4] tiny sst2 seed 1: fine-tuning (1 epoch(s), then CPU latency)"
    assert re.fullmatch(r"\[run 4/4\] tiny stsb seed 2: score -?[0-9.]+ \([0-9.]+ s\) \| elapsed \d+:\d\d:\d\d \| "
                        r"ETA 0:00:00", lines[-1]) and len(lines) == 8
    runs = json.loads((out / "runs.json").read_text())
    assert [(r["task"], r["seed"]) for r in runs] == [("sst2", 1), ("sst2", 2), ("stsb", 1), ("stsb", 2)]
    assert "latency" in runs[0] and runs[0]["latency"]["num_threads"] == 1
    medians = {t: statistics.median(r["score"] for r in runs if r["task"] == t) for t in ("sst2", "stsb")}
    assert rows[0]["medians"] == medians
    table = (out / "results.md").read_text()
    assert "| model | params (M) | sst2 | stsb | macro | CPU ms/batch |" in table
    assert f"| tiny | 0.0 | {medians['sst2']:.1f} | {medians['stsb']:.1f} |" in table
    assert (out / "score_vs_latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = results_md.read_text()
    assert "python scripts/evaluate_models.py --models" in text and "score_vs_latency.png" in text

    # Re-summarising the saved runs (no training) gives the same table, with the plot where asked.
    again = evaluate_models.main([
        "--models", str(tiny_bert_dir), "--names", "tiny", "--tasks", "sst2", "stsb", "--summarise_only",
        "--out_dir", str(out), "--plot_path", str(tmp_path / "docs" / "plot.png"),
    ])
    assert again == rows and (out / "results.md").read_text() == table
    assert (tmp_path / "docs" / "plot.png").is_file()
