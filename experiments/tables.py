"""RESULTS.md's tables and plots, from the run records alone (nothing is re-run to rebuild them).

Each table is written between `<!-- results:NAME -->` and `<!-- /results:NAME -->` markers, so the reading of the
figures written around them by hand stays; a marker pair that is missing is appended. Scores are the dev score after
the last epoch (no selection on the dev set), in percent, median over the recorded seeds.
"""
from __future__ import annotations

import re
import statistics
from pathlib import Path

from datamodules.atomic import atomic_path, atomic_write_text
from experiments.plan import GLUE_TASKS


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def score(record: dict, key: str = "val/score") -> float | None:
    return record.get("metrics", {}).get(key)


def seeds_of(records: list[dict]) -> str:
    seeds = sorted({r["seed"] for r in records})
    return f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''} ({', '.join(map(str, seeds))})" if seeds else "no runs"


# ---- table 1: DistilBERT's headline ------------------------------------------------------------------------------------
MODELS_T1 = {"teacher": "MiniLM-L6 teacher (fine-tuned)", "student": "3-layer student, task distillation",
             "student_hard": "3-layer student, hard labels only"}


def distilbert(records: list[dict]) -> tuple[str, dict]:
    fits = [r for r in records if r["table"] == "distilbert" and r["kind"] == "fit"]
    tasks = [t for t in GLUE_TASKS if any(r["labels"]["task"] == t for r in fits)]
    latency = {r["labels"]["task"]: r["latency"] for r in records if r["table"] == "distilbert"
               and r["kind"] == "latency"}
    rows, summary = [], {}
    if not fits:
        return "", summary
    for model, name in MODELS_T1.items():
        mine = [r for r in fits if r["labels"]["model"] == model]
        if not mine:
            continue
        medians = {t: median([score(r) for r in mine if r["labels"]["task"] == t and score(r) is not None])
                   for t in tasks}
        done = [m for m in medians.values() if m is not None]
        macro = statistics.mean(done) if len(done) == len(tasks) else None
        who = "student" if model.startswith("student") else "teacher"
        seconds = [latency[t][who]["median_s"] for t in tasks if t in latency]
        cpu = sum(seconds) if len(seconds) == len(tasks) else None
        per_seed_macro = []
        for seed in sorted({r["seed"] for r in mine}):
            s = [score(r) for r in mine if r["seed"] == seed]
            if len(s) == len(tasks) and None not in s:
                per_seed_macro.append(statistics.mean(s))
        summary[model] = {"macro": macro, "cpu_s": cpu, "seed_macros": per_seed_macro, "medians": medians}
        rows.append([name, fmt(mine[0]["parameters"] / 1e6), *(fmt(medians[t]) for t in tasks), fmt(macro),
                     fmt(cpu, 2), seeds_of(mine)])
    text = table(["model", "params (M)", *tasks, "macro", "CPU s, all dev sets", "seeds"], rows)
    teacher, student = summary.get("teacher", {}), summary.get("student", {})
    if teacher.get("macro") and student.get("macro") and teacher.get("cpu_s") and student.get("cpu_s"):
        share = 100.0 * student["macro"] / teacher["macro"]
        speed = teacher["cpu_s"] / student["cpu_s"]
        verdict = "holds" if share >= 97.0 and speed >= 1.8 else "does not hold"
        text += (f"\n\nThe claim (at least 97% of the teacher's macro score at at least 1.8x the speed) {verdict} "
                 f"by the macro score: the distilled student keeps **{share:.1f}%** of the teacher's macro score and "
                 f"runs the dev sets **{speed:.2f}x** faster.")
        ratios = [f"{t} {100 * student['medians'][t] / teacher['medians'][t]:.0f}%" for t in tasks
                  if student["medians"].get(t) is not None and teacher["medians"].get(t)]
        text += f" Student / teacher per task: {', '.join(ratios)}."
    detail = []
    for model, name in MODELS_T1.items():
        for task in tasks:
            mine = sorted((r for r in fits if r["labels"] == {"model": model, "task": task}), key=lambda r: r["seed"])
            if mine:
                detail.append([name, task, " / ".join(fmt(score(r), 2) for r in mine),
                               " / ".join(str(r["seed"]) for r in mine)])
    text += "\n\nPer seed (dev score):\n\n" + table(["model", "task", "scores", "seeds"], detail)
    return text, summary


