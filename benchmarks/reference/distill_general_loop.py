"""Reference for benchmarks/distill_general.py: general distillation as a plain PyTorch loop, step by step what the
public DistilBERT distiller does (Hugging Face transformers, examples/research_projects/distillation/distiller.py:
`prepare_batch_mlm`, `step`, `optimize`), written here from scratch.

    python benchmarks/reference/distill_general_loop.py --teacher DIR --blocks blocks.npy --steps 20

Per step:
- masking as `prepare_batch_mlm`: ceil(15% of the batch's tokens) positions drawn without replacement from the whole
  batch with probability ~ count^-0.7 (DistilBERT's smoothing; special tokens never), then 80% <mask>, 10% kept,
  10% a random id; labels -100 elsewhere;
- the student and the teacher (under `torch.no_grad`) each run in full: LM head at every position, [B, L, V] logits,
  all hidden states;
- KL: `nn.KLDivLoss(reduction="batchmean")` of log_softmax(student / T) against softmax(teacher / T) over the logits
  selected with the attention mask (`torch.masked_select`), times T^2; MLM: `nn.CrossEntropyLoss` over all [B * L]
  logits (ignore_index -100); cosine: `nn.CosineEmbeddingLoss` on the last hidden states at non-padded positions;
  loss = alpha_ce * KL + alpha_mlm * MLM + alpha_cos * cos;
- the loss and its terms read as Python floats (the distiller's `.item()` logging and NaN check), backward, gradient
  clipping at 5.0, AdamW (betas 0.9/0.98, eps 1e-6, weight decay 0.01 except biases and LayerNorm weights; fused=True,
  torch's fastest) and the linear warmup/decay schedule of `transformers.get_linear_schedule_with_warmup`.

The data are packed 128-token blocks saved by the benchmark (`--blocks`, litbert's own training blocks, so that both
methods read the same tokens), batched by a DataLoader over a RandomSampler. The student is the teacher with layers
[0, 2] kept (DistilBERT's extraction: one layer out of two). With `--bf16` the forward runs under bf16 autocast,
as litbert's bf16-mixed precision.
"""
from __future__ import annotations

import argparse
import copy
import math
import time

