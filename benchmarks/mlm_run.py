"""Benchmark: whole MLM pretraining runs (configs/mlm/roberta_small.yaml: a 4-layer, hidden-256 RoBERTa, 16k BPE,
WikiText-2 train + SQuAD v1.1 dev contexts, blocks of 32 x 128 tokens), litbert's shipped config against the
Hugging Face Trainer in a run_mlm.py-style script.

Methods (each a child process; `benchmarks/harness.py` alternates them, times a short and a long run of each and takes
per-step time from the difference, so start-up cancels):
- `hf_trainer_defaults`: `benchmarks/reference/hf_trainer_mlm.py`, the run_mlm.py recipe (`datasets` text loading,
  tokenize, `group_texts` into 128-token blocks, `DataCollatorForLanguageModeling(mlm_probability=0.15)` on the CPU,
  `RobertaForMaskedLM` of the same size built from a config, `Trainer` with the config's lr, warmup, betas, epsilon and
  weight decay; its defaults otherwise: fused AdamW, max_grad_norm 1.0 where the config does not clip, fp32), reading
  the same files as the config;
- `hf_trainer_bf16`: the same with the Trainer's `bf16=True`, its best setting where the device multiplies bf16
  natively (only there);
- `hf_trainer_bf16_malloc` (`hf_trainer_defaults_malloc` without native bf16): the Trainer at its best with glibc's
  malloc set as litbert sets it in its process (`harness.with_litbert_malloc`; not a Trainer option);
- `litbert`: `python train.py fit --config configs/mlm/roberta_small.yaml --config <override> --trainer.max_steps N
  --trainer.default_root_dir root --data.init_args.tokenizer <absolute path>` in a fresh directory with DATA_DIR set;
  the override (`harness.periodic_work_past`) moves the config's validation (every 250 steps) and step checkpoints
  (every 100) past the long run, since the reference neither evaluates nor saves during training; the output says what
  it moved. What runs once, at the start (sanity-check validation) or at the end (litbert's final validation,
  checkpoint, export), stays: start-up and teardown cancel.
litbert computes in train.py's default precision (bf16-mixed where the device multiplies bf16 natively: a GPU from
Ampere on, a CPU with AVX512-BF16 or AMX); `--fp32` puts every method in fp32. MFU is against the measured peak of each
method's dtype.

FLOPs/sample, the same numerator for both methods: the *useful* model FLOPs, 3 x (the encoder on the 128 positions +
the MLM head on the 15% of them that are predicted), `models.flops`. The reference's dense loss also runs the head
(dense H x H and the vocabulary projection) at the other 85%; that work is counted as waste, not as model FLOPs (the
output prints the dense figure too). Blocks have no padding in either method: tokens/sample is 128.

    DATA_DIR=/path/to/data python benchmarks/mlm_run.py --short 3 --long 10 --repeats 1
(the Trainer needs `accelerate`: pip install 'accelerate>=1.1'; the tokenizer: see docs/mlm.md.)
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import (REPO, Method, add_run_options, child_env, compare, device_peak_flops,  # noqa: E402
                                lightning_precision, lightning_steps_done, machine_line, periodic_work_past,
                                print_table, reference_precision, reported_steps_done, run_dtype,
                                with_litbert_malloc)

METHODS = ("hf_trainer_defaults", "hf_trainer_bf16", "hf_trainer_bf16_malloc", "hf_trainer_defaults_malloc",
           "litbert")


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_options(p, short=3, long=10, data_help="holds the config's train_files")
    p.add_argument("--config", default=str(REPO / "configs/mlm/roberta_small.yaml"))
    p.add_argument("--tokenizer", default=None, help="the config's tokenizer, relative to the repository, if not given")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    return p.parse_args()


def flops_per_sample(model_args: dict, tokenizer, batch_size: int, seq_len: int, mlm_probability: float,
                     dense: bool = False) -> float:
    """3 x forward FLOPs per block: encoder + MLM head at the predicted positions (all positions if `dense`)."""
    from transformers import RobertaForMaskedLM

    from models.flops import TRAINING_FACTOR, forward_flops
    from models.mlm import model_config

    sizes = {k: model_args[k] for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                        "intermediate_size", "max_seq_length")}
    config = model_config(model_args.get("arch", "roberta"), vocab_size=len(tokenizer),
                          pad_token_id=tokenizer.pad_token_id, **sizes)
    with torch.device("meta"):  # only the type and the config count
        model = RobertaForMaskedLM(config)
    positions = None if dense else round(mlm_probability * batch_size * seq_len)
    return TRAINING_FACTOR * forward_flops(model, batch_size, seq_len, positions) / batch_size


def main():
    args = parse_args()
    from models.pretrained import load_tokenizer

    config = yaml.safe_load(Path(args.config).read_text())
    model_args, data_args = config["model"]["init_args"], config["data"]["init_args"]
    tokenizer_dir = Path(args.tokenizer or REPO / data_args["tokenizer"]).resolve()
    if not tokenizer_dir.is_dir():
        sys.exit(f"no tokenizer {tokenizer_dir}: make it first (docs/mlm.md), e.g. python scripts/train_tokenizer.py "
                 f"--files wikitext-2/train.txt --vocab_size 16000 --out artifacts/tokenizers/wikitext2-bpe")
    data_dir = Path(args.data_dir).expanduser().resolve()
    train_files = [data_dir / f for f in data_args["train_files"]]
    missing = [str(f) for f in train_files if not f.is_file()]
    if missing:
        sys.exit(f"missing {missing}: set --data_dir or DATA_DIR to the folder that holds them")
    if any(m.startswith("hf_") for m in args.methods) and importlib.util.find_spec("accelerate") is None:
        sys.exit("the Hugging Face Trainer needs accelerate: pip install 'accelerate>=1.1' (or leave it out with "
                 "--methods litbert)")
    tokenizer = load_tokenizer(str(tokenizer_dir))
    batch_size, seq_len = int(data_args["batch_size"]), int(data_args["max_seq_length"])
    mlm_probability = float(data_args.get("mlm_probability", 0.15))
    useful = flops_per_sample(model_args, tokenizer, batch_size, seq_len, mlm_probability)
    dense = flops_per_sample(model_args, tokenizer, batch_size, seq_len, mlm_probability, dense=True)
    dtype = run_dtype(args.device, args.fp32)  # litbert's
    peak = device_peak_flops(args.device, ["fp32", dtype])

    with tempfile.TemporaryDirectory(prefix="bench-mlm-") as cache:
        env = child_env(Path(cache), args.device)
        override, moved = periodic_work_past(args.config, args.long)
        override_file = Path(cache) / "litbert-override.yaml"
        override_file.write_text(yaml.safe_dump(override or {"trainer": {}}))

        def hf_command(steps: int, ref_dtype: str = "fp32") -> list[str]:
            beta1, beta2 = model_args.get("betas", [0.9, 0.999])
            return [sys.executable, str(REPO / "benchmarks/reference/hf_trainer_mlm.py"),
                    "--tokenizer", str(tokenizer_dir), "--train_files", *map(str, train_files),
                    "--max_steps", str(steps), "--max_seq_length", str(seq_len), "--batch_size", str(batch_size),
                    *(arg for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
                      for arg in (f"--{k}", str(model_args[k]))),
                    "--learning_rate", str(model_args["lr"]), "--warmup_steps", str(model_args["warmup_steps"]),
                    "--weight_decay", str(model_args["weight_decay"]), "--adam_beta1", str(beta1),
                    "--adam_beta2", str(beta2), "--adam_epsilon", str(model_args["eps"]),
                    "--mlm_probability", str(mlm_probability), "--device", args.device, *reference_precision(ref_dtype)]

        def litbert_command(steps: int) -> list[str]:
            # A fresh directory: the tokenizer by absolute path; the config's relative outputs land in the directory.
            return [sys.executable, str(REPO / "train.py"), "fit", "--config", str(Path(args.config).resolve()),
                    "--config", str(override_file), "--trainer.max_steps", str(steps),
                    "--trainer.default_root_dir", "root", "--data.init_args.tokenizer", str(tokenizer_dir),
                    *lightning_precision(dtype)]

        methods = [Method("hf_trainer_defaults", hf_command, env, reported_steps_done)]
        if dtype == "bf16":
            methods.append(Method("hf_trainer_bf16", lambda steps: hf_command(steps, "bf16"), env,
                                  reported_steps_done, "bf16"))
        methods += [with_litbert_malloc(methods[-1]),  # the Trainer at its best, with litbert's malloc setting
                    Method("litbert", litbert_command, {**env, "DATA_DIR": str(data_dir)}, lightning_steps_done, dtype)]
        methods = [m for m in methods if m.name in args.methods]
        print(machine_line(peak, args.device), flush=True)
        print(f"MLM {Path(args.config).name}: {' + '.join(data_args['train_files'])}, vocabulary {len(tokenizer)}, "
              f"batch {batch_size} x {seq_len}, {args.device}; runs of {args.short} and {args.long} steps, "
              f"{args.repeats} repeat(s), after one untimed warm-up run each", flush=True)
        print(f"litbert: moved past step {args.long} (the reference does neither): "
              f"{', '.join(moved) or 'nothing (none falls inside the runs)'}", flush=True)
        measured = compare(methods, args.short, args.long, repeats=args.repeats)

    print(f"\ntokens/sample {seq_len} (full blocks, no padding); useful FLOPs/sample {useful / 1e9:.3f} GFLOP (3 x: "
          f"encoder + MLM head at the {mlm_probability:.0%} predicted positions); the dense head at every position "
          f"would be {dense / 1e9:.3f} GFLOP\n")
    print_table(measured, batch_size, seq_len, useful, peak,
                baseline=[m.name for m in measured if m.name.startswith("hf_")])


if __name__ == "__main__":
    main()
