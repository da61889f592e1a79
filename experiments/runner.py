"""Run the plan's runs that have no record yet, each writing its record (config, seed, metrics, times) as JSON.

A `fit` or `validate` run is `train.py` itself, in this process: the run's YAML (its base config with the run's
options and output paths applied) is written next to its record (`<records>/<id>.yaml`) and run as
`python train.py <fit|validate> --config <records>/<id>.yaml`, which is also how to repeat it by hand. What the
runs write (exports, CSV logs) goes to `<artifacts>/<id>/`; the records and YAMLs are what is committed.
"""
from __future__ import annotations

import csv
import gc
import json
import math
import os
import platform
import subprocess
import time
from pathlib import Path

import torch
import yaml

from datamodules.atomic import atomic_write_text
from evaluation.writers import write_json
from experiments.plan import Run

ROOT = Path(__file__).resolve().parents[1]
# Callbacks a results run does without: no resumable checkpoints (a run is redone whole), no SIGTERM checkpoint.
DROPPED_CALLBACKS = ("ModelCheckpoint", "PreemptionCheckpoint")


class Runner:
    """Executes runs into `records_dir` (JSON + YAML per run) with their outputs under `artifacts_dir`."""

    def __init__(self, runs: list[Run], records_dir: Path, artifacts_dir: Path, data_dir: str | None = None):
        self.runs = {run.id: run for run in runs}
        self.records_dir, self.artifacts_dir, self.data_dir = Path(records_dir), Path(artifacts_dir), data_dir

    # ---- where things are --------------------------------------------------------------------------------------------
    def record_path(self, run_id: str) -> Path:
        return self.records_dir / f"{run_id}.json"

    def record(self, run_id: str) -> dict | None:
        path = self.record_path(run_id)
        return json.loads(path.read_text()) if path.exists() else None

    def output(self, run_id: str) -> Path:
        """The model (or tokenizer) directory a run leaves for the runs that use it."""
        run = self.runs[run_id]
        return self.artifacts_dir / run_id / {"tokenizer": "tokenizer", "tiny_model": "model"}.get(run.kind,
                                                                                                  "export/last")

    def stale(self) -> list[str]:
        """Recorded runs whose record no longer matches the plan (another config, options, kind or seed), and every
        recorded run that used one of their outputs, in plan order: their figures came from another recipe."""
        found: set[str] = set()
        for run in self.runs.values():  # plan order: a run's needs come before it
            record = self.record(run.id)
            if record is None:
                continue
            planned = json.loads(json.dumps({"kind": run.kind, "config": run.config, "options": run.options,
                                             "seed": run.seed}))
            if {k: record.get(k) for k in planned} != planned or found.intersection(run.needs()):
                found.add(run.id)
        return [run_id for run_id in self.runs if run_id in found]

    def drop_stale(self) -> list[str]:
        """Delete the records (JSON and YAML) of the stale runs (see `stale`), so that they run again."""
        dropped = self.stale()
        for run_id in dropped:
            print(f"[results] {run_id}: its record does not match the plan (or used a run that does not); "
                  f"running it again", flush=True)
            self.record_path(run_id).unlink()
            (self.records_dir / f"{run_id}.yaml").unlink(missing_ok=True)
        return dropped

    # ---- running -----------------------------------------------------------------------------------------------------
    def run_all(self, only: set[str] | None = None, limit: int | None = None) -> list[str]:
        """Run every run without a current record (those of the tables in `only`, when given), at most `limit` of
        them; records that no longer match the plan are dropped first."""
        self.drop_stale()
        done = []
        todo = [r for r in self.runs.values() if only is None or r.table in only]
        missing = [r for r in todo if self.record(r.id) is None]
        print(f"[results] {len(todo) - len(missing)} of {len(todo)} runs recorded; {len(missing)} to run", flush=True)
        start = time.perf_counter()
        for i, run in enumerate(missing):
            if limit is not None and len(done) >= limit:
                break
            self.ensure(run.id, fresh_output=False)
            done.append(run.id)
            elapsed = time.perf_counter() - start
            print(f"[results] {i + 1}/{len(missing)} done ({run.id}), {elapsed / 60:.1f} min so far", flush=True)
        return done

    def ensure(self, run_id: str, fresh_output: bool) -> None:
        """Make sure `run_id` is recorded (and, with fresh_output, that its output directory exists), running what
        it needs first. A recorded run whose output is gone (a fresh clone) is run again when a later run needs it."""
        if run_id not in self.runs:
            raise KeyError(f"run {run_id!r} is not in the plan")
        recorded = self.record(run_id) is not None
        if recorded and (not fresh_output or self.output(run_id).exists()):
            return
        if recorded:
            print(f"[results] {run_id}: recorded, but its output {self.output(run_id)} is gone; running it again",
                  flush=True)
        run = self.runs[run_id]
        for need in run.needs():
            self.ensure(need, fresh_output=True)
        print(f"[results] running {run.id} ({run.kind}, table {run.table}, seed {run.seed})", flush=True)
        started = time.perf_counter()
        record = {"id": run.id, "table": run.table, "kind": run.kind, "seed": run.seed, "labels": run.labels,
                  "config": run.config, "options": run.options}
        record.update(getattr(self, f"_{run.kind}")(run))
        record.update(seconds=round(time.perf_counter() - started, 1), finished=time.strftime("%Y-%m-%d %H:%M:%S"),
                      machine=machine(), commit=git_commit())
        write_json(self.record_path(run.id), record)

    def resolve(self, value):
        """Options with every "@<id>" replaced by that run's output directory."""
        if isinstance(value, str) and value.startswith("@"):
            return str(self.output(value[1:]))
        if isinstance(value, dict):
            return {k: self.resolve(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.resolve(v) for v in value]
        return value

    # ---- the kinds of run --------------------------------------------------------------------------------------------
    def _tokenizer(self, run: Run) -> dict:
        from scripts.train_tokenizer import main as train_tokenizer

        out = self.output(run.id)
        args = ["--files", *run.options["files"], "--vocab_size", str(run.options["vocab_size"]), "--out", str(out)]
        if self.data_dir:
            args += ["--data_dir", self.data_dir]
        train_tokenizer(args)
        return {"command": "python scripts/train_tokenizer.py " + " ".join(args)}

    def _tiny_model(self, run: Run) -> dict:
        """A randomly initialised masked LM of the given sizes with the tokenizer of `like` (quick mode's teacher)."""
        from models.convert import save_export
        from models.mlm import build_masked_lm
        from models.pretrained import load_tokenizer

        options = dict(run.options)
        tokenizer = load_tokenizer(options.pop("like"))
        model = build_masked_lm(None, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, **options)
        save_export(model, self.output(run.id), tokenizer)
        return {"parameters": sum(p.numel() for p in model.parameters())}

    def _fit(self, run: Run) -> dict:
        return self._train(run, "fit")

    def _validate(self, run: Run) -> dict:
        return self._train(run, "validate")

    def _train(self, run: Run, subcommand: str) -> dict:
        import train

        run_dir = self.artifacts_dir / run.id
        config = run_config(run, self.resolve(run.options), run_dir, self.data_dir)
        config_path = self.records_dir / f"{run.id}.yaml"
        atomic_write_text(config_path, yaml.safe_dump(config, sort_keys=False))
        cli = train.main([subcommand, "--config", str(config_path)])
        trainer = cli.trainer
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if getattr(v, "numel", lambda: 1)() == 1}
        parameters = sum(p.numel() for p in cli.model.model.parameters())
        del cli, trainer
        gc.collect()
        return {"command": f"python train.py {subcommand} --config {config_path.as_posix()}",
                "metrics": {k: v for k, v in metrics.items() if math.isfinite(v)}, "parameters": parameters,
                "history": csv_history(run_dir / "csv" / "version_0" / "metrics.csv")}

    def _latency(self, run: Run) -> dict:
        from experiments.latency import dev_set_seconds

        models = self.resolve(run.options["models"])
        return {"latency": dev_set_seconds(models, run.options["task"], data_dir=self.data_dir,
                                           max_eval_samples=run.options.get("max_eval_samples"),
                                           rounds=run.options["rounds"])}


