"""ResumableDataLoader: the training DataLoader whose position Lightning stores in every checkpoint.

torchdata's `StatefulDataLoader` (a drop-in `DataLoader` with `state_dict` / `load_state_dict`; Lightning saves the
state of such loaders in the checkpoint and restores it on `--ckpt_path`) resumes a map-style split in the middle of
an epoch (it fast-forwards the sampler, whose order is a pure function of (seed, epoch)) and a streamed corpus at
the reader's saved position (`datamodules/streaming.py`). What Lightning does not do is account for its own
prefetching: for a loader without a length (a streamed corpus) its fetcher holds one batch ahead to know the last
one, so when it saves a checkpoint after step k the loader's own state says "k + 1 batches handed out" and a resumed
run would skip batch k + 1 (a loader with a length is not prefetched). This loader reports the state after the
batches the training steps have consumed instead.

Lightning also applies a saved loader state only when the loader is made after the checkpoint's loop state is
restored, which is too late when `configure_optimizers` asks for `trainer.estimated_stepping_batches` (warmup by
ratio: the loader is made first, and the state is then never applied). The DataModules therefore carry the loader
position themselves (`LitBertDataModule.state_dict`, restored before any loader is made), one state per rank.
"""
from __future__ import annotations

import warnings
from collections import deque

from torch.utils.data import IterableDataset
from torchdata.stateful_dataloader import StatefulDataLoader

# torchdata 0.11 calls a torch API that newer torch marks deprecated, on every iterator: not ours to act on.
warnings.filterwarnings("ignore", message="'set_vital' is deprecated", category=UserWarning)

LIGHTNING_PREFETCH = 1  # batches Lightning's training fetcher holds ahead of the step for a loader without a length


class ResumableDataLoader(StatefulDataLoader):
    """A `StatefulDataLoader` whose `state_dict()` is the state after the batches Lightning's training steps have
    consumed: all handed out for a map-style dataset, all but the last LIGHTNING_PREFETCH for an iterable one (all
    of them once its pass is exhausted)."""

    def __iter__(self):
        iterator = super().__iter__()
        if not isinstance(self.dataset, IterableDataset):  # not prefetched: the loader's own state is the right one
            self._consumed = None
            return iterator
        self._consumed = deque([super().state_dict()], maxlen=LIGHTNING_PREFETCH + 1)
        return self._track(iterator)

    def _track(self, iterator):
        for batch in iterator:
            self._consumed.append(super().state_dict())
            yield batch
        self._consumed.append(super().state_dict())  # exhausted: every batch handed out gets consumed

    def state_dict(self):
        consumed = getattr(self, "_consumed", None)
        return consumed[0] if consumed else super().state_dict()
