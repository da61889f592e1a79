"""Benchmark: whole GLUE fine-tuning runs (SST-2 train, the packaged MiniLM-L6, batch 32, max_seq_length 128),
litbert's shipped config against the Hugging Face Trainer in a run_glue.py-style script.

Methods (each a child process; `benchmarks/harness.py` alternates them, times a short and a long run of each and takes
per-step time from the difference, so start-up cancels):
- `hf_trainer_defaults`: `benchmarks/reference/hf_trainer_glue.py`, the run_glue.py recipe (`datasets.map`
  tokenization, `DataCollatorWithPadding`, `AutoModelForSequenceClassification`, `Trainer`) with the Trainer's
  defaults (fused AdamW, random batches padded to their longest example, fp32);
- `hf_trainer_best`: the same with the Trainer's own best settings for this, `train_sampling_strategy=
  "group_by_length"` (batches of similar lengths: less padding) and, where the device multiplies bf16 natively,
  `bf16=True`;
- `hf_trainer_best_malloc`: `hf_trainer_best` with glibc's malloc and oneDNN's kernel cache set as litbert sets them
  in its process (`harness.with_litbert_malloc`; not Trainer options);
- `litbert`: `python train.py fit --config configs/finetune/glue.yaml --trainer.max_steps N
  --trainer.default_root_dir root`, the shipped config as it is (its batching, callbacks, logger, and what it does
  once at the end: validation, checkpoint, export), in a fresh directory, with DATA_DIR set; Lightning must report
  that the run reached N optimiser steps. Its TorchCompile callback (callbacks/compile.py) is told `min_steps: 0`,
  so that the short and the long run compile as a whole fit past the config's min_steps does (a run truncated by
  --trainer.max_steps would stay eager);
- `litbert_eager`: the same without TorchCompile (what a fit shorter than min_steps runs).
Same hyper-parameters in all (read from the config: lr, weight decay, warmup ratio, Adam betas and epsilon, batch
size, max_seq_length); the Trainer keeps its default max_grad_norm 1.0 (the config does not clip). litbert computes
in train.py's default precision (bf16-mixed where the device multiplies bf16 natively: a GPU from Ampere on, a CPU
with AVX512-BF16 or AMX); `--fp32` puts every method in fp32. MFU is against the measured peak of each method's dtype.

Columns: tokens/s counts non-padding tokens (the mean length of SST-2 train under the MiniLM tokenizer); MFU's
numerator is the useful work, 3 x the whole model's forward FLOPs on each example at its own length
(`models.flops.mean_example_flops`), the same for every method: padding is waste, and litbert's last layer at the
first token only (less arithmetic for the same result) shows as speed. The runs stay inside the first epoch (no
validation in the timed steps), unless `--epochs E` asks for whole runs: then the short run is `--short_epochs` epochs
and the long one E epochs (glue.yaml's 3: what a user runs), their per-step time the difference as above, and a second
table gives each whole E-epoch run, start-up included; litbert's runs then validate and save a checkpoint at each
epoch end as the config says (the Trainer's reference evaluates and saves nothing: that time counts against litbert).
Later epochs are not the first one again: AdamW's moments of rarely used embedding rows decay to denormal floats
(benchmarks/denormals.py), which litbert flushes to zero (callbacks/cpu_denormals.py) and the Trainer computes on.

    DATA_DIR=/path/to/data python benchmarks/finetune_glue.py --short 5 --long 25 --repeats 1
    DATA_DIR=/path/to/data python benchmarks/finetune_glue.py --epochs 3 --methods hf_trainer_best litbert
(the Trainer needs `accelerate`: pip install 'accelerate>=1.1'.)
"""
from __future__ import annotations

import argparse
import importlib.util
import math
import statistics
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import (REPO, Method, add_run_options, child_env, compare, device_peak_flops,  # noqa: E402
                                lightning_precision, lightning_steps_done, machine_line, print_table,
                                print_whole_runs, reference_precision, reported_steps_done, run_dtype,
                                with_litbert_malloc)

HF_METHODS = ("hf_trainer_defaults", "hf_trainer_best", "hf_trainer_best_malloc")
METHODS = (*HF_METHODS, "litbert", "litbert_eager")
COMPILE = "callbacks.compile.TorchCompile"


def parse_args(argv: list[str] | None = None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_options(p, short=5, long=25, data_help="holds glue/SST-2/train.tsv")
    p.add_argument("--config", default=str(REPO / "configs/finetune/glue.yaml"))
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--epochs", type=int, default=None,
                   help="whole runs: the long run E epochs, the short one --short_epochs (instead of --short/--long)")
    p.add_argument("--short_epochs", type=int, default=1, help="the short run's epochs, with --epochs")
    return p.parse_args(argv)


