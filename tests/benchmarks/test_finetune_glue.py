"""benchmarks/finetune_glue.py: the count of distinct batch lengths by step (why its early steps are dearer), the
config copies of its litbert methods (compiled in every run, or eager), and the run lengths it refuses in one line
(fixture data, no run started)."""
import pytest

from benchmarks.finetune_glue import COMPILE, config_compiled, distinct_lengths_by_step, main
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


def test_litbert_runs_compiled_whatever_their_length_or_eager(tmp_path):
    import yaml

    from benchmarks.harness import REPO

    shipped = yaml.safe_load((REPO / "configs/finetune/glue.yaml").read_text())
    compile_args = [c.get("init_args") for c in shipped["trainer"]["callbacks"] if c["class_path"] == COMPILE]
    assert compile_args and compile_args[0]["min_steps"] > 0  # the shipped config compiles long fits only
    for compiled in (True, False):
        config = yaml.safe_load(config_compiled(str(REPO / "configs/finetune/glue.yaml"), tmp_path / "c.yaml",
                                                compiled).read_text())
        callbacks = config["trainer"]["callbacks"]
        kept = [c for c in callbacks if c["class_path"] == COMPILE]
        assert [c["init_args"]["min_steps"] for c in kept] == ([0] if compiled else [])
        others = [c for c in shipped["trainer"]["callbacks"] if c["class_path"] != COMPILE]
        assert [c for c in callbacks if c["class_path"] != COMPILE] == others
        assert {k: v for k, v in config.items() if k != "trainer"} == {k: v for k, v in shipped.items()
                                                                       if k != "trainer"}
