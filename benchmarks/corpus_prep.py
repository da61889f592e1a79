"""Corpus preparation at scale: peak memory and tokens/s of building the MLM block cache (datamodules/corpus.py).

    DATA_DIR=../shared/data python benchmarks/corpus_prep.py --tokenizer artifacts/tokenizers/wikitext2-bpe \
        --repeat 1 93 --num_proc 2

For each `--repeat` k it writes WikiText-2 train repeated k times to a temporary file (k = 93 is about 1 GB), then
builds the training blocks of `TextCorpusDataModule` (configs/mlm/roberta_small.yaml's settings) into a fresh cache
in a child process, and reports:
- peak memory of the whole process tree (the preparing process and its `num_proc` map workers: PSS summed, sampled
  every 50 ms from /proc/<pid>/smaps_rollup), and its anonymous part (the memory the processes really hold; the
  rest is file pages of the memory-mapped Arrow files, which the kernel can drop at any time);
- tokens/s per process: corpus tokens / wall time / num_proc;
- the time to the first batch with the cache present.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def tree_memory(root_pid: int) -> tuple[int, int]:
    """(PSS, anonymous PSS) in bytes summed over `root_pid` and all its descendants.

    PSS (proportional set size) splits each shared page among the processes that map it, so the forked `map`
    workers' copy-on-write pages are counted once, as the machine's memory sees them (RSS would count them per
    process)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    total = anon = 0
    stack = [root_pid]
    while stack:
        pid = stack.pop()
        stack.extend(children.get(pid, []))
        try:
            with open(f"/proc/{pid}/smaps_rollup") as handle:
                fields = dict(line.split(":", 1) for line in handle if ":" in line)
        except OSError:
            continue
        total += int(fields.get("Pss", "0 kB").split()[0]) * 1024
        anon += int(fields.get("Pss_Anon", "0 kB").split()[0]) * 1024
    return total, anon


def prepare(args) -> dict:
    """Child process: build the train blocks in a fresh cache; print a JSON line with counts and times."""
    from datamodules.text import TextCorpusDataModule

    start = time.perf_counter()
    dm = TextCorpusDataModule(tokenizer=args.tokenizer, train_files=[args.corpus], val_files=[], test_files=[],
                              data_dir="/", cache_dir=args.cache, max_seq_length=128, num_proc=args.num_proc)
    blocks = dm.load_split("train")
    built = time.perf_counter() - start
    start = time.perf_counter()
    dm.datasets["train"] = dm.load_split("train")  # the cache hit a later run gets
    next(iter(dm.make_dataloader(dm.datasets["train"], train=True, columns=["input_ids", "example_index"])))
    reload = time.perf_counter() - start
    import pyarrow.compute as pc

    tokens = sum(pc.sum(pc.list_value_length(t.column(0))).as_py() - 2 * len(t)  # without <s> and </s>
                 for t in blocks.with_format("arrow").select_columns(["input_ids"]).iter(1 << 14))
    print(json.dumps({"blocks": len(blocks), "tokens": tokens, "build_s": built, "reload_s": reload}))


def measure(corpus: Path, args) -> dict:
    with tempfile.TemporaryDirectory() as cache:
        cmd = [sys.executable, __file__, "--child", "--corpus", str(corpus), "--cache", cache,
               "--tokenizer", args.tokenizer, "--num_proc", str(args.num_proc)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        peak = [0, 0]

        def sample():
            while proc.poll() is None:
                total, anon = tree_memory(proc.pid)
                peak[0], peak[1] = max(peak[0], total), max(peak[1], anon)
                time.sleep(0.05)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        out, _ = proc.communicate()
        thread.join()
        if proc.returncode:
            raise SystemExit(f"preparation of {corpus} failed (exit {proc.returncode})")
        result = json.loads(out.strip().splitlines()[-1])
    result.update(peak_pss_gb=peak[0] / 1e9, peak_anon_gb=peak[1] / 1e9, corpus_mb=corpus.stat().st_size / 1e6,
                  tokens_per_s_per_process=result["tokens"] / result["build_s"] / args.num_proc)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokenizer", default="artifacts/tokenizers/wikitext2-bpe")
    parser.add_argument("--repeat", type=int, nargs="+", default=[1, 93], help="WikiText-2 train copies per corpus")
    parser.add_argument("--num_proc", type=int, default=2)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return prepare(args)
    source = Path(os.environ.get("DATA_DIR", "data")) / "wikitext-2" / "train.txt"
    text = source.read_bytes()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in args.repeat:
            corpus = Path(tmp) / f"wikitext2-x{k}.txt"
            with open(corpus, "wb") as handle:
                for _ in range(k):
                    handle.write(text)
            row = measure(corpus, args)
            corpus.unlink()
            rows.append(row)
            print(f"{row['corpus_mb']:9.1f} MB  {row['tokens'] / 1e6:8.1f}M tokens  {row['blocks']:9d} blocks  "
                  f"build {row['build_s']:7.1f} s  {row['tokens_per_s_per_process'] / 1e3:7.1f}k tokens/s/process  "
                  f"peak PSS {row['peak_pss_gb']:.2f} GB (anonymous {row['peak_anon_gb']:.2f} GB)  "
                  f"reload + first batch {row['reload_s']:.2f} s", flush=True)
    if len(rows) > 1:
        print(f"peak PSS ratio largest/smallest: {rows[-1]['peak_pss_gb'] / rows[0]['peak_pss_gb']:.2f} "
              f"(anonymous {rows[-1]['peak_anon_gb'] / rows[0]['peak_anon_gb']:.2f})")


if __name__ == "__main__":
    main()
