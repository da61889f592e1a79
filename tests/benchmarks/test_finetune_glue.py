"""benchmarks/finetune_glue.py: the count of distinct batch lengths by step (why its early steps are dearer)."""
from benchmarks.finetune_glue import distinct_lengths_by_step


def test_distinct_lengths_are_counted_up_to_each_mark_and_the_epoch_end():
    lengths = [5, 5, 9, 5, 12, 9, 30]
    assert distinct_lengths_by_step(lengths, (2, 4, 100)) == {2: 1, 4: 2, 7: 4}  # 100 is past the epoch: left out
    assert distinct_lengths_by_step([], (1,)) == {}
