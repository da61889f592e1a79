"""callbacks/cpu_denormals.py: every thread of torch's OpenMP team flushes denormals while the modes are on (a
parallel product of denormals comes out all zeros) and none after; AdamW gives the same parameters bit for bit on
moments with denormals; train.py gives every CPU run the callback, which puts the modes back; `enabled: false`."""
import pytest
import torch
from lightning.pytorch import Callback

from callbacks.cpu_denormals import FlushDenormals, set_flush_denormal_all_threads
from tests.lightning_modules.test_finetune import run_cli

TINY = torch.finfo(torch.float32).tiny  # the smallest normal fp32 (1.2e-38)


def denormals_left() -> int:
    """Nonzero results of halving 2M denormals: an operation torch splits across its OpenMP threads."""
    return int(((torch.full((2_000_000,), TINY / 4) * 0.5) != 0).sum())


@pytest.fixture
def flush_off():
    yield
    set_flush_denormal_all_threads(False)


def test_every_thread_flushes_then_none(flush_off):
    assert denormals_left() == 2_000_000
    if not all(set_flush_denormal_all_threads(True)):
        pytest.skip("this CPU cannot flush denormals")
    assert denormals_left() == 0  # torch.set_flush_denormal alone leaves the other threads' halves (2 threads)
    set_flush_denormal_all_threads(False)
    assert denormals_left() == 2_000_000


def adamw_step(flush: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One fused AdamW step on moments a long-unused row would have (denormal first moments; denormal second moments
    beside zero first ones) next to a row in use; the parameters and the moments after it."""
    set_flush_denormal_all_threads(False)  # the moments are built with denormals in them
    torch.manual_seed(0)
    param = torch.randn(3, 4096) * 0.05
    grad = torch.zeros(3, 4096)
    grad[0] = torch.randn(4096) * 1e-3  # row 0 in use; rows 1 and 2 not
    exp_avg = torch.stack([torch.randn(4096) * 1e-4, (torch.rand(4096) + 1) * TINY / 2, torch.zeros(4096)])
    exp_avg_sq = torch.stack([torch.rand(4096) * 1e-8, torch.rand(4096) * 1e-12, (torch.rand(4096) + 1) * TINY / 2])
    set_flush_denormal_all_threads(flush)
    torch._fused_adamw_([param], [grad], [exp_avg], [exp_avg_sq], [], [torch.tensor(2000.0)], lr=5e-5, beta1=0.9,
                        beta2=0.98, weight_decay=0.01, eps=1e-6, amsgrad=False, maximize=False)
    set_flush_denormal_all_threads(False)
    return param, exp_avg, exp_avg_sq


def test_adamw_moves_the_parameters_the_same_with_denormals_flushed(flush_off):
    if not all(set_flush_denormal_all_threads(True)):
        pytest.skip("this CPU cannot flush denormals")
    plain, flushed = adamw_step(False), adamw_step(True)
    assert torch.equal(plain[0], flushed[0])  # the parameters: bit for bit
    assert (plain[1][1] != 0).all() and not flushed[1][1].any()  # the denormal moments: zeros now
    assert torch.equal(plain[1][0], flushed[1][0]) and torch.equal(plain[2][0], flushed[2][0])  # normal ones kept


class DenormalProbe(Callback):
    """Counts the denormals left by a parallel operation at each training batch of a run."""
    seen: list[int] = []

    def on_train_batch_start(self, *args) -> None:
        DenormalProbe.seen.append(denormals_left())


def test_every_cpu_run_gets_it_and_the_modes_are_put_back(data_dir, tiny_bert_dir, tmp_path):
    DenormalProbe.seen.clear()
    cli = run_cli("fit", data_dir, tiny_bert_dir, tmp_path, "sst2", "--trainer.max_steps=2",
                  "--trainer.callbacks+=tests.callbacks.test_cpu_denormals.DenormalProbe")
    callbacks = [c for c in cli.trainer.callbacks if isinstance(c, FlushDenormals)]
    assert [(c.enabled, c.applied, c.active) for c in callbacks] == [(True, True, False)]
    assert DenormalProbe.seen == [0, 0]  # during training: flushed in every thread
    assert denormals_left() == 2_000_000  # after the run: back


def test_a_config_can_keep_denormals(data_dir, tiny_bert_dir, tmp_path):
    cli = run_cli("fit", data_dir, tiny_bert_dir, tmp_path, "sst2", "--trainer.fast_dev_run=true",
                  "--trainer.callbacks+=callbacks.cpu_denormals.FlushDenormals",
                  "--trainer.callbacks.init_args.enabled=false")
    assert [(c.enabled, c.applied) for c in cli.trainer.callbacks if isinstance(c, FlushDenormals)] == [(False, False)]