def recipe(config_path: str) -> tuple[dict, dict]:
    """The shipped config's model and data arguments (the reference gets the same hyper-parameters)."""
    config = yaml.safe_load(Path(config_path).read_text())
    return config["model"]["init_args"], config["data"]["init_args"]


def config_compiled(config_path: str, out: Path, compiled: bool) -> Path:
    """A copy of the config at `out` whose TorchCompile callback compiles every fit (`min_steps: 0`; `compiled`) or
    is left out (the eager model)."""
    config = yaml.safe_load(Path(config_path).read_text())
    kept = []
    for callback in config.get("trainer", {}).get("callbacks") or []:
        if isinstance(callback, dict) and callback.get("class_path") == COMPILE:
            if not compiled:
                continue
            callback = {**callback, "init_args": {**(callback.get("init_args") or {}), "min_steps": 0}}
        kept.append(callback)
    if "callbacks" in config.get("trainer", {}):
        config["trainer"]["callbacks"] = kept
    out.write_text(yaml.safe_dump(config, sort_keys=False))
    return out


def litbert_train_data(data_args: dict, data_dir: Path, cache_dir: Path):
    """litbert's GLUEDataModule of the config, set up for fit (builds its cache of the tokenized split on the way)."""
    from datamodules.glue import GLUEDataModule

    dm = GLUEDataModule(tokenizer=data_args["tokenizer"], task_name=data_args["task_name"], data_dir=str(data_dir),
                        cache_dir=str(cache_dir), max_seq_length=int(data_args["max_seq_length"]),
                        batch_size=int(data_args["batch_size"]),
                        group_by_length=bool(data_args.get("group_by_length", True)))
    dm.prepare_data()
    dm.setup("fit")
    return dm


def distinct_lengths_by_step(batch_lengths: list[int], marks: tuple[int, ...]) -> dict[int, int]:
    """{step: how many distinct batch lengths the batches before it had}, for each mark within the epoch and for
    the epoch's end. On a CPU every new length brings product shapes the library meets for the first time (dearer:
    benchmarks/cpu_ops.py), so the early steps of a run cost more than the later ones."""
    counts, seen = {}, set()
    for step, length in enumerate(batch_lengths, start=1):
        seen.add(length)
        if step in marks or step == len(batch_lengths):
            counts[step] = len(seen)
    return counts


