"""benchmarks/finetune_glue.py: the count of distinct batch lengths by step (why its early steps are dearer), and the
run lengths it refuses in one line (fixture data, no run started)."""
import pytest

from benchmarks.finetune_glue import distinct_lengths_by_step, main
from tests import fixtures


def test_distinct_lengths_are_counted_up_to_each_mark_and_the_epoch_end():
    lengths = [5, 5, 9, 5, 12, 9, 30]
    assert distinct_lengths_by_step(lengths, (2, 4, 100)) == {2: 1, 4: 2, 7: 4}  # 100 is past the epoch: left out
    assert distinct_lengths_by_step([], (1,)) == {}


@pytest.mark.parametrize("options, refusal", [
    (["--short", "2", "--long", "3"], r"--long 3 reaches the end of the first epoch \(3 steps\), where litbert "
                                      r"validates: keep the runs inside it \(or ask for whole runs with --epochs\)"),
    (["--epochs", "2", "--short_epochs", "2"], r"--short_epochs 2 must be at least 1 and below --epochs 2"),
])
def test_runs_past_the_first_epoch_need_whole_epochs(tmp_path, options, refusal):
    fixtures.write_glue(tmp_path, n_train=80)  # three batches of 32, 32 and 16
    with pytest.raises(SystemExit, match=refusal):
        main(["--data_dir", str(tmp_path), "--methods", "litbert", *options])
