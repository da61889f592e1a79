"""Data under many processes, in-process and fast: the self-sharding samplers, `make_dataloader` reading rank, world
size and accumulation from the trainer, and `prepare_data` building the cache once for `setup` to load."""
from types import SimpleNamespace

import pytest
from torch.utils.data import DistributedSampler

from datamodules.glue import GLUEDataModule
from datamodules.samplers import DistributedEvalSampler, DistributedTrainSampler, LengthGroupedSampler
from tests.datamodules.conftest import batches

LENGTHS = [(i * 37) % 101 + 1 for i in range(203)]


def samplers(n, batch_size, world, **kwargs):
    return [DistributedTrainSampler(n, batch_size, num_replicas=world, rank=r, **kwargs) for r in range(world)]


# ---- training sampler --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("world,batch_size,accumulate", [(1, 8, 1), (2, 4, 1), (3, 4, 1), (2, 4, 3), (4, 3, 2)])
@pytest.mark.parametrize("grouped", [False, True])
def test_train_shards_are_disjoint_equal_and_slices_of_the_global_batches(world, batch_size, accumulate, grouped):
    n = len(LENGTHS)
    lengths = LENGTHS if grouped else None
    ranks = samplers(n, batch_size, world, seed=5, lengths=lengths, accumulate_grad_batches=accumulate)
    assert all(isinstance(s, DistributedSampler) for s in ranks)  # so Lightning keeps them under DDP
    per_rank = [s.rank_batches() for s in ranks]
    assert len({len(b) for b in per_rank}) == 1 and len(per_rank[0]) % accumulate == 0  # same count, whole steps
    assert all(len(s) == sum(map(len, b)) and list(s) == [i for x in b for i in x] for s, b in zip(ranks, per_rank))
    seen = [i for b in per_rank for batch in b for i in batch]
    assert len(seen) == len(set(seen)) == n - ranks[0].dropped_per_epoch()  # disjoint, nothing repeated
    # step k of W processes with batch B = step k of one process with batch W * B (same global order)
    single = DistributedTrainSampler(n, world * batch_size, seed=5, lengths=lengths,
                                     accumulate_grad_batches=accumulate).rank_batches()
    for k, shards in enumerate(zip(*per_rank)):
        assert len({len(s) for s in shards}) == 1 and len(shards[0]) >= 1
        assert [i for s in shards for i in s] == single[k][: world * len(shards[0])]
    global_order = ranks[0].global_order()
    assert sorted(global_order) == list(range(n)) and all(s.global_order() == global_order for s in ranks)


def test_partial_last_global_batch_is_split_evenly():
    ranks = samplers(23, 2, 2, seed=1)  # 5 full global batches of 4, then 3 left: 1 each, 1 dropped
    assert [s.batch_sizes for s in ranks] == [[2, 2, 2, 2, 2, 1]] * 2 and ranks[0].dropped_per_epoch() == 1
    ranks = samplers(21, 2, 2)  # 1 left over: fewer than the processes, dropped
    assert ranks[0].batch_sizes == [2] * 5 and ranks[0].dropped_per_epoch() == 1
    one = DistributedTrainSampler(23, 4)  # one process keeps its last partial batch
    assert one.batch_sizes == [4] * 5 + [3] and one.dropped_per_epoch() == 0


def test_accumulation_drops_the_epoch_tail_a_different_one_each_epoch():
    sampler = DistributedTrainSampler(100, 4, num_replicas=2, rank=0, seed=0, accumulate_grad_batches=4)
    # 100 / 8 = 12 full global batches + 4 left (2 each): 13 batches -> 12 kept (3 whole optimiser steps)
    assert sampler.num_batches == 12 and sampler.dropped_per_epoch() == 100 - 96
    dropped = []
    for epoch in (0, 1, 2):
        sampler.set_epoch(epoch)
        order = sampler.global_order()
        dropped.append(frozenset(order[96:]))  # the tail of the epoch's order
        kept = {i for r in (0, 1) for b in DistributedTrainSampler(
            100, 4, num_replicas=2, rank=r, accumulate_grad_batches=4).rank_batches(epoch) for i in b}
        assert kept == set(order[:96])
    assert len(set(dropped)) == 3
    with pytest.warns(UserWarning, match="fewer than accumulate_grad_batches=4"):  # 3 batches per rank: all kept
        assert DistributedTrainSampler(20, 4, num_replicas=2, accumulate_grad_batches=4).num_batches == 3


def test_order_is_a_function_of_seed_and_epoch():
    a, b = DistributedTrainSampler(50, 4, seed=3), DistributedTrainSampler(50, 4, seed=3)
    assert list(a) == list(b)
    a.set_epoch(1)  # Lightning calls set_epoch at every epoch start
    assert list(a) != list(b) and list(a) == [i for batch in b.rank_batches(epoch=1) for i in batch]
    b.set_epoch(1)
    assert list(a) == list(b) and list(DistributedTrainSampler(50, 4, seed=4)) != list(DistributedTrainSampler(50, 4))