# ---- tables 2 and 3: pretraining ablations -----------------------------------------------------------------------------
def pretraining(records: list[dict], table_name: str) -> str:
    mine = [r for r in records if r["table"] == table_name]
    variants = sorted(dict.fromkeys(r["labels"]["variant"] for r in mine), key=lambda v: v != "teacher")
    rows = []
    for variant in variants:
        own = [r for r in mine if r["labels"]["variant"] == variant]
        trained = [r for r in own if "measure" not in r["labels"]]
        ppl = median([score(r, "val/perplexity") for r in own if r["labels"].get("measure") == "perplexity"
                      and score(r, "val/perplexity") is not None])
        sst2 = median([score(r) for r in own if r["labels"].get("measure") == "sst2" and score(r) is not None])
        params = fmt(trained[0]["parameters"] / 1e6) if trained else "n/a"
        steps = trained[0]["options"].get("trainer.max_steps") if trained else None
        rows.append([variant, params, str(steps or "n/a"), fmt(ppl), fmt(sst2), seeds_of(trained)])
    return table(["variant", "params (M)", "steps", "WikiText-2 val perplexity", "SST-2 dev after fine-tuning",
                  "seeds"], rows)


def scored_models(records: list[dict], table: str, variant: str, reused: list[dict]) -> list[dict]:
    """The trained (not measuring) records of `variant` in `table`, plus `reused` runs of another table."""
    return [r for r in records if r["table"] == table and r["labels"].get("variant") == variant
            and "measure" not in r["labels"]] + reused


def measurements(records: list[dict], models: list[dict], measure: str) -> list[dict]:
    """The records that measured each of `models` with `measure` (labels model + measure)."""
    ids = {m["id"] for m in models}
    return [r for r in records if r["labels"].get("model") in ids and r["labels"].get("measure") == measure]


def measured(records: list[dict], models: list[dict], measure: str, key: str = "val/score") -> float | None:
    """Median over `models` of `key` in the record that measured each with `measure`."""
    return median([score(r, key) for r in measurements(records, models, measure) if score(r, key) is not None])


def in_seed_order(runs: list[dict], key: str = "val/score") -> str:
    """`key` of each run, in seed order ("a / b / c", two decimals)."""
    return " / ".join(fmt(score(r, key), 2) for r in sorted(runs, key=lambda r: r["seed"]))


def variants_of(records: list[dict], table: str) -> list[str]:
    return list(dict.fromkeys(r["labels"]["variant"] for r in records if r["table"] == table))


def formats(records: list[dict]) -> str:
    """Table 6: per input format / corpus share, medians over seeds of each pretrained model's scores."""
    teacher = [r for r in records if r["table"] == "ablation" and r["labels"].get("variant") == "teacher"
               and "measure" not in r["labels"]]  # FULL-SENTENCES, seed 1: table 2's teacher
    rows = []
    for variant in variants_of(records, "formats"):
        models = scored_models(records, "formats", variant, teacher if variant == "FULL-SENTENCES" else [])
        sentence = median([score(r, "val/sentence_accuracy") for r in models
                           if score(r, "val/sentence_accuracy") is not None])
        steps = models[0]["options"].get("trainer.max_steps") if models else None
        rows.append([variant, str(steps or "n/a"), fmt(measured(records, models, "perplexity", "val/perplexity")),
                     fmt(None if sentence is None else 100 * sentence), fmt(measured(records, models, "sst2")),
                     fmt(measured(records, models, "mrpc")), seeds_of(models)])
    return table(["pretraining", "steps", "WikiText-2 val perplexity", "NSP/SOP val accuracy", "SST-2 dev", "MRPC dev",
                  "seeds"], rows)


def objectives(records: list[dict]) -> str:
    """Table 7: general-distillation objectives on the same student and budget."""
    distilbert = [r for r in records if r["id"] == "t2-a0-s1"]  # table 2's DistilBERT student, seed 1
    rows = []
    for variant in variants_of(records, "objectives"):
        models = scored_models(records, "objectives", variant, distilbert if variant.startswith("DistilBERT") else [])
        rows.append([variant, fmt(measured(records, models, "perplexity", "val/perplexity")),
                     fmt(measured(records, models, "task-sst2")), in_seed_order(measurements(records, models, "task-sst2")),
                     seeds_of(models)])
    return table(["general distillation objective", "WikiText-2 val perplexity", "SST-2 dev after task distillation",
                  "SST-2 per seed", "seeds"], rows)


def temperature(records: list[dict]) -> str:
    runs = [r for r in records if r["table"] == "temperature"]
    t2 = [r for r in records if r["table"] == "distilbert" and r["labels"].get("model") == "student"
          and r["labels"].get("task") == (runs[0]["labels"]["task"] if runs else "sst2")]
    groups: dict[str, list[dict]] = {"2 (table 1's student)": t2}
    for r in runs:
        groups.setdefault(r["labels"]["temperature"], []).append(r)
    order = sorted(groups, key=lambda k: (not k[0].isdigit(), float(k.split()[0]) if k[0].isdigit() else 0))
    rows = [[f"T = {k}", fmt(median([score(r) for r in groups[k] if score(r) is not None])),
             in_seed_order(groups[k]), seeds_of(groups[k])]
            for k in order if groups[k]]
    return table(["temperature", "SST-2 dev (median)", "per seed", "seeds"], rows)


