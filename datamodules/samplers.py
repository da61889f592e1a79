"""Samplers: length-grouped order, and sharding across processes that Lightning leaves alone.

Under DDP, Lightning replaces a DataLoader's sampler with its own `DistributedSampler` (or wraps a custom one in a
shuffling `DistributedSamplerWrapper`) unless the sampler already is a `torch.utils.data.DistributedSampler`
(`lightning.pytorch.trainer.connectors.data_connector._requires_distributed_sampler`). Its replacement loses the
length grouping and, for evaluation, pads the last batch with repeated examples. The two samplers here are
`DistributedSampler` subclasses that shard themselves (rank and world size given by `LitBertDataModule`, from the
trainer), so Lightning keeps them:

- `DistributedTrainSampler`: one global order per epoch, a pure function of (seed, epoch) (a random permutation, or
  length-grouped), cut into global batches of `num_replicas * batch_size`; rank r takes the r-th slice of each, so
  W processes with batch B see at every step exactly the examples one process with batch W*B sees. Every rank gets
  the same number of batches, and that number is a multiple of `accumulate_grad_batches` (the tail of each epoch's
  order is dropped: no optimiser step is cut short at an epoch end).
- `DistributedEvalSampler`: every example exactly once, in order, rank r taking r, r + W, r + 2W, ...; no repeats
  (ranks may get one example more or less than the others).

`set_epoch(e)` (called by Lightning at each epoch start) gives the training sampler a new order.
"""
from __future__ import annotations

import warnings
from typing import Iterator, Sequence

import torch
from torch.utils.data import DistributedSampler, Sampler


def length_grouped_order(lengths: Sequence[int], mega_batch_size: int, generator: torch.Generator) -> list[int]:
    """A random permutation, sorted by decreasing length within consecutive "mega-batches" of `mega_batch_size`.

    The longest example overall is moved to position 0, so an out-of-memory error shows up at the first step
    (the trick of the Hugging Face Trainer's length-grouped sampler).
    """
    order = torch.randperm(len(lengths), generator=generator).tolist()
    megas = [order[i: i + mega_batch_size] for i in range(0, len(order), mega_batch_size)]
    megas = [sorted(mega, key=lambda i: -lengths[i]) for mega in megas]
    if megas:
        longest = max(range(len(megas)), key=lambda m: lengths[megas[m][0]])
        megas[0][0], megas[longest][0] = megas[longest][0], megas[0][0]
    return [i for mega in megas for i in mega]


