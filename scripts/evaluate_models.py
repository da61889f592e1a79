"""Fine-tune several models on several GLUE tasks (and SQuAD) over several seeds; write the table and latency plot.

    python scripts/evaluate_models.py --models packaged:all-minilm-l6-v2 artifacts/student/hf_export/best \
        --tasks sst2 rte --seeds 1 2 3 --max_train_samples 2000 --max_epochs 1 --out_dir artifacts/eval

Each (model, task, seed) run fine-tunes with the same LightningModule/DataModule as `train.py` (GLUE:
SequenceClassificationModule + GLUEDataModule; "squad"/"squad_v2": QuestionAnsweringModule + SQuADDataModule with the
DataModule's article split) and keeps the dev score after the last epoch (`val/score`: the task's main metric, in
percent). Written to --out_dir: `runs.json` (every run's metrics), `results.md` (medians over seeds per model and task,
their macro average, parameters and CPU latency) and `score_vs_latency.png`. CPU latency is
`evaluation.latency.measure_cpu_latency` on one batch of the first task's dev set (median of --latency_repeats runs
after warm-up, --latency_threads threads, torch.inference_mode), measured on the first seed's fine-tuned model.
Progress: a line when each run starts and ends (run i/N, model, task, seed), and the training's own lines
(`callbacks.progress.ProgressLog`, every --progress_every optimiser steps and after each validation).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lightning.pytorch as pl  # noqa: E402

from callbacks.progress import ProgressLog, format_duration  # noqa: E402
from datamodules.atomic import atomic_write_text  # noqa: E402
from experiments.tables import save_figure  # noqa: E402
from evaluation.latency import measure_cpu_latency  # noqa: E402
from evaluation.writers import write_json  # noqa: E402
from lightning_modules.precision import default_precision  # noqa: E402

QA_TASKS = ("squad", "squad_v2")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", required=True, help="checkpoint dirs, hub names or packaged:all-minilm-l6-v2")
    p.add_argument("--names", nargs="+", help="display names of the models (default: the last path part)")
    p.add_argument("--tasks", nargs="+", default=["sst2"], help="GLUE task names, or squad / squad_v2")
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    p.add_argument("--data_dir", default=None, help="default: $DATA_DIR, else ./data")
    p.add_argument("--max_train_samples", type=int, default=None, help="first N training examples per task")
    p.add_argument("--max_eval_samples", type=int, default=None, help="first N dev examples per task")
    p.add_argument("--max_epochs", type=int, default=1)
    p.add_argument("--max_seq_length", type=int, default=128, help="GLUE sequence length (SQuAD uses 384)")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--warmup_ratio", type=float, default=0.1)
    p.add_argument("--weight_decay", type=float, default=0.01)
    p.add_argument("--latency_batch_size", type=int, default=32)
    p.add_argument("--latency_threads", type=int, default=1)
    p.add_argument("--latency_repeats", type=int, default=10)
    p.add_argument("--out_dir", default="artifacts/evaluate_models")
    p.add_argument("--results_md", default=None, help="also write the table and plot link into this markdown file")
    p.add_argument("--plot_path", default=None, help="where the PNG goes (default: <out_dir>/score_vs_latency.png)")
    p.add_argument("--summarise_only", action="store_true",
                   help="no training: rebuild the table and plot from <out_dir>/runs.json")
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--progress_every", type=int, default=50, help="optimiser steps between two progress lines")
    args = p.parse_args(argv)
    if args.names and len(args.names) != len(args.models):
        p.error(f"--names has {len(args.names)} entries but --models has {len(args.models)}")
    return args


def build(model_path: str, task: str, args):
    """The DataModule and LightningModule of one run (the data facts passed as train.py's links pass them)."""
    if task in QA_TASKS:
        from datamodules.squad import SQuADDataModule
        from lightning_modules.qa import QuestionAnsweringModule

        eval_file = "squad/dev-v2.0.json" if task == "squad_v2" else "squad/dev-v1.1.json"
        dm = SQuADDataModule(model_path, eval_file=eval_file, data_dir=args.data_dir, batch_size=args.batch_size,
                             eval_batch_size=args.latency_batch_size, max_train_samples=args.max_train_samples,
                             max_eval_samples=args.max_eval_samples)
        module = QuestionAnsweringModule(model_path, task_name=dm.task_name, lr=args.lr,
                                         warmup_ratio=args.warmup_ratio, weight_decay=args.weight_decay)
        return dm, module
    from datamodules.glue import GLUEDataModule
    from lightning_modules.finetune import SequenceClassificationModule

    dm = GLUEDataModule(model_path, task_name=task, data_dir=args.data_dir, max_seq_length=args.max_seq_length,
                        batch_size=args.batch_size, eval_batch_size=args.latency_batch_size,
                        max_train_samples=args.max_train_samples, max_eval_samples=args.max_eval_samples)
    module = SequenceClassificationModule(model_path, task_name=dm.task_name, num_labels=dm.num_labels,
                                          label_names=dm.label_names, label_display_names=dm.label_display_names,
                                          is_regression=dm.is_regression, lr=args.lr,
                                          warmup_ratio=args.warmup_ratio, weight_decay=args.weight_decay)
    return dm, module


def run_one(model_path: str, task: str, seed: int, args, measure_latency: bool) -> dict:
    pl.seed_everything(seed, verbose=False)
    dm, module = build(model_path, task, args)
    trainer = pl.Trainer(max_epochs=args.max_epochs, accelerator=args.accelerator, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, default_root_dir=args.out_dir,
                         callbacks=[ProgressLog(every_n_steps=args.progress_every)], precision=default_precision())
    start = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    record = {"task": task, "seed": seed, "train_seconds": round(time.perf_counter() - start, 1),
              "metrics": {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")},
              "parameters": sum(p.numel() for p in module.model.parameters())}
    record["score"] = record["metrics"]["val/score"]
    if measure_latency:
        loader = dm.val_dataloader()
        batch = next(iter(loader[0] if isinstance(loader, list) else loader))  # MNLI: the matched set
        latency = measure_cpu_latency(module.model, batch=batch, repeats=args.latency_repeats,
                                      num_threads=args.latency_threads)
        record["latency"] = latency.as_dict()
    return record


def summarise(runs: list[dict], names: list[str], tasks: list[str]) -> list[dict]:
    """Per model: median score over seeds per task, their mean (macro), parameters and latency."""
    rows = []
    for name in names:
        mine = [r for r in runs if r["model"] == name]
        medians = {t: statistics.median([r["score"] for r in mine if r["task"] == t]) for t in tasks}
        latency = next(r["latency"] for r in mine if "latency" in r)
        rows.append({"model": name, "medians": medians, "macro": statistics.mean(medians.values()),
                     "n_seeds": len({r["seed"] for r in mine}), "parameters": mine[0]["parameters"],
                     "latency": latency})
    return rows


def markdown_table(rows: list[dict], tasks: list[str]) -> str:
    head = ["model", "params (M)", *tasks, "macro", "CPU ms/batch"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for row in rows:
        cells = [row["model"], f"{row['parameters'] / 1e6:.1f}", *(f"{row['medians'][t]:.1f}" for t in tasks),
                 f"{row['macro']:.1f}", f"{row['latency']['median_ms']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lat = rows[0]["latency"]
    lines.append("")
    lines.append(f"Scores: medians over {rows[0]['n_seeds']} seeds of the dev score after the last epoch (percent; "
                 f"the task's main metric). CPU latency: median wall time of one batch of {lat['batch_size']} "
                 f"(padded length {lat['seq_length']}) over {lat['timed_batches']} runs after {lat['warmup_batches']} "
                 f"warm-up runs, {lat['num_threads']} thread(s), torch.inference_mode.")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for row in rows:
        ax.scatter(row["latency"]["median_ms"], row["macro"], s=40)
        ax.annotate(row["model"], (row["latency"]["median_ms"], row["macro"]), textcoords="offset points",
                    xytext=(5, 5), fontsize=8)
    lat = rows[0]["latency"]
    ax.set_xlabel(f"CPU latency, ms per batch of {lat['batch_size']} ({lat['num_threads']} thread(s))")
    ax.set_ylabel("dev score, median over seeds (macro over tasks)")
    ax.grid(alpha=0.3)
    return save_figure(fig, path, dpi=120)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    names = args.names or [Path(m).name if not m.startswith("packaged:") else m.split(":", 1)[1] for m in args.models]
    out_dir = Path(args.out_dir)
    if args.summarise_only:
        runs = json.loads((out_dir / "runs.json").read_text())
        todo = []
    else:
        runs, todo = [], list(zip(names, args.models))
    total, started = len(todo) * len(args.tasks) * len(args.seeds), time.perf_counter()
    for name, model_path in todo:
        for t, task in enumerate(args.tasks):
            for s, seed in enumerate(args.seeds):
                done = len(runs)
                print(f"[run {done + 1}/{total}] {name} {task} seed {seed}: fine-tuning ({args.max_epochs} epoch(s)"
                      f"{', then CPU latency' if t == 0 and s == 0 else ''})", flush=True)
                record = run_one(model_path, task, seed, args, measure_latency=(t == 0 and s == 0))
                record["model"] = name
                runs.append(record)
                elapsed = time.perf_counter() - started
                eta = elapsed / len(runs) * (total - len(runs))
                print(f"[run {done + 1}/{total}] {name} {task} seed {seed}: score {record['score']:.2f} "
                      f"({record['train_seconds']} s) | elapsed {format_duration(elapsed)} | "
                      f"ETA {format_duration(eta)}", flush=True)
                write_json(out_dir / "runs.json", runs)  # partial results survive an interruption
    rows = summarise(runs, names, args.tasks)
    table = markdown_table(rows, args.tasks)
    atomic_write_text(out_dir / "results.md", table)
    png = plot(rows, Path(args.plot_path) if args.plot_path else out_dir / "score_vs_latency.png")
    if args.results_md:
        command = " ".join(["python", "scripts/evaluate_models.py", *(argv if argv is not None else sys.argv[1:])])
        text = (f"# Results\n\nProduced by:\n\n```bash\n{command}\n```\n\n{table}\n"
                f"![score against CPU latency]({os.path.relpath(png, Path(args.results_md).parent)})\n")
        atomic_write_text(args.results_md, text)
    print(table)
    return rows


if __name__ == "__main__":
    main()
