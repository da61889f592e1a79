"""The results command (scripts/results.py, experiments/): plan, run configs, records, tables, resuming.

The end-to-end check runs `--quick` (one seed of every run of the plan, tiny subsets, a few steps) on the real data
(`DATA_DIR`, as CI has it): every run leaves a record with finite metrics, RESULTS.md gets every table, a second
invocation runs nothing, and a deleted record or a lost output is redone with exactly what it needs.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
from pathlib import Path

import pytest
import yaml

from experiments.plan import FULL, QUICK, Run, plan
from experiments.runner import Runner, csv_history, run_config, set_option
from experiments.tables import sections, write_results

ROOT = Path(__file__).resolve().parents[1]


# ---- the plan ------------------------------------------------------------------------------------------------------------
def test_plan_dependencies_come_first_and_exist():
    for scale in (FULL, QUICK):
        runs = plan(scale)
        position = {run.id: i for i, run in enumerate(runs)}
        for run in runs:
            for need in run.needs():
                assert need in position, f"{run.id} needs {need}, which is not in the plan"
                assert position[need] < position[run.id], f"{run.id} runs before {need}"


def test_plan_covers_every_table_and_seed():
    runs = plan(FULL)
    tables = {run.table for run in runs}
    assert tables == {"setup", "distilbert", "temperature", "ablation", "roberta", "formats", "objectives", "squad"}
    t1 = [r for r in runs if r.table == "distilbert" and r.kind == "fit"]
    assert {r.seed for r in t1} == {1, 2, 3}
    assert len(t1) == 5 * 3 * 3  # five tasks, three models, three seeds
    assert {r.labels["temperature"] for r in runs if r.table == "temperature"} == {"1", "4", "8", "linear 8 -> 1"}
    # the layer maps compared in table 2 are the spread (first and last kept) and the every-other map
    maps = {tuple(r.options["model.init_args.student_layers"]) for r in runs
            if r.table == "ablation" and "model.init_args.student_layers" in r.options}
    assert maps == {(0, 3), (0, 2)}


def test_every_option_of_the_full_plan_is_an_argument_of_its_class(tmp_path):
    """A misspelt option would only fail hours into the full run: check each against the signatures now."""
    import importlib
    import inspect

    from lightning.pytorch import Trainer

    def arguments(class_path: str) -> set[str]:
        module, name = class_path.rsplit(".", 1)
        cls = getattr(importlib.import_module(module), name)
        return {n for klass in cls.__mro__ if "__init__" in vars(klass)
                for n in inspect.signature(klass.__init__).parameters}

    trainer_args = set(inspect.signature(Trainer.__init__).parameters)
    for run in plan(FULL):
        if run.kind not in ("fit", "validate"):
            continue
        config = run_config(run, run.options, tmp_path / run.id, data_dir=None)  # callbacks.* checked here
        for key in run.options:
            part = key.split(".")
            if part[0] == "trainer":
                assert part[1] in trainer_args, f"{run.id}: {key}"
            elif part[0] in ("model", "data"):
                assert part[1] == "init_args" and part[2] in arguments(config[part[0]]["class_path"]), \
                    f"{run.id}: {key} is not an argument of {config[part[0]]['class_path']}"


def test_run_needs_reads_nested_references():
    run = Run("x", "t", "latency", None, {"models": {"a": "@one", "b": "@two"}, "files": ["@three", "plain"]})
    assert run.needs() == ["one", "two", "three"]


# ---- one run's config ------------------------------------------------------------------------------------------------------
def test_run_config_applies_options_paths_and_seed(tmp_path):
    run = Run("r", "temperature", "fit", "configs/distill/glue.yaml",
              {"trainer.max_epochs": 1, "model.init_args.alpha_ce": 0.0, "callbacks.TemperatureAnnealing.t_start": 8.0},
              seed=3)
    config = run_config(run, run.options, tmp_path / "r", data_dir="/data")
    names = [c["class_path"].rsplit(".", 1)[-1] for c in config["trainer"]["callbacks"]]
    assert "ModelCheckpoint" not in names and "PreemptionCheckpoint" not in names
    export = next(c for c in config["trainer"]["callbacks"] if c["class_path"].endswith("HFExport"))
    assert export["init_args"]["dirpath"] == str(tmp_path / "r" / "export")
    assert export["init_args"]["export_best"] is False
    annealing = next(c for c in config["trainer"]["callbacks"] if c["class_path"].endswith("TemperatureAnnealing"))
    assert annealing["init_args"]["t_start"] == 8.0
    assert config["seed_everything"] == 3 and config["trainer"]["max_epochs"] == 1
    assert config["model"]["init_args"]["alpha_ce"] == 0.0 and config["data"]["init_args"]["data_dir"] == "/data"
    assert config["trainer"]["logger"]["class_path"].endswith("CSVLogger")


def test_run_config_keeps_the_records_fp32_on_a_cpu(tmp_path, monkeypatch):
    """The committed records were measured in fp32 on a CPU with torch's dropout and the CPU's denormals: a CPU with
    native bf16 (where train.py defaults to bf16-mixed) still runs the results in fp32; a GPU keeps train.py's default;
    a run's own option wins."""
    import torch

    run = Run("r", "temperature", "fit", "configs/distill/glue.yaml", {}, seed=1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    trainer = run_config(run, {}, tmp_path / "r", data_dir=None)["trainer"]
    assert trainer["precision"] == "32-true"
    # and torch's own dropout and denormal arithmetic (train.py would add callbacks.cpu_dropout.FastCPUDropout and
    # callbacks.cpu_denormals.FlushDenormals, enabled)
    assert {"class_path": "callbacks.cpu_denormals.FlushDenormals", "init_args": {"enabled": False}} \
        in trainer["callbacks"]
    assert {"class_path": "callbacks.cpu_dropout.FastCPUDropout", "init_args": {"enabled": False}} \
        in trainer["callbacks"]
    assert run_config(run, {"trainer.precision": "bf16-mixed"}, tmp_path / "r",
                      data_dir=None)["trainer"]["precision"] == "bf16-mixed"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert "precision" not in run_config(run, {}, tmp_path / "r", data_dir=None)["trainer"]


def test_set_option_names_a_missing_callback():
    config = {"trainer": {"callbacks": []}}
    with pytest.raises(KeyError, match="no TemperatureAnnealing callback"):
        set_option(config, "callbacks.TemperatureAnnealing.t_start", 1.0)


def test_csv_history_keeps_validation_and_training_loss(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,step,train/loss,val/loss,lr-AdamW\n0,9,5.0,,0.001\n0,19,,4.5,\n0,19,4.0,,0.001\n")
    assert csv_history(path) == {"train/loss": [[9, 5.0], [19, 4.0]], "val/loss": [[19, 4.5]]}
    assert csv_history(tmp_path / "missing.csv") == {}


# ---- tables ---------------------------------------------------------------------------------------------------------------
def glue_record(model: str, task: str, seed: int, value: float, params: int = 10_000_000) -> dict:
    return {"id": f"{model}-{task}-{seed}", "table": "distilbert", "kind": "fit", "seed": seed,
            "labels": {"model": model, "task": task}, "metrics": {"val/score": value}, "parameters": params,
            "options": {}}


def test_distilbert_table_medians_and_claim(tmp_path):
    tasks = ("sst2", "mrpc", "cola", "stsb", "rte")
    records = []
    for seed, shift in ((1, 0.0), (2, 1.0), (3, -4.0)):
        for task in tasks:
            records.append(glue_record("teacher", task, seed, 80.0 + shift))
            records.append(glue_record("student", task, seed, 78.0 + shift))
    for task in tasks:
        records.append({"id": f"lat-{task}", "table": "distilbert", "kind": "latency", "seed": 1,
                        "labels": {"task": task}, "latency": {"teacher": {"median_s": 2.0},
                                                             "student": {"median_s": 1.0}}})
    text = sections(records)["distilbert"]
    teacher_row = next(line for line in text.splitlines() if line.startswith("| MiniLM-L6 teacher"))
    assert "| 80.0 | 80.0 | 80.0 | 80.0 | 80.0 | 80.0 | 10.00 |" in teacher_row  # medians, macro, CPU seconds
    assert "97.5%" in text and "2.00x" in text and "holds" in text  # 78/80 at 2x: the claim holds
    slow = [dict(r, latency={"teacher": {"median_s": 1.5}, "student": {"median_s": 1.0}}) if r["kind"] == "latency"
            else r for r in records]
    assert "does not hold" in sections(slow)["distilbert"]  # 1.5x is short of 1.8x


def test_write_results_keeps_the_text_around_the_markers(tmp_path):
    md = tmp_path / "RESULTS.md"
    md.write_text("# Results\n\nintro\n\n<!-- results:squad -->\nold\n<!-- /results:squad -->\n\nreading\n")
    records = [{"id": "s", "table": "squad", "kind": "fit", "seed": 1, "labels": {"model": "teacher"},
                "metrics": {"val/exact_match": 50.0, "val/f1": 60.0}, "parameters": 22_700_000,
                "options": {"data.init_args.train_articles": [0, 38], "data.init_args.eval_articles": [38, 48]}}]
    write_results(records, md, tmp_path / "plots")
    text = md.read_text()
    assert text.startswith("# Results\n\nintro\n\n<!-- results:squad -->\n")
    assert "old" not in text and "| teacher | 22.7 | 50.0 | 60.0 |" in text
    assert text.index("-->\n\nreading\n") < text.index("<!-- results:distilbert -->")  # the reading stays
    for name in ("distilbert", "ablation", "roberta", "temperature"):  # missing sections are appended
        assert f"<!-- results:{name} -->" in text


def test_squad_table_gives_the_student_as_a_share_of_its_seeds_teacher():
    options = {"data.init_args.train_articles": [0, 38], "data.init_args.eval_articles": [38, 48]}
    records = [{"id": f"{m}", "table": "squad", "kind": "fit", "seed": 1, "labels": {"model": m}, "options": options,
                "metrics": {"val/exact_match": em, "val/f1": f1}, "parameters": p}
               for m, em, f1, p in [("student", 20.0, 30.0, 17_200_000), ("teacher", 50.0, 60.0, 22_700_000)]]
    rows = sections(records)["squad"].splitlines()[2:]
    assert rows == ["| teacher | 22.7 | 50.0 | 60.0 | 100.0 | 0-37 / 38-47 | 1 |",
                    "| student | 17.2 | 20.0 | 30.0 | 50.0 | 0-37 / 38-47 | 1 |"]


def test_objectives_table_lists_each_seeds_score_in_seed_order():
    def run(model: str, seed: int) -> list[dict]:
        labels = {"variant": "TinyBERT"}
        return [{"id": model, "table": "objectives", "kind": "fit", "seed": seed, "labels": labels, "metrics": {}},
                {"id": f"{model}-ppl", "table": "objectives", "kind": "validate", "seed": seed,
                 "labels": {**labels, "model": model, "measure": "perplexity"},
                 "metrics": {"val/perplexity": 800.0 + seed}},
                {"id": f"{model}-sst2", "table": "objectives", "kind": "fit", "seed": seed,
                 "labels": {**labels, "model": model, "measure": "task-sst2"}, "metrics": {"val/score": 60.0 + seed}}]
    records = run("o-s3", 3) + run("o-s1", 1) + run("o-s2", 2)
    row = sections(records)["objectives"].splitlines()[2]
    assert row == "| TinyBERT | 802.0 | 62.0 | 61.00 / 62.00 / 63.00 | 3 seeds (1, 2, 3) |"


def test_committed_records_give_the_committed_tables(tmp_path):
    """RESULTS.md's generated sections are what the committed records give (nothing edited by hand, nothing stale)."""
    records = [json.loads(p.read_text()) for p in sorted((ROOT / "results" / "runs").glob("*.json"))]
    committed = (ROOT / "RESULTS.md").read_text()
    for name, body in sections(records).items():
        if name.startswith("_"):
            continue
        match = re.search(rf"<!-- results:{name} -->\n(.*?)\n<!-- /results:{name} -->", committed, re.S)
        assert match, f"RESULTS.md has no {name} section"
        assert match.group(1) == body, f"RESULTS.md's {name} table differs from its records: run " \
                                       "`python scripts/results.py --tables_only`"
    stale = Runner(plan(FULL), ROOT / "results" / "runs", ROOT / "artifacts" / "results").stale()
    assert stale == [], f"committed records that no longer match the plan: {stale}"
    for record in records:  # each record names the config it ran, and that config is committed
        if record["kind"] in ("fit", "validate"):
            config = ROOT / record["command"].split("--config ", 1)[1]
            assert config.exists() and yaml.safe_load(config.read_text())["seed_everything"] == record["seed"]


def test_records_that_no_longer_match_the_plan_are_run_again(tmp_path):
    """A record whose run changed in the plan (options, config, kind, seed) is stale, and so is every record that used
    its output; `run_all` drops them first, so they run again."""
    def runs(lr):
        return [Run("a", "t", "fit", "configs/x.yaml", {"model.init_args.lr": lr}),
                Run("b", "t", "validate", "configs/x.yaml", {"model.init_args.pretrained": "@a"}),
                Run("c", "t", "fit", "configs/x.yaml", {"trainer.max_steps": (1, 2)}, seed=2)]

    records = tmp_path / "runs"
    records.mkdir()
    for run in runs(1e-4):
        (records / f"{run.id}.json").write_text(json.dumps({"id": run.id, "kind": run.kind, "config": run.config,
                                                            "options": run.options, "seed": run.seed}))
        (records / f"{run.id}.yaml").write_text("seed_everything: 1\n")
    assert Runner(runs(1e-4), records, tmp_path / "artifacts").stale() == []  # tuples recorded as lists still match
    runner = Runner(runs(3e-5), records, tmp_path / "artifacts")
    assert runner.stale() == ["a", "b"]  # b used a's output
    assert runner.drop_stale() == ["a", "b"]
    assert sorted(p.name for p in records.iterdir()) == ["c.json", "c.yaml"]
    reseeded = [Run(r.id, r.table, r.kind, r.config, r.options, seed=3) for r in runs(1e-4)]
    assert Runner(reseeded, records, tmp_path / "artifacts").stale() == ["c"]


# ---- end to end: --quick ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, data_dir):
    """`--quick` on the tiny data files of the test suite (the official formats; the same run works on the real data,
    `DATA_DIR=../shared/data python scripts/results.py --quick --out_dir DIR`)."""
    from scripts.results import main

    out = tmp_path_factory.mktemp("quick")
    main(["--quick", "--out_dir", str(out), "--data_dir", str(data_dir)])
    return out


def test_quick_mode_records_every_run_and_writes_every_table(quick_run):
    runs = plan(QUICK)
    for run in runs:
        record = json.loads((quick_run / "runs" / f"{run.id}.json").read_text())
        assert record["seed"] == run.seed and record["seconds"] >= 0 and record["finished"]
        if run.kind in ("fit", "validate"):
            assert record["metrics"] and all(math.isfinite(v) for v in record["metrics"].values()), run.id
            assert (quick_run / "runs" / f"{run.id}.yaml").exists()
        if run.kind == "latency":
            assert {"teacher", "student"} <= set(record["latency"])
    text = (quick_run / "RESULTS.md").read_text()
    for name in ("distilbert", "ablation", "roberta", "temperature", "squad", "formats", "objectives"):
        body = re.search(rf"<!-- results:{name} -->\n(.*?)\n<!-- /results:{name} -->", text, re.S).group(1)
        assert body.count("\n| ") >= 2, f"table {name} has no rows"
    assert (quick_run / "plots" / "score_vs_latency.png").exists()
    assert (quick_run / "plots" / "roberta_curves.png").exists()


def test_quick_mode_resumes_with_what_is_missing(quick_run, data_dir, monkeypatch):
    runner = Runner(plan(QUICK), quick_run / "runs", quick_run / "artifacts", data_dir=str(data_dir))
    assert runner.run_all() == []  # everything is recorded: nothing runs
    # a lost output is redone only when a run that needs it is redone
    stamp = json.loads(runner.record_path("t2-teacher-s1").read_text())["finished"]
    shutil.rmtree(quick_run / "artifacts" / "t2-teacher-s1")
    runner.record_path("t2-teacher-s1-ppl").unlink()
    ran = []
    original = Runner.ensure

    def spy(self, run_id, fresh_output):
        if self.record(run_id) is None or (fresh_output and not self.output(run_id).exists()):
            ran.append(run_id)
        return original(self, run_id, fresh_output)

    monkeypatch.setattr(Runner, "ensure", spy)
    assert runner.run_all() == ["t2-teacher-s1-ppl"]
    assert ran == ["t2-teacher-s1-ppl", "t2-teacher-s1"]
    assert runner.output("t2-teacher-s1").exists()
    assert json.loads(runner.record_path("t2-teacher-s1").read_text())["finished"] >= stamp
