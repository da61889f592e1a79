"""benchmarks/denormals.py: it counts the denormal moments of an optimiser's state and runs end to end on fixture data
(the packaged MiniLM-L6 through glue.yaml's step), timing both modes and comparing their parameters."""
import pytest
import torch

from benchmarks import denormals, finetune_step
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


def test_the_steps_run_on_into_the_next_epochs(tmp_path, capsys):
    fixtures.write_glue(tmp_path, n_train=80)  # three batches an epoch
    try:
        denormals.main(["--data_dir", str(tmp_path), "--steps", "4", "--every", "4", "--repeats", "1", "--calls", "1"])
    finally:
        set_flush_denormal_all_threads(False)
    assert "step     4: denormal moments" in capsys.readouterr().out


def test_the_second_epoch_is_another_order_of_the_same_rows(tmp_path):
    fixtures.write_glue(tmp_path, n_train=200)  # seven batches an epoch
    batches = finetune_step.window(str(tmp_path), 0, 14, epochs=2)

    def rows(part):  # each example's token ids without padding, in the order trained
        return [tuple(ids[:n]) for b in part for ids, n in zip(b["input_ids"].tolist(), b["attention_mask"].sum(1))]

    first, second = rows(batches[:7]), rows(batches[7:])
    assert len(first) == 200 and sorted(first) == sorted(second) and first != second


def test_more_steps_than_the_epochs_have_are_refused_in_one_line(tmp_path):
    fixtures.write_glue(tmp_path, n_train=80)  # three batches an epoch, glue.yaml's three epochs
    refusal = r"--steps 9 needs 10 batches of glue.yaml's 3 epoch\(s\); they have 9 \(--steps 8 at most\)"
    with pytest.raises(SystemExit, match=refusal):
        denormals.main(["--data_dir", str(tmp_path), "--steps", "9"])
