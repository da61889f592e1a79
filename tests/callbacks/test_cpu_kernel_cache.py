"""callbacks/cpu_kernel_cache.py: with the capacity raised, oneDNN keeps more than 1,024 product kernels (a second
pass over 1,100 shapes builds none again); train.py gives every CPU run the callback, a user's value and `enabled:
false` are respected."""
import os
import subprocess
import sys

import pytest

from callbacks.cpu_kernel_cache import CAPACITY_VARIABLE, KeepCPUKernels
from lightning_modules.precision import native_bf16
from tests.lightning_modules.test_finetune import run_cli

# A child process (oneDNN reads the capacity once): 1,100 bf16 products of distinct shapes, twice; the kernels built
# in the second pass (oneDNN's verbose "create:cache_miss" lines) are those the cache had evicted.
REBUILT = """
import sys, torch
if sys.argv[1] == "keep":
    from callbacks.cpu_kernel_cache import keep_cpu_kernels
    assert keep_cpu_kernels()
inputs = [torch.randn(8 + i, 32).bfloat16() for i in range(1100)]
weight = torch.randn(32, 32).bfloat16()
for x in inputs:
    x @ weight
with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON_CREATION):
    for x in inputs:
        x @ weight
"""


def kernels_rebuilt(setting: str) -> int:
    env = {k: v for k, v in os.environ.items() if k != CAPACITY_VARIABLE}
    out = subprocess.run([sys.executable, "-c", REBUILT, setting], capture_output=True, text=True, check=True, env=env)
    return out.stdout.count("create:cache_miss")


@pytest.mark.skipif(not native_bf16("cpu"), reason="bf16 products go through oneDNN on a CPU with native bf16")
def test_a_raised_capacity_keeps_the_kernels_the_default_evicts():
    assert kernels_rebuilt("default") == 1100  # least recently used first: a cycle over 1,100 misses every time
    assert kernels_rebuilt("keep") == 0


@pytest.fixture
def no_capacity_set(monkeypatch):
    """The variable absent during the test, and as it was afterwards (the callback sets it in this process)."""
    monkeypatch.setenv(CAPACITY_VARIABLE, "0")
    monkeypatch.delenv(CAPACITY_VARIABLE)


def test_every_cpu_run_gets_it(data_dir, tiny_bert_dir, tmp_path, no_capacity_set):
    cli = run_cli("fit", data_dir, tiny_bert_dir, tmp_path, "sst2", "--trainer.fast_dev_run=true")
    callbacks = [c for c in cli.trainer.callbacks if isinstance(c, KeepCPUKernels)]
    assert [(c.enabled, c.applied) for c in callbacks] == [(True, True)]
    assert os.environ[CAPACITY_VARIABLE] == "16384"


def test_a_config_can_keep_onednns_default(data_dir, tiny_bert_dir, tmp_path, no_capacity_set):
    cli = run_cli("fit", data_dir, tiny_bert_dir, tmp_path, "sst2", "--trainer.fast_dev_run=true",
                  "--trainer.callbacks+=callbacks.cpu_kernel_cache.KeepCPUKernels",
                  "--trainer.callbacks.init_args.enabled=false")
    callbacks = [c for c in cli.trainer.callbacks if isinstance(c, KeepCPUKernels)]
    assert [(c.enabled, c.applied) for c in callbacks] == [(False, False)]
    assert CAPACITY_VARIABLE not in os.environ


def test_a_users_capacity_is_kept(monkeypatch):
    monkeypatch.setenv(CAPACITY_VARIABLE, "2048")
    callback = KeepCPUKernels()

    class Strategy:
        root_device = type("Device", (), {"type": "cpu"})()

    callback.setup(type("Trainer", (), {"strategy": Strategy()})(), None, "fit")
    assert not callback.applied and os.environ[CAPACITY_VARIABLE] == "2048"
    with pytest.raises(ValueError, match="capacity must be >= 0"):
        KeepCPUKernels(capacity=-1)