class LengthGroupedSampler(Sampler[int]):
    """One process: random order, then within mega-batches of `batch_size * mega_batch_factor` sorted by length.

    Kept for direct use; the DataModules use `DistributedTrainSampler(lengths=...)`, which gives the same order for
    one process and keeps it under DDP. `set_epoch(e)` gives a new order each epoch.
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
        return iter(length_grouped_order(self.lengths, self.mega_batch_size, generator))


def _check_rank(num_replicas: int, rank: int) -> None:
    if num_replicas < 1 or not 0 <= rank < num_replicas:
        raise ValueError(f"rank {rank} is not in [0, num_replicas={num_replicas})")


class DistributedTrainSampler(DistributedSampler):
    """Training order for `num_replicas` processes, sharded by global batch; a `DistributedSampler` Lightning keeps.

    Epoch e's global order is a random permutation of the examples (generator seeded with `seed + e`), or with
    `lengths` given the length-grouped order of `length_grouped_order` (mega-batches of
    `num_replicas * batch_size * mega_batch_factor`). It is cut into global batches of G = `num_replicas *
    batch_size`; for each, rank r yields the r-th contiguous slice of `batch_size`. A final partial global batch of
    m < G examples is split evenly (m // num_replicas each; the last m % num_replicas examples are dropped), so every
    rank gets the same number of batches and no rank gets an empty one.

    Accumulation: Lightning steps the optimiser at the last batch of every epoch even when fewer than
    `accumulate_grad_batches` micro-batches were accumulated (a short step with the loss still divided by the full
    count). So the number of batches per rank per epoch is rounded DOWN to a multiple of `accumulate_grad_batches`:
    the last batches of each epoch's order are dropped. The order is reshuffled every epoch, so which examples are
    dropped changes from epoch to epoch. An epoch with fewer batches per rank than `accumulate_grad_batches` keeps
    them all, with a warning (its one optimiser step is short, there is no whole one to keep).

    Args:
        num_examples: size of the dataset.
        batch_size: per-process batch size.
        num_replicas / rank: world size and this process's global rank (1 / 0 for one process).
        seed: seed of the order (the DataModule's `seed`).
        lengths: per-example lengths for length grouping (None: a plain random permutation).
        mega_batch_factor: global batches per length-sorted mega-batch.
        accumulate_grad_batches: the Trainer's gradient accumulation (micro-batches per optimiser step).
    """

    def __init__(self, num_examples: int, batch_size: int, num_replicas: int = 1, rank: int = 0, seed: int = 0,
                 lengths: Sequence[int] | None = None, mega_batch_factor: int = 50, accumulate_grad_batches: int = 1):
        _check_rank(num_replicas, rank)
        if batch_size < 1 or accumulate_grad_batches < 1:
            raise ValueError(f"batch_size ({batch_size}) and accumulate_grad_batches ({accumulate_grad_batches}) "
                             f"must be at least 1")
        if lengths is not None and len(lengths) != num_examples:
            raise ValueError(f"{len(lengths)} lengths for {num_examples} examples")
        super().__init__(range(num_examples), num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed,
                         drop_last=True)
        self.num_examples = num_examples
        self.batch_size = batch_size
        self.lengths = None if lengths is None else [int(n) for n in lengths]
        self.mega_batch_size = num_replicas * batch_size * mega_batch_factor
        self.accumulate_grad_batches = accumulate_grad_batches
        self.batch_sizes = self._batch_sizes()  # this (and every) rank's batch sizes in an epoch
        self.num_batches = len(self.batch_sizes)
        self.num_samples = sum(self.batch_sizes)
        self.total_size = self.num_samples * num_replicas

    def _batch_sizes(self) -> list[int]:
        world, size = self.num_replicas, self.batch_size
        full, rest = divmod(self.num_examples, world * size)
        sizes = [size] * full + ([rest // world] if rest >= world else [])
        kept = len(sizes) - len(sizes) % self.accumulate_grad_batches
        if kept == 0:  # keep them all: dropping would leave an empty epoch (e.g. a smoke test of a big recipe)
            warnings.warn(
                f"{self.num_examples} training examples give {len(sizes)} batches of {size} per process "
                f"({world} process(es)), fewer than accumulate_grad_batches={self.accumulate_grad_batches}: every "
                f"epoch ends with a short optimiser step; lower accumulate_grad_batches or batch_size", stacklevel=3)
            return sizes
        return sizes[:kept]

    def dropped_per_epoch(self) -> int:
        """Examples left out of every epoch (accumulation remainder and the uneven part of a last global batch)."""
        return self.num_examples - self.total_size

    def global_order(self, epoch: int | None = None) -> list[int]:
        """Epoch `epoch`'s (default: the current one) order of all examples, the same on every rank."""
        generator = torch.Generator().manual_seed(self.seed + (self.epoch if epoch is None else epoch))
        if self.lengths is None:
            return torch.randperm(self.num_examples, generator=generator).tolist()
        return length_grouped_order(self.lengths, self.mega_batch_size, generator)

    def rank_batches(self, epoch: int | None = None) -> list[list[int]]:
        """This rank's batches (lists of example indices) in epoch `epoch` (default: the current one)."""
        order = self.global_order(epoch)
        batches, start = [], 0
        for size in self.batch_sizes:
            first = start + self.rank * size
            batches.append(order[first: first + size])
            start += size * self.num_replicas
        return batches

    def __iter__(self) -> Iterator[int]:
        return iter([i for batch in self.rank_batches() for i in batch])

    def __len__(self) -> int:
        return self.num_samples


class DistributedEvalSampler(DistributedSampler):
    """Evaluation order for `num_replicas` processes: rank r takes examples r, r + W, r + 2W, ... (W = num_replicas).

    Every example exactly once, nothing repeated (Lightning's own `DistributedSampler` pads with repeats), so ranks
    differ by at most one example, hence by at most one batch. The first k batches of all ranks together are the
    first k * W * batch_size examples, as for one process with batch W * batch_size (`limit_val_batches` keeps its
    meaning). A dataset smaller than the number of processes is an error (a rank without batches would skip the
    evaluation loop, and the others would wait for it at the end of the epoch).
    """

    def __init__(self, num_examples: int, num_replicas: int = 1, rank: int = 0):
        _check_rank(num_replicas, rank)
        if 0 < num_examples < num_replicas:
            raise ValueError(f"the evaluation set has {num_examples} example(s), fewer than the {num_replicas} "
                             f"processes: every process needs at least one")
        super().__init__(range(num_examples), num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        self.num_examples = num_examples
        self.num_samples = len(range(rank, num_examples, num_replicas))
        self.total_size = num_examples

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.num_examples, self.num_replicas))

    def __len__(self) -> int:
        return self.num_samples