def squad(records: list[dict]) -> str:
    runs = sorted((r for r in records if r["table"] == "squad"),
                  key=lambda r: (r["labels"]["model"] != "teacher", r["labels"]["model"], r["seed"]))
    teacher_f1 = {r["seed"]: score(r, "val/f1") for r in runs if r["labels"]["model"] == "teacher"}
    rows = []
    for r in runs:
        em, f1 = score(r, "val/exact_match"), score(r, "val/f1")
        kept = f1 / teacher_f1[r["seed"]] * 100 if f1 is not None and teacher_f1.get(r["seed"]) else None
        (a, b), (c, d) = r["options"]["data.init_args.train_articles"], r["options"]["data.init_args.eval_articles"]
        rows.append([r["labels"]["model"], fmt(r["parameters"] / 1e6), fmt(em), fmt(f1), fmt(kept),
                     f"{a}-{b - 1} / {c}-{d - 1}", str(r["seed"])])
    return table(["model", "params (M)", "EM", "F1", "F1 (% of teacher)", "dev-v1.1 articles: train / eval",
                  "seed"], rows)


# ---- plots -------------------------------------------------------------------------------------------------------------
def plots(records: list[dict], summary: dict, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    points = {MODELS_T1[m]: s for m, s in summary.items() if s.get("cpu_s") and s.get("seed_macros")}
    if points:
        fig, ax = plt.subplots(figsize=(6, 4))
        for i, (name, s) in enumerate(points.items()):  # labels stacked: the students share their CPU time
            mid = statistics.median(s["seed_macros"])
            lo, hi = mid - min(s["seed_macros"]), max(s["seed_macros"]) - mid
            ax.errorbar(s["cpu_s"], mid, yerr=[[lo], [hi]], fmt="o", capsize=4)
            ax.annotate(name, (s["cpu_s"], mid), textcoords="offset points", xytext=(6, 4 - 11 * i), fontsize=8)
        ax.set_xlabel("CPU seconds over the five dev sets (1 thread)")
        ax.set_ylabel("GLUE macro score (median; bars: seed range)")
        ax.grid(alpha=0.3)
        written.append(save_figure(fig, out_dir / "score_vs_latency.png"))
    curves = [r for r in records if r["table"] == "roberta" and "measure" not in r["labels"] and r.get("history")]
    if curves:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for r in curves:
            for ax, key in zip(axes, ("train/loss", "val/loss")):
                points = r["history"].get(key, [])
                if points:
                    ax.plot([p[0] for p in points], [p[1] for p in points], label=r["labels"]["variant"])
        for ax, key in zip(axes, ("training loss", "validation loss (fixed masks)")):
            ax.set_xlabel("optimiser step")
            ax.set_ylabel(key)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        written.append(save_figure(fig, out_dir / "roberta_curves.png"))
    return written


def save_figure(fig, path: Path, dpi: int = 110) -> Path:
    """Write a matplotlib figure as PNG atomically (never a half-written image), then close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, format="png")
    finally:
        plt.close(fig)
    return path


# ---- RESULTS.md ----------------------------------------------------------------------------------------------------------
EMPTY = "No runs recorded yet."


def sections(records: list[dict]) -> dict[str, str]:
    """Marker name -> generated markdown ("No runs recorded yet." for a table without records)."""
    t1, summary = distilbert(records)
    tables = {name: [r for r in records if r["table"] == name]
              for name in ("distilbert", "ablation", "roberta", "temperature", "squad", "formats", "objectives")}
    generated = {"distilbert": t1, "ablation": pretraining(records, "ablation"),
                 "roberta": pretraining(records, "roberta"), "temperature": temperature(records),
                 "squad": squad(records), "formats": formats(records), "objectives": objectives(records)}
    return {**{name: text if tables[name] else EMPTY for name, text in generated.items()}, "_summary": summary}


def write_results(records: list[dict], results_md: Path, plot_dir: Path) -> Path:
    """Fill the marked sections of `results_md` (created with just the markers when missing) and draw the plots."""
    generated = sections(records)
    summary = generated.pop("_summary")
    plots(records, summary, plot_dir)
    text = results_md.read_text() if results_md.exists() else "# Results\n"
    for name, body in generated.items():
        begin, end = f"<!-- results:{name} -->", f"<!-- /results:{name} -->"
        block = f"{begin}\n{body}\n{end}"
        pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
        text = pattern.sub(lambda _: block, text) if pattern.search(text) else f"{text.rstrip()}\n\n{block}\n"
    atomic_write_text(results_md, text)
    return results_md
