"""benchmarks/denormals.py: it counts the denormal moments of an optimiser's state and runs end to end on fixture data
(the packaged MiniLM-L6 through glue.yaml's step), timing both modes and comparing their parameters."""
import pytest
import torch

from benchmarks import denormals
from callbacks.cpu_denormals import set_flush_denormal_all_threads
from tests import fixtures


def test_denormal_shares_counts_the_moments_below_the_smallest_normal():
    weight = torch.nn.Parameter(torch.zeros(4))
    optimizer = torch.optim.AdamW([weight])
    optimizer.state[weight] = {"exp_avg": torch.tensor([1e-3, denormals.TINY / 2, 0.0, -denormals.TINY / 4]),
                               "exp_avg_sq": torch.tensor([1e-6, 1e-6, denormals.TINY / 2, 0.0])}
    assert denormals.denormal_shares(optimizer) == (0.5, 0.25)


def test_the_script_runs_end_to_end(tmp_path, capsys):
    fixtures.write_glue(tmp_path, n_train=80)  # three batches of 32, 32 and 16
    try:
        denormals.main(["--data_dir", str(tmp_path), "--steps", "2", "--every", "1", "--repeats", "1", "--calls", "1"])
    finally:
        set_flush_denormal_all_threads(False)
    out = capsys.readouterr().out
    assert "step     2: denormal moments 0.00% (first), 0.00% (second)" in out
    assert "denormals flushed" in out and "the parameters after the step the same bit for bit" in out


def test_more_steps_than_the_first_epoch_has_are_refused_in_one_line(tmp_path):
    fixtures.write_glue(tmp_path, n_train=80)  # three batches
    refusal = r"--steps 3 needs 4 batches of the first epoch; it has 3 \(--steps 2 at most\)"
    with pytest.raises(SystemExit, match=refusal):
        denormals.main(["--data_dir", str(tmp_path), "--steps", "3"])
