"""Benchmark: general distillation (configs/distill/roberta_general.yaml) through litbert's `train.py fit` against a
plain PyTorch loop doing what the public DistilBERT distiller does (benchmarks/reference/distill_general_loop.py).

    DATA_DIR=/work/shared/data python benchmarks/distill_general.py --short 3 --long 13

The work: a roberta_small masked LM (configs/mlm/roberta_small.yaml's size: 4 layers, hidden 256, 4 heads, FFN 1024,
the 16k BPE `artifacts/tokenizers/wikitext2-bpe`) distilled into its 2-layer student (teacher layers [0, 2]) on
WikiText-2 train, batch 32 x 128 packed tokens, KL at T = 2 over every non-pad position, alpha_ce 5, alpha_mlm 2,
alpha_cos 1, gradient clipping 5.0, AdamW with linear warmup. The teacher is randomly initialised and saved with its
tokenizer into a temporary directory: the time of a step does not depend on the weights' values.

Both methods read the same packed blocks: litbert's TextCorpusDataModule builds them once (in a temporary cache that
litbert's runs then hit), and they are saved as a .npy for the reference. litbert runs the shipped config with only
the teacher, tokenizer, data folder and step count overridden, each run in a fresh folder of its own (the harness);
its validation every 250 steps and checkpoints every 100 are moved past `--long` (`harness.periodic_work_past`, the
output says what was moved), since the reference does neither (the sanity-check validation before the first step and
what runs once at the end are start-up and teardown: they cancel in `benchmarks.harness.compare`'s short/long
difference).

FLOPs per sample (the same for both methods, `models.flops`): the teacher's forward once and the student's forward
three times (forward + backward), each with the LM head at every non-pad position, which is what the KL over all
positions needs. Precision: litbert's default (bf16-mixed where the device multiplies bf16 natively, fp32 otherwise or
with `--fp32`); the loop in the same dtype (`--bf16` autocast) and, where that is bf16, in fp32 as well, since its
full-vocabulary logits and losses can make bf16 autocast the slower of the two (the loop at its best is the faster
one), and in litbert's dtype with glibc's malloc set as litbert sets it (`harness.with_litbert_malloc`). MFU divides by
the measured matmul peak of each method's dtype.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import (REPO, Method, add_run_options, compare, device_peak_flops,  # noqa: E402
                                lightning_precision, lightning_steps_done, machine_line, periodic_work_past,
                                print_table, reference_precision, run_dtype, with_litbert_malloc)

CONFIG = "configs/distill/roberta_general.yaml"
TRAIN_FILE = "wikitext-2/train.txt"
SEQ_LEN, BATCH = 128, 32
REFERENCE = "reference (DistilBERT loop)"
# configs/mlm/roberta_small.yaml
TEACHER_SIZE = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokenizer", default="artifacts/tokenizers/wikitext2-bpe")
    add_run_options(p, short=3, long=13, data_help="holds wikitext-2/train.txt")
    p.add_argument("--plain_loss", action="store_true",
                   help="also time litbert with --model.init_args.fused_lm_loss false (the unfused KL/MLM terms)")
    return p.parse_args()


def make_teacher(tokenizer_dir: str, out: Path):
    """A random-init roberta_small masked LM saved with its tokenizer into `out`; returns (teacher, student)."""
    from models.mlm import build_masked_lm
    from models.pretrained import load_tokenizer
    from models.student import extract_student

    tok = load_tokenizer(tokenizer_dir)
    teacher = build_masked_lm(arch="roberta", vocab_size=len(tok), pad_token_id=tok.pad_token_id,
                              max_seq_length=SEQ_LEN, **TEACHER_SIZE)
    teacher.save_pretrained(out)
    tok.save_pretrained(out)
    return teacher, extract_student(teacher, [0, 2])


def save_blocks(teacher_dir: Path, data_dir: str, out: Path) -> int:
    """litbert's packed training blocks (the config's data settings) as an [N, 128] int32 .npy; returns N."""
    from datamodules.text import TextCorpusDataModule

    dm = TextCorpusDataModule(tokenizer=str(teacher_dir), train_files=[TRAIN_FILE], data_dir=data_dir,
                              packing="full_sentences", max_seq_length=SEQ_LEN, batch_size=BATCH)
    blocks = dm.load_split("train").with_format("numpy")["input_ids"]
    blocks = np.asarray(np.stack(blocks), dtype=np.int32)
    np.save(out, blocks)
    return len(blocks)


def main():
    args = parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    dtype = run_dtype(args.device, args.fp32)  # litbert's and the reference loop's
    peak = device_peak_flops(args.device, [dtype, "fp32"])
    print(machine_line(peak, args.device))
    from models.flops import forward_flops

    with tempfile.TemporaryDirectory(prefix="distill-bench-") as tmp:
        tmp = Path(tmp)
        teacher_dir, blocks_file, cache = tmp / "teacher", tmp / "blocks.npy", tmp / "cache"
        os.environ["LITBERT_CACHE"] = str(cache)  # the blocks' cache, shared with litbert's runs
        teacher, student = make_teacher(args.tokenizer, teacher_dir)
        # teacher 1x forward, student 3x (forward + backward), LM heads at all SEQ_LEN positions of a sample
        flops_per_sample = forward_flops(teacher, 1, SEQ_LEN) + 3 * forward_flops(student, 1, SEQ_LEN)
        n_blocks = save_blocks(teacher_dir, str(Path(args.data_dir).resolve()), blocks_file)
        print(f"teacher: random-init RoBERTa {TEACHER_SIZE} (vocab {teacher.config.vocab_size}); student layers "
              f"[0, 2]; {n_blocks} blocks of {SEQ_LEN} tokens; batch {BATCH}; device {device}; "
              f"{flops_per_sample / 1e9:.2f} GFLOP per sample")
        data_dir = str(Path(args.data_dir).resolve())
        env = {"LITBERT_CACHE": str(cache), "DATA_DIR": data_dir}
        override, moved = periodic_work_past(REPO / CONFIG, args.long)
        override_file = tmp / "litbert-override.yaml"
        override_file.write_text(yaml.safe_dump(override or {"trainer": {}}))
        print(f"litbert: moved past step {args.long}: {', '.join(moved) or 'nothing (none falls inside the runs)'}")

        def litbert(extra: list[str], name: str):
            def command(steps: int) -> list[str]:
                # The harness runs it in a fresh folder: the config's relative output paths land there.
                return [sys.executable, str(REPO / "train.py"), "fit", "--config", str(REPO / CONFIG),
                        "--config", str(override_file), f"--model.init_args.teacher={teacher_dir}",
                        f"--data.init_args.tokenizer={teacher_dir}", f"--data.init_args.data_dir={data_dir}",
                        f"--trainer.max_steps={steps}", f"--trainer.accelerator={'gpu' if cuda else 'cpu'}",
                        "--trainer.enable_progress_bar=false",
                        "--model.init_args.student_layers=[0,2]", *lightning_precision(dtype), *extra]
            return Method(name, command, env, lightning_steps_done, dtype)  # student_layers: the reference's

        def reference(loop_dtype: str):
            return lambda steps: [
                sys.executable, str(REPO / "benchmarks" / "reference" / "distill_general_loop.py"),
                "--teacher", str(teacher_dir), "--blocks", str(blocks_file), "--steps", str(steps),
                "--batch_size", str(BATCH), "--device", args.device, *reference_precision(loop_dtype)]

        # the loop at its best: in bf16 where the device has it, and in fp32 too (its [B, L, V] logits and losses
        # can make bf16 autocast slower there, as on the 2-core CPU)
        methods = [Method(REFERENCE, reference(dtype), env, dtype=dtype)]
        if dtype == "bf16":
            methods.append(Method(f"{REFERENCE}, fp32", reference("fp32"), env))
        methods.append(with_litbert_malloc(methods[0]))  # litbert's malloc setting in the loop's process too
        methods.append(litbert([], "litbert"))
        if args.plain_loss:
            methods.append(litbert(["--model.init_args.fused_lm_loss=false"], "litbert fused_lm_loss=false"))
        measured = compare(methods, args.short, args.long, args.repeats)
    print_table(measured, samples_per_step=BATCH, tokens_per_sample=SEQ_LEN, flops_per_sample=flops_per_sample,
                peak_flops=peak, baseline=[m.name for m in measured if m.name.startswith(REFERENCE)])


if __name__ == "__main__":
    main()
