"""LengthGroupedSampler: groups lengths, reshuffles per epoch, and shards disjointly under Lightning's DDP wrapper."""
from lightning.fabric.utilities.distributed import DistributedSamplerWrapper

from datamodules.samplers import LengthGroupedSampler

LENGTHS = [(i * 37) % 101 + 1 for i in range(200)]


def test_permutation_grouped_and_longest_first():
    sampler = LengthGroupedSampler(LENGTHS, batch_size=4, seed=0, mega_batch_factor=5)
    order = list(sampler)
    assert sorted(order) == list(range(200))
    assert LENGTHS[order[0]] == max(LENGTHS)
    # within each mega-batch of 20 (after the longest swap) lengths descend: batch spreads are small on average
    spread = sum(max(LENGTHS[i] for i in order[k:k + 4]) - min(LENGTHS[i] for i in order[k:k + 4])
                 for k in range(4, 200, 4)) / 49
    random_spread = sum(max(LENGTHS[k:k + 4]) - min(LENGTHS[k:k + 4]) for k in range(0, 200, 4)) / 50
    assert spread < random_spread / 2


def test_two_ranks_disjoint_cover_and_set_epoch_reshuffles():
    shards = {}
    for rank in (0, 1):
        sampler = LengthGroupedSampler(LENGTHS, batch_size=4, seed=3)
        wrapper = DistributedSamplerWrapper(sampler, num_replicas=2, rank=rank, shuffle=False)
        wrapper.set_epoch(0)
        epoch0 = list(wrapper)
        wrapper.set_epoch(1)  # forwarded to our sampler: a new order
        epoch1 = list(wrapper)
        assert sampler.epoch == 1 and epoch0 != epoch1 and len(epoch0) == 100
        shards[rank] = (epoch0, epoch1)
    for epoch in (0, 1):
        a, b = set(shards[0][epoch]), set(shards[1][epoch])
        assert not a & b and a | b == set(range(200))
