"""Losses and evaluation figures that stay exact under data parallelism (DDP).

`global_token_means` (training, below); `true_on_any_rank` (epoch-end branches that lead to collectives);
`log_epoch_means` (evaluation means over ranks with unequal numbers of examples); `gather_rows` (a table whose rows
the ranks computed in shares, e.g. the cached teacher logits of task distillation).

A loss averaged over the tokens of the LOCAL batch (the MLM cross-entropy over masked tokens, the distillation KL over
positions, the cosine loss over non-padded tokens) is not the same objective on W processes: DDP averages the ranks'
gradients, so rank r's tokens weigh 1 / (W * n_r) instead of 1 / N, where N = n_1 + ... + n_W. `global_token_means`
rescales each local mean m_r = s_r / n_r to m_r * W * n_r / N = W * s_r / N (the token counts are summed across
processes with one all-reduce), so that

- the gradient DDP averages is the gradient of s / N, the mean over every token of the global batch, as one process
  with the whole batch would compute it, and
- the mean of the ranks' rescaled values (what `self.log(..., sync_dist=True)` reports) is the global token mean.

With one process it returns the losses untouched (bit-identical). Call it in `training_step` only, where every rank
runs the same number of steps (`datamodules.samplers.DistributedTrainSampler`): it is a collective, and evaluation
shards may give ranks different numbers of batches.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torchmetrics import MeanMetric


def world_size(module) -> int:
    """Processes of the attached Trainer; 1 without one."""
    trainer = getattr(module, "_trainer", None)
    return 1 if trainer is None else int(trainer.world_size)


def global_token_means(module, means: Sequence[torch.Tensor], counts: Sequence[int | torch.Tensor]
                       ) -> list[torch.Tensor]:
    """`means[i]` (a mean over `counts[i]` local items) rescaled to this rank's share of the global mean (see above).

    One all-reduce (`trainer.strategy.reduce`, sum) for all the counts; a term with no item anywhere stays 0.
    """
    if len(means) != len(counts):
        raise ValueError(f"{len(means)} means but {len(counts)} counts")
    world = world_size(module)
    if world == 1:
        return list(means)
    device = means[0].device
    local = torch.stack([torch.as_tensor(c, device=device).detach().to(torch.float32).reshape(()) for c in counts])
    total = module.trainer.strategy.reduce(local.clone(), reduce_op="sum")
    scales = (world * local / total.clamp(min=1)).to(means[0].dtype)
    return [mean * scale for mean, scale in zip(means, scales)]


def global_token_mean(module, mean: torch.Tensor, count: int | torch.Tensor) -> torch.Tensor:
    """`global_token_means` for a single term."""
    return global_token_means(module, [mean], [count])[0]


def true_on_any_rank(module, flag: bool) -> bool:
    """Whether `flag` holds on at least one process (one all-reduce under DDP; `flag` itself for one process).

    For decisions that lead to collectives (a torchmetrics `compute` syncs its states): every rank must take the
    same branch, even one whose shard gave the metric no update.
    """
    if world_size(module) == 1:
        return bool(flag)
    votes = torch.tensor(float(bool(flag)), device=module.device)
    return bool(module.trainer.strategy.reduce(votes, reduce_op="sum") > 0)


def log_epoch_means(module, means: Mapping[str, MeanMetric], **log_kwargs) -> None:
    """Log each `MeanMetric`'s value over the epoch (`module.log(key, value)`), then reset them all.

    The metrics' states (weighted sum, total weight) are summed across processes at `compute`, so the figure is exact
    when ranks saw different numbers of examples. (Lightning's own epoch mean of `self.log(..., sync_dist=True)` is
    not: it averages the ranks' batch-size totals in an integer tensor, e.g. 6 and 5 examples -> 5, so a 2-rank mean
    over 11 examples came out 11/10 of the true one.) Nothing is logged when no rank updated any of them; the
    decision is taken by all ranks together, since `compute` is a collective.
    """
    if true_on_any_rank(module, any(metric.update_count for metric in means.values())):
        for key, metric in means.items():
            module.log(key, metric.compute(), **log_kwargs)
    for metric in means.values():
        metric.reset()


def gather_rows(module, rows: torch.Tensor, values: torch.Tensor, num_rows: int) -> torch.Tensor:
    """The [num_rows, ...] table of which this rank computed rows `rows` ([n_r] row numbers, `values` [n_r, ...]),
    whole on every rank: one all-gather of the values and one of the row numbers (each rank's share padded to the
    largest with row -1). A row that no rank computed, or a row number out of range, is an error.
    """
    world = world_size(module)
    if world > 1:
        size = int(module.trainer.strategy.reduce(torch.tensor(len(rows), device=values.device), reduce_op="max"))
        pad = size - len(rows)
        rows = torch.cat([rows, rows.new_full((pad,), -1)])
        values = torch.cat([values, values.new_zeros((pad, *values.shape[1:]))])
        rows = module.trainer.strategy.all_gather(rows).reshape(-1)
        values = module.trainer.strategy.all_gather(values).reshape(-1, *values.shape[1:])
        kept = rows >= 0
        rows, values = rows[kept], values[kept]
    if len(rows) and (int(rows.min()) < 0 or int(rows.max()) >= num_rows):
        raise ValueError(f"row numbers out of range [0, {num_rows}): {int(rows.min())} .. {int(rows.max())}")
    table = values.new_zeros((num_rows, *values.shape[1:]))
    table[rows] = values
    filled = torch.zeros(num_rows, dtype=torch.bool, device=rows.device)
    filled[rows] = True
    if not bool(filled.all()):
        raise ValueError(f"{int((~filled).sum())} of {num_rows} rows were computed by no process")
    return table
