"""Length-grouped sampling: batches of examples with similar lengths, so dynamic padding wastes little compute.

Under DDP, Lightning wraps any custom sampler in `lightning.fabric.utilities.distributed.DistributedSamplerWrapper`
(with `shuffle=False`, because this sampler is not a RandomSampler): rank r takes positions r, r + W, r + 2W, ... of
this sampler's order, so the ranks get disjoint shards that cover the data, and the wrapper forwards `set_epoch`
here. The order is a pure function of (seed, epoch), hence identical on every rank, which the sharding requires.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch.utils.data import Sampler


class LengthGroupedSampler(Sampler[int]):
    """Random order, then within "mega-batches" of `batch_size * mega_batch_factor` examples sorted by length.

    The longest mega-batch's first batch is moved to the front, so an out-of-memory error shows up at the first step
    (the trick of the Hugging Face Trainer's sampler of the same name). `set_epoch(e)` gives a new order each epoch.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0, mega_batch_factor: int = 50):
        self.lengths = [int(n) for n in lengths]
        self.batch_size = batch_size
        self.seed = seed
        self.mega_batch_size = batch_size * mega_batch_factor
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        megas = [order[i: i + self.mega_batch_size] for i in range(0, len(order), self.mega_batch_size)]
        megas = [sorted(mega, key=lambda i: -self.lengths[i]) for mega in megas]
        if megas:
            # Put the single longest example (first of its sorted mega-batch) at position 0.
            longest = max(range(len(megas)), key=lambda m: self.lengths[megas[m][0]])
            megas[0][0], megas[longest][0] = megas[longest][0], megas[0][0]
        return iter([i for mega in megas for i in mega])
