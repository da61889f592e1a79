"""callbacks/cpu_malloc.py: with glibc's thresholds set, a large tensor freed and allocated again reuses the memory
(no fresh page faults); train.py gives every CPU fit the callback, and `enabled: false` keeps glibc's defaults."""
import platform
import subprocess
import sys

import pytest

from callbacks.cpu_malloc import ReuseFreedMemory
from tests.lightning_modules.test_finetune import run_cli

glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")

# A child process (the setting cannot be undone in this one): minor page faults of a 64 MB zeros made and freed the
# fourth time (the heap reaches its steady size in the first two: an aligned request needs a little more than the freed
# chunk the first time round).
FAULTS = """
import resource, sys, torch
from callbacks.cpu_malloc import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
for _ in range(3):
    torch.zeros(16 << 20)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
torch.zeros(16 << 20)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def second_allocation_faults(setting: str) -> int:
    out = subprocess.run([sys.executable, "-c", FAULTS, setting], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


@glibc_only
def test_a_freed_large_tensor_is_reused_not_faulted_in_again():
    # glibc's defaults map 64 MB afresh every time: 16,384 faults in 4 KB pages (32 where the kernel hands out 2 MB
    # transparent huge pages for every mapping); kept, the freed memory is already there
    defaults, keep = second_allocation_faults("defaults"), second_allocation_faults("keep")
    assert defaults >= 32
    assert keep * 10 < defaults


@glibc_only
def test_every_cpu_fit_gets_it(data_dir, tiny_bert_dir, tmp_path):
    cli = run_cli("fit", data_dir, tiny_bert_dir, tmp_path, "sst2", "--trainer.fast_dev_run=true")
    callbacks = [c for c in cli.trainer.callbacks if isinstance(c, ReuseFreedMemory)]
    assert [(c.enabled, c.applied) for c in callbacks] == [(True, True)]


def test_a_config_can_keep_glibcs_defaults(data_dir, tiny_bert_dir, tmp_path):
    cli = run_cli("fit", data_dir, tiny_bert_dir, tmp_path, "sst2", "--trainer.fast_dev_run=true",
                  "--trainer.callbacks+=callbacks.cpu_malloc.ReuseFreedMemory",
                  "--trainer.callbacks.init_args.enabled=false")
    callbacks = [c for c in cli.trainer.callbacks if isinstance(c, ReuseFreedMemory)]
    assert [(c.enabled, c.applied) for c in callbacks] == [(False, False)]
