"""The one default of the Trainer's `precision`, read by train.py (the CLI default), scripts/evaluate_models.py and
the benchmarks, so every run of the project picks its precision the same way unless `--trainer.precision` says."""
from __future__ import annotations

import torch


def native_bf16(device: str | torch.device) -> bool:
    """Whether `device` multiplies bf16 matrices natively: a CUDA GPU with bf16 (Ampere and later), or a CPU with
    AVX512-BF16 or AMX (Zen 4 and later, Sapphire Rapids and later), where oneDNN's bf16 products run 2.1-3x the fp32
    ones (benchmarks/cpu_ops.py). A CPU without them emulates bf16, slower than fp32."""
    if torch.device(device).type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if torch.device(device).type != "cpu":
        return False
    # torch.cpu's feature probes (cpuinfo) are private API; a torch without them counts as no native bf16
    probes = (getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None))
    return any(probe is not None and probe() for probe in probes)


def default_precision() -> str:
    """bf16 mixed precision where the device Lightning picks (`accelerator: auto`: a GPU if there is one, else the
    CPU) multiplies bf16 natively, full fp32 elsewhere."""
    return "bf16-mixed" if native_bf16("cuda" if torch.cuda.is_available() else "cpu") else "32-true"
