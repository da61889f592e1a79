"""Benchmark: one MLM training step, litbert's sparse prediction vs the Hugging Face example-script way.

The Hugging Face `run_mlm.py` recipe masks on the CPU in the collator (`DataCollatorForLanguageModeling`) and computes
the loss with `model(..., labels=labels)`, i.e. the vocabulary projection at every position ([B, L, V] logits).
litbert masks with `MLMMasker` (seeded, vectorised, on the batch's device) and projects only the masked positions
(`models.mlm.sparse_mlm_logits`). Same model, same batch shape, same optimiser; the two ways alternate step by step so
that load from other processes hits both alike. Token ids are random (timing does not depend on the text).

    python benchmarks/mlm_step.py --tokenizer artifacts/tokenizers/data-bpe-50k --steps 20
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from transformers import DataCollatorForLanguageModeling

from datamodules.masking import MLMMasker
from models.mlm import build_masked_lm, sparse_mlm_logits
from models.pretrained import load_tokenizer


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokenizer", required=True, help="tokenizer directory (e.g. made by scripts/train_tokenizer.py)")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--seq_length", type=int, default=128)
    p.add_argument("--hidden_size", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--intermediate_size", type=int, default=1024)
    p.add_argument("--steps", type=int, default=20, help="timed steps per method")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p.parse_args()


def main():
    args = parse_args()
    torch.manual_seed(0)
    tokenizer = load_tokenizer(args.tokenizer)
    device = torch.device(args.device)
    model = build_masked_lm(arch="roberta", vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                            hidden_size=args.hidden_size, num_hidden_layers=args.layers, num_attention_heads=args.heads,
                            intermediate_size=args.intermediate_size, max_seq_length=args.seq_length).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-6)
    # A packed FULL-SENTENCES batch: <s> tokens </s>, no padding.
    low = max(tokenizer.all_special_ids) + 1
    ids = torch.randint(low, len(tokenizer), (args.batch_size, args.seq_length))
    ids[:, 0], ids[:, -1] = tokenizer.bos_token_id, tokenizer.eos_token_id
    attention = torch.ones_like(ids)
    hf_collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)
    masker = MLMMasker(tokenizer, mlm_probability=0.15, seed=0)
    index = torch.arange(args.batch_size, device=device)

    def hf_step(step):  # run_mlm.py: CPU collator masking + dense loss
        batch = hf_collator([{"input_ids": row} for row in ids.tolist()])
        out = model(input_ids=batch["input_ids"].to(device), attention_mask=attention.to(device),
                    labels=batch["labels"].to(device))
        return out.loss

    def litbert_step(step):  # MLMMasker on the device + sparse projection
        input_ids, labels = masker(ids.to(device), attention.to(device), index, epoch=step)
        logits, targets, _ = sparse_mlm_logits(model, input_ids, attention.to(device), labels)
        return F.cross_entropy(logits, targets)

    methods = {"hf_example_dense": hf_step, "litbert_sparse": litbert_step}
    times = {name: [] for name in methods}
    model.train()
    for step in range(args.warmup + args.steps):
        for name, fn in methods.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            loss = fn(step)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if step >= args.warmup:
                times[name].append(time.perf_counter() - start)

    tokens = args.batch_size * args.seq_length
    print(f"device={device} threads={torch.get_num_threads()} vocab={len(tokenizer)} "
          f"model=roberta L{args.layers}/H{args.hidden_size} batch={args.batch_size}x{args.seq_length} "
          f"steps={args.steps} (median)")
    print("| method | ms/step | tokens/s |\n|---|---:|---:|")
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name, med in medians.items():
        print(f"| {name} | {1000 * med:.1f} | {tokens / med:,.0f} |")
    print(f"speed-up: {medians['hf_example_dense'] / medians['litbert_sparse']:.2f}x")


if __name__ == "__main__":
    main()