def test_one_process_length_grouped_order_is_the_old_samplers():
    old = LengthGroupedSampler(LENGTHS, batch_size=4, seed=7)
    new = DistributedTrainSampler(len(LENGTHS), 4, seed=7, lengths=LENGTHS)
    for epoch in (0, 1):
        old.set_epoch(epoch)
        new.set_epoch(epoch)
        assert list(new) == list(old)
    assert LENGTHS[list(new)[0]] == max(LENGTHS)  # the longest example first


# ---- evaluation sampler ------------------------------------------------------------------------------------------
def test_eval_every_example_once_without_padding():
    shards = [list(DistributedEvalSampler(7, num_replicas=2, rank=r)) for r in (0, 1)]
    assert shards == [[0, 2, 4, 6], [1, 3, 5]]  # 7 examples, 7 items (Lightning's sampler gives 8)
    assert [len(DistributedEvalSampler(7, 2, r)) for r in (0, 1)] == [4, 3]
    assert list(DistributedEvalSampler(5)) == [0, 1, 2, 3, 4]
    assert isinstance(DistributedEvalSampler(5), DistributedSampler)
    with pytest.raises(ValueError, match="fewer than the 3 processes"):
        DistributedEvalSampler(2, num_replicas=3, rank=0)
    with pytest.raises(ValueError, match="rank 2"):
        DistributedEvalSampler(9, num_replicas=2, rank=2)


# ---- DataModule dataloaders under a (fake) trainer -----------------------------------------------------------------
def fake_trainer(world_size=2, global_rank=0, accumulate_grad_batches=1, fn="fit"):
    return SimpleNamespace(world_size=world_size, global_rank=global_rank,
                           accumulate_grad_batches=accumulate_grad_batches,
                           state=SimpleNamespace(fn=SimpleNamespace(value=fn)))


def test_make_dataloader_shards_by_the_trainers_rank_and_accumulation(glue_dm):
    loaders = {}
    for rank in (0, 1):
        dm = glue_dm("sst2", batch_size=2, eval_batch_size=5, group_by_length=True, max_eval_samples=11)
        dm.setup("fit")
        dm.trainer = fake_trainer(global_rank=rank, accumulate_grad_batches=4)
        loaders[rank] = (dm.train_dataloader(), dm.val_dataloader())
    train = [loaders[r][0] for r in (0, 1)]
    assert all(isinstance(dl.sampler, DistributedTrainSampler) and dl.sampler.num_replicas == 2 for dl in train)
    # 24 rows, global batch 4: 6 batches per rank, 4 kept (accumulation 4)
    shards = [batches(dl) for dl in train]
    assert [len(s) for s in shards] == [4, 4]
    ids = [[i for b in s for i in b["example_index"].tolist()] for s in shards]
    assert not set(ids[0]) & set(ids[1]) and len(ids[0]) == len(ids[1]) == 8
    val = [[i for b in batches(loaders[r][1]) for i in b["example_index"].tolist()] for r in (0, 1)]
    assert sorted(val[0] + val[1]) == list(range(11)) and [len(v) for v in val] == [6, 5]
    no_trainer = glue_dm("sst2", batch_size=4)
    no_trainer.setup("fit")
    assert no_trainer.distributed_context() == (1, 0, 1) and len(batches(no_trainer.train_dataloader())) == 6


# ---- prepare_data: the cache built once, setup only loads ----------------------------------------------------------
def _entries(cache):
    return sorted(p.name.rsplit("-", 1)[0] for p in cache.iterdir() if not p.name.startswith("."))


def test_glue_prepare_data_builds_what_the_stage_needs_and_setup_only_loads(glue_dm, tmp_path, monkeypatch):
    dm = glue_dm("mnli")
    dm.trainer = fake_trainer(fn="validate")
    dm.prepare_data()
    assert _entries(tmp_path / "cache") == ["mnli-dev-matched", "mnli-dev-mismatched"]
    dm.trainer = fake_trainer(fn="fit")
    dm.prepare_data()
    assert _entries(tmp_path / "cache") == ["mnli-dev-matched", "mnli-dev-mismatched", "mnli-train-train"]

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("setup tokenized again instead of loading the cache")

    monkeypatch.setattr(GLUEDataModule, "_read_file_columns", no_tokenizing)
    other_rank = glue_dm("mnli")
    other_rank.setup("fit")
    assert len(other_rank.train_dataset) == 24 and [len(d) for d in other_rank.eval_datasets] == [12, 12]


def test_squad_prepare_data_builds_the_features_once(data_dir, wordpiece_tokenizer_dir, tmp_path, monkeypatch):
    import datamodules.squad as squad

    def make():
        return squad.SQuADDataModule(str(wordpiece_tokenizer_dir), data_dir=str(data_dir), cache_dir=str(tmp_path),
                                     train_articles=[0, 1], eval_articles=[1, 2], max_seq_length=64, doc_stride=16)

    dm = make()
    dm.trainer = fake_trainer(fn="fit")
    dm.prepare_data()
    assert _entries(tmp_path) == ["squad-eval", "squad-train"]

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("setup tokenized again instead of loading the cache")

    monkeypatch.setattr(squad, "prepare_features", no_tokenizing)
    other_rank = make()
    other_rank.setup("fit")
    assert len(other_rank.train_dataset) >= 2 and len(other_rank.eval_features) >= 2
