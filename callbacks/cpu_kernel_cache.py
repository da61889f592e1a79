"""KeepCPUKernels: on the CPU, oneDNN keeps the kernel of every matrix-product shape a run meets, not only the last
1,024.

oneDNN, the library behind torch's bf16 matrix products on a CPU, builds a kernel (a "primitive", JIT-compiled) the
first time it meets a product shape and keeps it in a least-recently-used cache of 1,024 entries by default. A run on
variable-length batches needs more: each batch length brings its own shapes (the projections, their backward, the
attention's products; about 20 for a BERT layer stack), SST-2's length-grouped batches bring 57 lengths an epoch, and
evaluation brings its own. For MiniLM-L6 fine-tuning on SST-2 at batch 32 that is more than 1,024 kernels by about
step 600, and from there on the cache evicts kernels the next batches need and builds them again, every epoch: a second
pass over the first 700 batches took 137.9 ms a step at the default capacity, slower than the first pass, and 124.1 ms
with it raised (`benchmarks/finetune_step.py --start 0 --steps 700`, README "Speed"). It changes no arithmetic; the
kernels kept cost memory, too little to show in the peak RSS of that run (2.35 GB at the default, 2.28 GB raised).

oneDNN has no Python API for the capacity and reads it from the environment (`ONEDNN_PRIMITIVE_CACHE_CAPACITY`) once,
when it builds its first kernel; this callback sets the variable in `setup` (every process, every stage, on the CPU),
which is before the run's first product when the run comes from train.py. In a process that already ran a bf16
product on the CPU the capacity is fixed, and the callback changes nothing. A value the user set is kept.

train.py adds this callback to every run unless the config lists it (`callbacks.add_default_callbacks`). YAML (under
`trainer:`), to keep oneDNN's default:

    callbacks:
      - class_path: callbacks.cpu_kernel_cache.KeepCPUKernels
        init_args: {enabled: false}
"""
from __future__ import annotations

import os

from lightning.pytorch import Callback

CAPACITY_VARIABLE = "ONEDNN_PRIMITIVE_CACHE_CAPACITY"
CAPACITY = 16384  # kernels kept: 16x the default; a run of several models and many lengths stays below it


def keep_cpu_kernels(capacity: int = CAPACITY) -> bool:
    """Set oneDNN's kernel-cache capacity for this process unless the environment already names one; whether it
    did. Effective if no oneDNN kernel was built in the process before."""
    if CAPACITY_VARIABLE in os.environ:
        return False
    os.environ[CAPACITY_VARIABLE] = str(capacity)
    return True


class KeepCPUKernels(Callback):
    """Before a run on the CPU, raise oneDNN's kernel-cache capacity (`ONEDNN_PRIMITIVE_CACHE_CAPACITY`).

    Args:
        enabled: False keeps oneDNN's default (1,024 kernels).
        capacity: how many kernels oneDNN keeps.
    """

    def __init__(self, enabled: bool = True, capacity: int = CAPACITY):
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0 (kernels kept), got {capacity}")
        self.enabled, self.capacity = enabled, capacity
        self.applied = False  # whether this callback set the variable (for logs and tests)

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.enabled and trainer.strategy.root_device.type == "cpu" and not self.applied:
            self.applied = keep_cpu_kernels(self.capacity)