import numpy as np
import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, RandomSampler
from transformers import AutoModelForMaskedLM, AutoTokenizer, get_linear_schedule_with_warmup


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", required=True, help="masked-LM directory with its tokenizer")
    p.add_argument("--blocks", required=True, help=".npy of [N, L] packed token ids")
    p.add_argument("--steps", type=int, required=True, help="optimiser steps")
    p.add_argument("--student_layers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--temperature", type=float, default=2.0)
    p.add_argument("--alpha_ce", type=float, default=5.0)
    p.add_argument("--alpha_mlm", type=float, default=2.0)
    p.add_argument("--alpha_cos", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup_prop", type=float, default=0.05)
    p.add_argument("--total_steps", type=int, default=None, help="length of the learning-rate schedule (--steps)")
    p.add_argument("--mlm_mask_prop", type=float, default=0.15)
    p.add_argument("--mlm_smoothing", type=float, default=0.7)
    p.add_argument("--max_grad_norm", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--bf16", action="store_true", help="forward passes under bf16 autocast (as litbert's bf16-mixed)")
    return p.parse_args()


def main():
    args = parse_args()
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    tokenizer = AutoTokenizer.from_pretrained(args.teacher)
    teacher = AutoModelForMaskedLM.from_pretrained(args.teacher).to(device).eval()
    student = copy.deepcopy(teacher)
    encoder = student.base_model.encoder
    encoder.layer = nn.ModuleList([encoder.layer[i] for i in args.student_layers])
    student.config.num_hidden_layers = len(args.student_layers)
    student.train()
    vocab_size = student.config.vocab_size

    blocks = torch.from_numpy(np.load(args.blocks).astype(np.int64))  # [N, L]
    # masking probabilities ~ count^-smoothing (DistilBERT's token_counts + train.py), zero for special tokens
    counts = np.bincount(blocks.view(-1).numpy(), minlength=vocab_size)
    token_probs = torch.tensor(np.maximum(counts, 1) ** -args.mlm_smoothing, dtype=torch.float32)
    token_probs[tokenizer.all_special_ids] = 0.0
    token_probs = token_probs.to(device)
    pred_probs = torch.tensor([0.8, 0.1, 0.1], device=device)  # mask, keep, random
    pad_id, mask_id = tokenizer.pad_token_id, tokenizer.mask_token_id

    sampler = BatchSampler(RandomSampler(range(len(blocks))), batch_size=args.batch_size, drop_last=False)
    loader = DataLoader(range(len(blocks)), batch_sampler=sampler,
                        collate_fn=lambda idx: (blocks[idx], (blocks[idx] != pad_id).sum(1)))

    no_decay = ["bias", "LayerNorm.weight"]
    groups = [
        {"params": [p for n, p in student.named_parameters() if not any(nd in n for nd in no_decay)],
         "weight_decay": 0.01},
        {"params": [p for n, p in student.named_parameters() if any(nd in n for nd in no_decay)], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=args.lr, eps=1e-6, betas=(0.9, 0.98), fused=True)
    total_steps = args.total_steps or args.steps  # as litbert's schedule, planned for its max_steps
    scheduler = get_linear_schedule_with_warmup(optimizer, math.ceil(total_steps * args.warmup_prop), total_steps)
    ce_loss_fct = nn.KLDivLoss(reduction="batchmean")
    lm_loss_fct = nn.CrossEntropyLoss(ignore_index=-100)
    cosine_loss_fct = nn.CosineEmbeddingLoss(reduction="mean")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)
    T = args.temperature

    def prepare_batch_mlm(token_ids, lengths):
        attn_mask = torch.arange(token_ids.size(1), device=device) < lengths[:, None]  # [B, L]
        bs, max_seq_len = token_ids.shape
        mlm_labels = token_ids.clone()
        x_prob = token_probs[token_ids.flatten()]
        n_tgt = math.ceil(args.mlm_mask_prop * lengths.sum().item())
        tgt_ids = torch.multinomial(x_prob / x_prob.sum(), n_tgt, replacement=False)
        pred_mask = torch.zeros(bs * max_seq_len, dtype=torch.bool, device=device)
        pred_mask[tgt_ids] = True
        pred_mask = pred_mask.view(bs, max_seq_len)
        pred_mask[token_ids == pad_id] = False
        real = token_ids[pred_mask]
        rand = real.clone().random_(vocab_size)
        masked = real.clone().fill_(mask_id)
        probs = torch.multinomial(pred_probs, len(real), replacement=True)
        new = masked * (probs == 0).long() + real * (probs == 1).long() + rand * (probs == 2).long()
        token_ids = token_ids.masked_scatter(pred_mask, new)
        mlm_labels[~pred_mask] = -100
        return token_ids, attn_mask, mlm_labels

    def step(input_ids, attention_mask, lm_labels):
        with autocast:
            s_out = student(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
            with torch.no_grad():
                t_out = teacher(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        s_logits, t_logits = s_out.logits.float(), t_out.logits.float()  # [B, L, V]
        mask = attention_mask.unsqueeze(-1).expand_as(s_logits)  # [B, L, V]
        s_slct = torch.masked_select(s_logits, mask).view(-1, vocab_size)  # [n, V]
        t_slct = torch.masked_select(t_logits, mask).view(-1, vocab_size)
        loss_ce = ce_loss_fct(nn.functional.log_softmax(s_slct / T, dim=-1),
                              nn.functional.softmax(t_slct / T, dim=-1)) * T ** 2
        loss_mlm = lm_loss_fct(s_logits.view(-1, vocab_size), lm_labels.view(-1))
        s_hid, t_hid = s_out.hidden_states[-1].float(), t_out.hidden_states[-1].float()  # [B, L, H]
        hmask = attention_mask.unsqueeze(-1).expand_as(s_hid)
        s_hid = torch.masked_select(s_hid, hmask).view(-1, s_hid.size(-1))
        t_hid = torch.masked_select(t_hid, hmask).view(-1, t_hid.size(-1))
        loss_cos = cosine_loss_fct(s_hid, t_hid, s_hid.new_ones(s_hid.size(0)))
        loss = args.alpha_ce * loss_ce + args.alpha_mlm * loss_mlm + args.alpha_cos * loss_cos
        logged = (loss.item(), loss_ce.item(), loss_mlm.item(), loss_cos.item())  # the distiller's logging
        if (loss != loss).data.any():
            raise SystemExit("NaN detected")
        loss.backward()
        nn.utils.clip_grad_norm_(student.parameters(), args.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
        return logged

    done, start = 0, time.perf_counter()
    while done < args.steps:
        for token_ids, lengths in loader:
            input_ids, attention_mask, labels = prepare_batch_mlm(token_ids.to(device), lengths.to(device))
            logged = step(input_ids, attention_mask, labels)
            done += 1
            if done == args.steps:
                break
    if device.type == "cuda":
        torch.cuda.synchronize()
    print(f"{done} steps in {time.perf_counter() - start:.1f} s; last loss {logged[0]:.4f} (ce {logged[1]:.4f}, "
          f"mlm {logged[2]:.4f}, cos {logged[3]:.4f})")


if __name__ == "__main__":
    main()
