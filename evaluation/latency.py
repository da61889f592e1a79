"""CPU inference latency: warm-up, then the median wall time per batch under `torch.inference_mode`, threads stated.

    result = measure_cpu_latency(model, tokenizer, texts=sentences, batch_size=32, max_length=128, num_threads=1)
    print(result.median_ms, result.num_threads)

The model is never moved or left in a different mode: a model not on the CPU is copied there, train mode is restored,
and so is torch's thread count.
"""
from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import torch

from models.inputs import MODEL_INPUTS



@dataclass
class LatencyResult:
    """Median and spread of wall time per batch (milliseconds), with what was measured."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    num_threads: int
    batch_size: int
    seq_length: int  # longest padded length among the batches
    timed_batches: int
    warmup_batches: int

    @property
    def median_ms_per_example(self) -> float:
        return self.median_ms / self.batch_size

    def as_dict(self) -> dict:
        return {**asdict(self), "median_ms_per_example": self.median_ms_per_example}


def _batches_from_texts(tokenizer, texts: Sequence, batch_size: int, max_length: int) -> list[dict]:
    """Tokenize single sentences or (a, b) pairs into batches padded to their longest member."""
    batches = []
    for start in range(0, len(texts), batch_size):
        chunk = list(texts[start: start + batch_size])
        if isinstance(chunk[0], (tuple, list)):
            enc = tokenizer([a for a, _ in chunk], [b for _, b in chunk], padding=True, truncation=True,
                            max_length=max_length, return_tensors="pt")
        else:
            enc = tokenizer(chunk, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        batches.append({k: v for k, v in enc.items() if k in MODEL_INPUTS})
    return batches


def measure_cpu_latency(
    model: torch.nn.Module,
    tokenizer=None,
    texts: Sequence | None = None,
    batch: Mapping[str, torch.Tensor] | None = None,
    *,
    batch_size: int = 32,
    max_length: int = 128,
    warmup: int = 3,
    repeats: int = 10,
    num_threads: int | None = None,
) -> LatencyResult:
    """Median wall time of `model(**batch)` on the CPU over `repeats` timed batches after `warmup` untimed ones.

    Give either `texts` (strings or (a, b) pairs; needs `tokenizer`; cut into batches of `batch_size`, cycled through)
    or one ready `batch` (a dict with input_ids, attention_mask[, token_type_ids]). `num_threads` None keeps torch's
    current setting; the setting used is reported either way.
    """
    if (texts is None) == (batch is None):
        raise ValueError("measure_cpu_latency: give exactly one of `texts` (with a tokenizer) or `batch`")
    if repeats < 1 or warmup < 0:
        raise ValueError(f"measure_cpu_latency: repeats must be >= 1 and warmup >= 0, got {repeats}, {warmup}")
    if texts is not None:
        if tokenizer is None:
            raise ValueError("measure_cpu_latency: `texts` needs a `tokenizer`")
        if len(texts) == 0:
            raise ValueError("measure_cpu_latency: `texts` is empty")
        batches = _batches_from_texts(tokenizer, texts, batch_size, max_length)
    else:
        batches = [{k: v.cpu() for k, v in batch.items() if k in MODEL_INPUTS}]
        batch_size = int(batches[0]["input_ids"].shape[0])

    on_cpu = all(p.device.type == "cpu" for p in model.parameters())
    cpu_model = model if on_cpu else copy.deepcopy(model).cpu()
    was_training = cpu_model.training
    threads_before = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    times = []
    try:
        cpu_model.eval()
        with torch.inference_mode():
            for step in range(warmup + repeats):
                inputs = batches[step % len(batches)]
                t0 = time.perf_counter()
                cpu_model(**inputs)
                elapsed = time.perf_counter() - t0
                if step >= warmup:
                    times.append(elapsed * 1000.0)
        used_threads = torch.get_num_threads()
    finally:
        cpu_model.train(was_training)
        torch.set_num_threads(threads_before)

    deciles = statistics.quantiles(times, n=10) if len(times) > 1 else [times[0]] * 9
    return LatencyResult(
        median_ms=statistics.median(times), p10_ms=deciles[0], p90_ms=deciles[-1], num_threads=used_threads,
        batch_size=batch_size, seq_length=max(int(b["input_ids"].shape[1]) for b in batches),
        timed_batches=len(times), warmup_batches=warmup,
    )


def alternating_pass_seconds(models: Mapping[str, torch.nn.Module], batches: Sequence[Mapping[str, torch.Tensor]],
                             rounds: int = 3, num_threads: int = 1) -> dict[str, dict]:
    """Wall time of one pass over all `batches` per model, the models taking turns `rounds` times (so a change in
    the machine's load hits all of them alike), after one untimed warm-up batch each; CPU, inference mode.

    Returns name -> {"median_s", "seconds" (every round), "batches", "examples", "num_threads"}.
    """
    if rounds < 1:
        raise ValueError(f"alternating_pass_seconds: rounds must be >= 1, got {rounds}")
    batches = [{k: v.cpu() for k, v in b.items() if k in MODEL_INPUTS} for b in batches]
    threads_before = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    times: dict[str, list[float]] = {name: [] for name in models}
    try:
        with torch.inference_mode():
            for model in models.values():
                model.eval()(**batches[0])
            for _ in range(rounds):
                for name, model in models.items():
                    t0 = time.perf_counter()
                    for inputs in batches:
                        model(**inputs)
                    times[name].append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads_before)
    examples = sum(int(b["input_ids"].shape[0]) for b in batches)
    return {name: {"median_s": statistics.median(t), "seconds": [round(s, 4) for s in t], "batches": len(batches),
                   "examples": examples, "num_threads": num_threads} for name, t in times.items()}