def useful_flops_per_sample(pretrained: str, num_labels: int, lengths: list[int]) -> float:
    """3 x the forward FLOPs of each example at its own length, averaged (`models.flops.mean_example_flops`)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from models.flops import mean_example_flops
    from models.pretrained import resolve_model_path

    config = AutoConfig.from_pretrained(resolve_model_path(pretrained), num_labels=num_labels)
    with torch.device("meta"):  # only the type and the config count: no weights loaded
        model = AutoModelForSequenceClassification.from_config(config)
    return mean_example_flops(model, lengths)


def main(argv: list[str] | None = None):
    args = parse_args(argv)
    from datamodules.base import row_lengths
    from datamodules.tasks import GLUE_TASKS, normalize_task_name
    from models.pretrained import resolve_model_path

    model_args, data_args = recipe(args.config)
    task = GLUE_TASKS[normalize_task_name(data_args["task_name"])]
    data_dir = Path(args.data_dir).expanduser().resolve()
    train_file = data_dir / "glue" / task.folder / task.train_file
    if not train_file.is_file():
        sys.exit(f"no {train_file}: set --data_dir or DATA_DIR to the folder that holds glue/")
    if any(m in HF_METHODS for m in args.methods) and importlib.util.find_spec("accelerate") is None:
        sys.exit("the Hugging Face Trainer needs accelerate: pip install 'accelerate>=1.1' (or leave the hf_trainer "
                 "methods out with --methods litbert)")
    batch_size, max_len = int(data_args["batch_size"]), int(data_args["max_seq_length"])
    beta1, beta2 = model_args.get("betas", [0.9, 0.999])

    with tempfile.TemporaryDirectory(prefix="bench-glue-") as cache:
        env = child_env(Path(cache), args.device)
        dm = litbert_train_data(data_args, data_dir, Path(env["LITBERT_CACHE"]))
        # non-padding length of every training example (the reference truncates the same way, same tokenizer)
        lengths = row_lengths(dm.train_dataset)
        # the padded length of litbert's batches in its first epoch, in order (the sampler is a function of the seed)
        batch_lengths = [batch["input_ids"].shape[1] for batch in dm.train_dataloader()]
        steps_per_epoch = math.ceil(len(lengths) / batch_size)
        if len(batch_lengths) != steps_per_epoch:  # both sides must mean the same by an epoch
            sys.exit(f"litbert's epoch has {len(batch_lengths)} batches, the Trainer's {steps_per_epoch}")
        if args.epochs is not None:
            if not 0 < args.short_epochs < args.epochs:
                sys.exit(f"--short_epochs {args.short_epochs} must be at least 1 and below --epochs {args.epochs}")
            args.short, args.long = args.short_epochs * steps_per_epoch, args.epochs * steps_per_epoch
        elif args.long >= steps_per_epoch:
            sys.exit(f"--long {args.long} reaches the end of the first epoch ({steps_per_epoch} steps), where "
                     f"litbert validates: keep the runs inside it (or ask for whole runs with --epochs)")
        flops_per_sample = useful_flops_per_sample(model_args["pretrained"], task.num_labels, lengths)
        dtype = run_dtype(args.device, args.fp32)  # litbert's and the Trainer's at its best
        peak = device_peak_flops(args.device, ["fp32", dtype])

        def hf_command(strategy: str, ref_dtype: str):
            return lambda steps: [
                sys.executable, str(REPO / "benchmarks/reference/hf_trainer_glue.py"),
                "--model", resolve_model_path(model_args["pretrained"]), "--train_file", str(train_file),
                "--text_columns", *map(str, task.text_columns), "--task_name", task.name,
                "--max_steps", str(steps), "--max_seq_length", str(max_len), "--batch_size", str(batch_size),
                "--learning_rate", str(model_args["lr"]), "--weight_decay", str(model_args["weight_decay"]),
                "--warmup_ratio", str(model_args["warmup_ratio"]), "--adam_beta1", str(beta1),
                "--adam_beta2", str(beta2), "--adam_epsilon", str(model_args["eps"]),
                "--train_sampling_strategy", strategy, "--device", args.device, *reference_precision(ref_dtype)]

        def litbert_command(compiled: bool):
            config = config_compiled(args.config, Path(cache) / f"glue-compiled-{compiled}.yaml", compiled)
            # Only what a run in a fresh directory needs (the config names the data under DATA_DIR).
            return lambda steps: [sys.executable, str(REPO / "train.py"), "fit", "--config", str(config),
                                  "--trainer.max_steps", str(steps), "--trainer.default_root_dir", "root",
                                  *lightning_precision(dtype)]

        best = Method("hf_trainer_best", hf_command("group_by_length", dtype), env, reported_steps_done, dtype)
        methods = [Method("hf_trainer_defaults", hf_command("random", "fp32"), env, reported_steps_done), best,
                   with_litbert_malloc(best),
                   *(Method(name, litbert_command(compiled), {**env, "DATA_DIR": str(data_dir)},
                            lightning_steps_done, dtype) for name, compiled in (("litbert", True),
                                                                                ("litbert_eager", False)))]
        methods = [m for m in methods if m.name in args.methods]
        print(machine_line(peak, args.device), flush=True)
        warmup = "no warm-up run" if args.epochs else "after one untimed warm-up run each"
        print(f"GLUE {task.name} train ({len(lengths)} examples), {model_args['pretrained']}, batch {batch_size}, "
              f"max_seq_length {max_len}, {args.device}; runs of {args.short} and {args.long} steps, {args.repeats} "
              f"repeat(s), {warmup}", flush=True)
        distinct = distinct_lengths_by_step(batch_lengths, (10, args.short, args.long, 300, 700))
        print("distinct batch lengths of litbert's first epoch, by step: "
              + ", ".join(f"{step}: {count}" for step, count in sorted(distinct.items())), flush=True)
        # Whole runs skip the warm-up run: litbert's tokenized cache is built above, and an untimed epoch each is long.
        measured = compare(methods, args.short, args.long, repeats=args.repeats, warmup=args.epochs is None)

    tokens_per_sample = statistics.fmean(lengths)
    print(f"\ntokens/sample {tokens_per_sample:.1f} (non-padding, mean over the train set); useful FLOPs/sample "
          f"{flops_per_sample / 1e9:.3f} GFLOP (3 x the whole model's forward at each example's own length)\n")
    baselines = [m.name for m in measured if m.name in HF_METHODS]
    print_table(measured, batch_size, tokens_per_sample, flops_per_sample, peak, baseline=baselines)
    if args.epochs is not None and baselines:
        per_epoch = [replace(m, step_s=m.step_s * steps_per_epoch) for m in measured]
        baseline = "hf_trainer_best" if "hf_trainer_best" in baselines else baselines[0]
        print_whole_runs(per_epoch, args.epochs, len(lengths), tokens_per_sample, flops_per_sample, peak, baseline)


if __name__ == "__main__":
    main()
