"""Build RESULTS.md: run every experiment of its tables that has no record yet, then write the tables and plots.

    python scripts/results.py                  # the full set (about 4 hours on the 2-core CPU), resumable
    python scripts/results.py --tables_only    # rebuild RESULTS.md and docs/results/*.png from the records
    python scripts/results.py --quick --out_dir /tmp/q   # one seed of every run on tiny subsets (the CI check)

Every run (experiments/plan.py) writes `<records>/<id>.json` (config, seed, options, metrics, validation history,
seconds, machine, commit) and `<records>/<id>.yaml` (the exact `train.py` config it ran); both are committed for the
full set (`results/runs/`), so the tables regenerate without re-running and a re-run skips what is recorded. Delete a
record to run it again. Large outputs (exports, CSV logs) go to `artifacts/results/<id>/`; a recorded run whose
output is gone is re-run only when a later run needs its model.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from experiments.plan import FULL, QUICK, plan  # noqa: E402
from experiments.runner import Runner  # noqa: E402
from experiments.tables import write_results  # noqa: E402

TABLES = ("distilbert", "temperature", "ablation", "roberta", "formats", "objectives", "squad")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny subsets, one seed, a few steps (the CI check)")
    p.add_argument("--out_dir", default=None,
                   help="where records, artifacts, RESULTS.md and plots go (default: the repository: results/runs, "
                        "artifacts/results, RESULTS.md, docs/results; required with --quick)")
    p.add_argument("--tables", nargs="+", choices=TABLES, default=None, help="run only these tables' runs (and "
                   "what they need)")
    p.add_argument("--max_runs", type=int, default=None, help="stop after this many runs (the rest stay to do)")
    p.add_argument("--tables_only", action="store_true", help="no runs: rebuild the tables and plots")
    p.add_argument("--list", action="store_true", help="print the plan (id, table, recorded or not) and stop")
    p.add_argument("--data_dir", default=None, help="default: $DATA_DIR, else ./data")
    args = p.parse_args(argv)
    if args.quick and args.out_dir is None:
        p.error("--quick needs --out_dir (its tiny runs must not mix with the committed records)")
    return args


def main(argv=None) -> Path:
    args = parse_args(argv)
    out = Path(args.out_dir).resolve() if args.out_dir else None
    if out is None:  # the committed set: paths relative to the repository, as the records and YAMLs name them
        os.chdir(ROOT)
    records_dir = out / "runs" if out else Path("results/runs")
    artifacts_dir = out / "artifacts" if out else Path("artifacts/results")
    results_md = out / "RESULTS.md" if out else Path("RESULTS.md")
    plot_dir = out / "plots" if out else Path("docs/results")
    runner = Runner(plan(QUICK if args.quick else FULL), records_dir, artifacts_dir, data_dir=args.data_dir)
    if args.list:
        stale = set(runner.stale())
        for run in runner.runs.values():
            state = "stale" if run.id in stale else "recorded" if runner.record(run.id) else "to run"
            print(f"{state:<8}  {run.table:<12} {run.id}")
        return results_md
    if not args.tables_only:
        runner.run_all(only=set(args.tables) if args.tables else None, limit=args.max_runs)
    records = [json.loads(p.read_text()) for p in sorted(records_dir.glob("*.json"))]
    write_results(records, results_md, plot_dir)
    print(f"[results] {len(records)} records -> {results_md}, plots in {plot_dir}", flush=True)
    return results_md


if __name__ == "__main__":
    main()
