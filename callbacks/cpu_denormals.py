"""FlushDenormals: on the CPU, denormal floats are flushed to zero in every thread that computes (the main thread and
torch's OpenMP workers), so a run never takes the CPU's slow path for them.

x86 CPUs compute on denormal floats (magnitudes below 1.2e-38 in fp32 and bf16) through a microcode assist, far slower
than on normal ones. AdamW's moments walk into that range by themselves: a parameter row whose gradient stays zero,
such as the word embedding of a token no recent batch contained, has its first moment multiplied by beta1 every step,
so about 700 steps after its last use it turns denormal and stays so for about 150 more before it reaches zero (the
second moment, by beta2 = 0.98, after a few thousand steps). Fine-tuning MiniLM-L6 on SST-2 (glue.yaml), the first
moments start to turn denormal at step ~700 and 1.40% of all moments are at step 1,600, where the fused AdamW step
takes 17.2 ms with them and 15.6 ms with them flushed (`benchmarks/denormals.py`, five alternated rounds; a scratch
check on moments that are all denormal: 8-13x slower); the share then stays at 1.4-1.6% through the three epochs (18.7
against 16.1 ms at step 6,300). With the flush-to-zero and denormals-are-zero modes on, those values are zeros: the
moment of a row that is no longer used becomes zero a few hundred steps earlier than it would underflow anyway, and
the parameters come out the same bit for bit (a denormal moment moves a weight by less than a thousand-millionth of
its last bit; tests/callbacks/test_cpu_denormals.py).

Why by hand: `torch.set_flush_denormal` sets the mode of the calling thread only, and the CPU's threads do not inherit
it from a thread that changes it after they started; torch's OpenMP workers start with the first parallel operation,
long before a fit. So the mode is set inside one parallel region of torch's own OpenMP runtime (`GOMP_parallel`, which
libgomp and LLVM's and Intel's runtimes all export), where each thread of the team sets its own; threads the team
starts later copy it from the main thread. Where torch uses no such runtime, only the main thread's mode is set.

train.py adds this callback to every run unless the config lists it (`callbacks.add_default_callbacks`); it acts on the
CPU in every stage (the same arithmetic in a fit's validation and in `validate`) and puts the modes back at the end.
YAML (under `trainer:`), to keep denormals:

    callbacks:
      - class_path: callbacks.cpu_denormals.FlushDenormals
        init_args: {enabled: false}
"""
from __future__ import annotations

import ctypes
import os

import torch
from lightning.pytorch import Callback

OPENMP_LIBRARIES = ("libgomp", "libiomp5", "libomp")  # runtimes that export GOMP_parallel


def openmp_runtime() -> ctypes.CDLL | None:
    """The OpenMP runtime loaded into this process, from /proc/self/maps (torch's own first, should another package
    have loaded a second); None if there is none or the platform has no such file."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if ".so" in line}
    except OSError:
        return None
    torch_dir = os.path.dirname(torch.__file__)
    for path in sorted(paths, key=lambda path: (not path.startswith(torch_dir), path)):
        if os.path.basename(path).startswith(OPENMP_LIBRARIES):
            library = ctypes.CDLL(path)
            if hasattr(library, "GOMP_parallel"):
                return library
    return None


def set_flush_denormal_all_threads(on: bool) -> list[bool]:
    """`torch.set_flush_denormal(on)` in every thread of torch's OpenMP team and the main thread; what each returned
    (False: the CPU cannot)."""
    results = [torch.set_flush_denormal(on)]  # the calling thread, whatever the runtime
    runtime = openmp_runtime()
    if runtime is not None:
        region = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(lambda _: results.append(torch.set_flush_denormal(on)))
        runtime.GOMP_parallel.argtypes = [type(region), ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
        runtime.GOMP_parallel(region, None, 0, 0)  # 0 threads: the team torch's parallel operations get
    return results


class FlushDenormals(Callback):
    """Flush denormal floats to zero in every CPU thread of the run, and put the modes back at its end.

    Args:
        enabled: False keeps the CPU's denormal arithmetic.
    """

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.active = False  # the modes are on now (set by this callback)
        self.applied = False  # they were on in this callback's run (for logs and tests)

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.enabled and not self.active and trainer.strategy.root_device.type == "cpu":
            self.active = all(set_flush_denormal_all_threads(True))
            self.applied = self.applied or self.active

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if self.active:
            set_flush_denormal_all_threads(False)
            self.active = False