def run_config(run: Run, options: dict, run_dir: Path, data_dir: str | None) -> dict:
    """The run's YAML: its base config, output paths under `run_dir`, the run's seed and options."""
    config = yaml.safe_load((ROOT / run.config).read_text())
    trainer = config.setdefault("trainer", {})
    trainer["default_root_dir"] = str(run_dir)
    trainer["enable_checkpointing"] = False
    trainer.update(enable_progress_bar=False, enable_model_summary=False)  # the ProgressLog lines are the log
    # The committed records were measured in fp32 on a CPU with torch's own dropout and the CPU's denormal arithmetic:
    # keep that arithmetic on every CPU (train.py would pick bf16-mixed on one with native bf16, the faster dropout
    # mask and denormals flushed to zero), so a table never mixes them; a GPU keeps train.py's default precision.
    if not torch.cuda.is_available():
        trainer.setdefault("precision", "32-true")
    trainer["logger"] = {"class_path": "lightning.pytorch.loggers.CSVLogger",
                         "init_args": {"save_dir": str(run_dir), "name": "csv", "version": 0}}
    callbacks = []
    for callback in trainer.get("callbacks", []):
        name = callback["class_path"].rsplit(".", 1)[-1]
        if name in DROPPED_CALLBACKS:
            continue
        if name == "HFExport":  # only `last`: the model at the end of training, no selection on the dev set
            callback.setdefault("init_args", {}).update(dirpath=str(run_dir / "export"), export_best=False)
        callbacks.append(callback)
    for class_path in ("callbacks.cpu_dropout.FastCPUDropout", "callbacks.cpu_denormals.FlushDenormals"):
        if not any(c["class_path"].endswith(class_path.rsplit(".", 1)[-1]) for c in callbacks):
            callbacks.append({"class_path": class_path, "init_args": {"enabled": False}})
    trainer["callbacks"] = callbacks
    config["seed_everything"] = run.seed
    if data_dir:
        config.setdefault("data", {}).setdefault("init_args", {})["data_dir"] = data_dir
    for key, value in options.items():
        set_option(config, key, value)
    return config


def set_option(config: dict, key: str, value) -> None:
    """Set a dotted key (`trainer.max_steps`, `model.init_args.lr`, `callbacks.<ClassName>.<arg>`) in `config`."""
    parts = key.split(".")
    if parts[0] == "callbacks":
        name, arg = parts[1], parts[2]
        for callback in config["trainer"]["callbacks"]:
            if callback["class_path"].rsplit(".", 1)[-1] == name:
                callback.setdefault("init_args", {})[arg] = value
                return
        raise KeyError(f"option {key}: the config has no {name} callback")
    node = config
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def csv_history(path: Path) -> dict[str, list[list[float]]]:
    """Metric -> [[step, value], ...] from Lightning's CSVLogger file (validation metrics and the training loss)."""
    if not path.exists():
        return {}
    history: dict[str, list[list[float]]] = {}
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            for name, value in row.items():
                keep = name.startswith("val/") or name in ("train/loss", "train/loss_epoch")
                if keep and value not in ("", None):
                    history.setdefault(name, []).append([int(row["step"]), round(float(value), 6)])
    return history


def machine() -> str:
    import torch

    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}"


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip() or None
    except (OSError, subprocess.CalledProcessError):
        return None
