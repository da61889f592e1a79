"""ReuseFreedMemory: on the CPU, glibc keeps the memory of freed large tensors for the next step, not unmapping it.

A CPU training step allocates and frees the same large tensors every time: the dense gradient of the word embeddings
(vocabulary x hidden, 47 MB for MiniLM-L6's 30,522 x 384; embedding backward builds it from zeros), autocast's bf16
copies of the weights, the optimiser's temporaries. glibc's malloc serves a request above its mmap threshold (it
adapts from 128 KB up to at most 32 MB) with a fresh mapping and unmaps it on free, and gives the top of its heap back
to the system beyond twice that, so every step faults in the same memory again, a 4 KB page at a time, zero-filled by
the kernel. Measured on the project's 2-core CPU machine (benchmarks/cpu_ops.py): a MiniLM-L6 fine-tuning step (32 x 13
tokens, bf16 autocast, fused AdamW) took 20,632 minor page faults, 45 ms of system CPU time and 168 ms; with these
settings none, 1 ms and 140 ms (`torch.zeros(30522, 384)` alone: 12.8 -> 1.3 ms).

The usual cure is a caching allocator preloaded into the process (jemalloc or tcmalloc, as PyTorch's CPU performance
guide advises), which pip cannot install; glibc's own `mallopt` does the same for tensors of this size when called in
the process, so it is written here by hand: an mmap threshold of 1 GiB (tensors below it come from the heap, whose
freed chunks are reused) and a trim threshold of 2 GiB less a byte (the heap is not shrunk between steps). It changes
no arithmetic, only where memory comes from. The price is memory: the process keeps what it freed instead of returning
it, and the heap's free chunks do not always fit the next request, so peak RSS rises (README "Speed": by 0.02 GB in
MiniLM-L6 fine-tuning, 0.26 GB in `roberta_small` MLM, 0.43 GB in its general distillation). The same settings for any
other process, from its start: the environment variable `GLIBC_TUNABLES` set to `glibc_tunables()`
(`glibc.malloc.mmap_threshold=1073741824:glibc.malloc.trim_threshold=2147483647`).

train.py adds this callback to every run unless the config lists it (`callbacks.add_default_callbacks`); it acts in
`setup` of a fit on the CPU with glibc (Linux), in every process, and does nothing elsewhere (GPU tensors come from
torch's caching allocator already). Not undone at the end: the setting is the process's, and the process is the run's.

YAML (under `trainer:`), to keep glibc's defaults:

    callbacks:
      - class_path: callbacks.cpu_malloc.ReuseFreedMemory
        init_args: {enabled: false}
"""
from __future__ import annotations

import ctypes
import ctypes.util
import platform

from lightning.pytorch import Callback
from lightning.pytorch.utilities import rank_zero_info

# glibc's malloc.h option numbers
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 30  # 1 GiB: every tensor of an encoder up to roberta_large (its embedding: 206 MB) is reused
TRIM_THRESHOLD = (1 << 31) - 1  # up to 2 GiB of free heap top kept (mallopt takes a C int)


def keep_freed_memory(mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD) -> bool:
    """Set glibc malloc's mmap and trim thresholds for this process; False where the C library is not glibc (or
    refuses a value)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(libc.mallopt(M_TRIM_THRESHOLD, trim_threshold))


def glibc_tunables() -> str:
    """The same thresholds as a `GLIBC_TUNABLES` value, for a process litbert does not start (benchmarks/)."""
    return f"glibc.malloc.mmap_threshold={MMAP_THRESHOLD}:glibc.malloc.trim_threshold={TRIM_THRESHOLD}"


class ReuseFreedMemory(Callback):
    """Before fitting on the CPU, set glibc's malloc thresholds so large freed tensors are reused, not unmapped.

    Args:
        enabled: False keeps glibc's defaults.
    """

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.applied = False  # whether this process's thresholds were set (for logs and tests)

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.enabled and stage == "fit" and trainer.strategy.root_device.type == "cpu" and not self.applied:
            self.applied = keep_freed_memory()
            if not self.applied:
                rank_zero_info("ReuseFreedMemory: not glibc (or mallopt refused), the C library's defaults are kept")
