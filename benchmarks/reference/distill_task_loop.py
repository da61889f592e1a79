"""Reference for benchmarks/distill_task.py: DistilBERT-style task distillation on SST-2 as a plain PyTorch loop.

What the DistilBERT recipe (and the Hugging Face examples) do per step: examples in random order, padded per batch
(`DataCollatorWithPadding`), the frozen teacher's forward under `torch.no_grad()`, the student's forward and backward
on KL(teacher_T || student_T) * T^2 + cross-entropy on the gold labels, gradient clipping at 5.0, AdamW (the fused
kernel, torch's fastest; no decay on biases and LayerNorm weights) with a linear warmup (5%) and decay. bf16 autocast
with `--bf16`. No validation, no checkpoints, no logging: only the training work.

The student is litbert's extraction of teacher layers [0, 2, 4] (`models.student.extract_student`, the layers
benchmarks/distill_task.py gives configs/distill/glue.yaml), so that both methods train the same model; everything
else here is plain PyTorch.

    python benchmarks/reference/distill_task_loop.py --teacher DIR --data_dir $DATA_DIR --epochs 3
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding,
                          get_linear_schedule_with_warmup)

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from models.student import extract_student  # noqa: E402


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", required=True, help="a *ForSequenceClassification directory with its tokenizer")
    p.add_argument("--data_dir", required=True, help="holds glue/SST-2/train.tsv")
    p.add_argument("--max_train_samples", type=int, default=4000, help="the first N training rows")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--max_seq_length", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--temperature", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--bf16", action="store_true", help="forward passes under bf16 autocast (as litbert's bf16-mixed)")
    return p.parse_args()


def read_sst2(path: Path, limit: int) -> tuple[list[str], list[int]]:
    """Sentences and labels of the first `limit` rows of an SST-2 TSV (header `sentence<TAB>label`)."""
    with open(path, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))[:limit]
    return [r["sentence"] for r in rows], [int(r["label"]) for r in rows]


def no_decay_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, plain = [], []
    for name, param in model.named_parameters():
        (plain if name.endswith("bias") or "LayerNorm" in name or "layer_norm" in name else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


def main():
    args = parse_args()
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    tokenizer = AutoTokenizer.from_pretrained(args.teacher)
    sentences, labels = read_sst2(Path(args.data_dir) / "glue" / "SST-2" / "train.tsv", args.max_train_samples)
    encoded = tokenizer(sentences, truncation=True, max_length=args.max_seq_length)
    examples = [{"input_ids": ids, "attention_mask": mask, "token_type_ids": types, "labels": label}
                for ids, mask, types, label in zip(encoded["input_ids"], encoded["attention_mask"],
                                                   encoded["token_type_ids"], labels)]
    loader = DataLoader(examples, batch_size=args.batch_size, shuffle=True,
                        collate_fn=DataCollatorWithPadding(tokenizer))

    teacher = AutoModelForSequenceClassification.from_pretrained(args.teacher).eval().requires_grad_(False)
    student = extract_student(teacher, [0, 2, 4]).train()
    teacher, student = teacher.to(device), student.to(device)
    optimizer = torch.optim.AdamW(no_decay_groups(student, 0.01), lr=args.lr, betas=(0.9, 0.98), eps=1e-6,
                                  fused=True)
    total = len(loader) * args.epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, round(0.05 * total), total)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)
    t = args.temperature

    start = time.perf_counter()
    for _ in range(args.epochs):
        for batch in loader:
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            labels = batch.pop("labels")
            with autocast:
                with torch.no_grad():
                    teacher_logits = teacher(**batch).logits
                student_logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            student_logits, teacher_logits = student_logits.float(), teacher_logits.float()
            soft = F.kl_div(F.log_softmax(student_logits / t, -1), F.log_softmax(teacher_logits / t, -1),
                            reduction="batchmean", log_target=True)
            loss = soft * t * t + F.cross_entropy(student_logits, labels)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(student.parameters(), 5.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    print(f"trained {total} steps in {time.perf_counter() - start:.1f} s, last loss {loss.item():.4f}")


if __name__ == "__main__":
    main()
