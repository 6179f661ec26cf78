"""Two-tower training past one process: the same command, under torchrun, on N processes.

    torchrun --nproc-per-node 2 -m model_export --dataset movielens --data-dir ../shared/data/ml-100k --out bundles

Rank 0 runs the command as a single process would: it loads the data, trains the ranker, builds the index and is
the only one to write. Each time it trains the two-tower model it sends that job (the dataset, the training
interactions, the configuration) to the other ranks, which wait for jobs and do nothing else; then every rank trains
the same model under DistributedDataParallel, each on its share of every batch, and the in-batch negatives are
gathered from all ranks, so a step sees the batch a single process would. Training runs on the CPU, over gloo.
"""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Group:
    rank: int
    world_size: int

    @property
    def leader(self) -> bool:
        return self.rank == 0

    def share(self, job: Any) -> Any:
        """Rank 0's `job` on every rank (pickled and broadcast)."""
        box = [job if self.leader else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def broadcast_float(self, value: float) -> float:
        """Rank 0's `value` on every rank."""
        tensor = torch.tensor([value if self.leader else 0.0], dtype=torch.float64)
        dist.broadcast(tensor, src=0)
        return float(tensor.item())

    def shard(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous share of `batch`, cut to a multiple of the world size so that every share is the
        same size (the gathered negatives line up; at most world size - 1 examples of the epoch's last batch go)."""
        batch = batch[: len(batch) - len(batch) % self.world_size]
        return batch.tensor_split(self.world_size)[self.rank]


class _GatherRows(torch.autograd.Function):
    """Every rank's rows, in rank order; the gradient of each row is summed over the ranks (each rank's loss
    reaches every row) and returned to the rank that owns it."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        ctx.rows = len(tensor)
        return gather_ids(tensor)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        start = dist.get_rank() * ctx.rows
        return grad[start : start + ctx.rows]


def gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """(B, ...) on each rank -> (world size x B, ...) on every rank, differentiable (see `_GatherRows`)."""
    gathered: torch.Tensor = _GatherRows.apply(tensor)  # type: ignore[no-untyped-call]
    return gathered


def gather_ids(tensor: torch.Tensor) -> torch.Tensor:
    """(B, ...) on each rank -> (world size x B, ...) on every rank, not differentiable."""
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def data_parallel(module: nn.Module, sparse: list[torch.Tensor]) -> nn.Module:
    """`module` under DistributedDataParallel for its dense weights (rank 0's weights on every rank, gradients
    averaged as the backward pass goes). The `sparse` ones (id tables with sparse gradients) are left out of it:
    a 2-process ml-100k build whose id tables DDP reduced (gloo's sparse all-reduce) died of heap corruption
    ("malloc(): unaligned tcache chunk detected") in its second training; with them copied from rank 0 here and
    their gradients averaged by `average_sparse_gradients`, the same build ran through."""
    ignored = [name for name, p in module.named_parameters() if any(p is q for q in sparse)]
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, ignored)  # type: ignore[no-untyped-call]
    with torch.no_grad():
        for p in sparse:
            dist.broadcast(p.data, src=0)
    return DistributedDataParallel(module)


def average_sparse_gradients(params: list[torch.Tensor]) -> None:
    """Each parameter's sparse gradient averaged over the ranks, kept sparse: every rank's touched rows and their
    gradients gathered (padded to the largest count), duplicate rows summed. Costs the rows a step touched, not the
    table."""
    world = dist.get_world_size()
    for p in params:
        grad = (
            p.grad.coalesce()
            if p.grad is not None
            else torch.sparse_coo_tensor(
                torch.zeros((1, 0), dtype=torch.long), torch.zeros((0, *p.shape[1:]), dtype=p.dtype), p.shape
            )
        )
        rows, values = grad.indices()[0], grad.values()
        counts = gather_ids(torch.tensor([len(rows)]))
        most = int(counts.max())
        padded_rows = torch.zeros(most, dtype=rows.dtype)
        padded_rows[: len(rows)] = rows
        padded_values = values.new_zeros((most, *values.shape[1:]))
        padded_values[: len(rows)] = values
        all_rows = [torch.empty_like(padded_rows) for _ in range(world)]
        all_values = [torch.empty_like(padded_values) for _ in range(world)]
        dist.all_gather(all_rows, padded_rows)
        dist.all_gather(all_values, padded_values)
        keep = [slice(0, int(n)) for n in counts]
        p.grad = torch.sparse_coo_tensor(
            torch.cat([r[k] for r, k in zip(all_rows, keep, strict=True)]).unsqueeze(0),
            torch.cat([v[k] for v, k in zip(all_values, keep, strict=True)]) / world,
            p.shape,
            check_invariants=False,  # (rows of coalesced gradients of this very table: within its shape)
        ).coalesce()


_current: Group | None = None


def current() -> Group | None:
    """The process group this process trains in, or None when it trains alone."""
    return _current


@contextmanager
def launched() -> Iterator[Group | None]:
    """Under torchrun with more than one process (WORLD_SIZE > 1): join the group for the block and yield it, rank 0
    telling the other ranks to stop as the block ends; otherwise yield None. On an error rank 0 just leaves (it may
    be in the middle of a training step): the others' next collective fails on the closed connection, and torchrun
    stops them."""
    global _current
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        yield None
        return
    dist.init_process_group(backend="gloo")
    _current = Group(dist.get_rank(), dist.get_world_size())
    log.info("training in a group of %d processes: this is rank %d", _current.world_size, _current.rank)
    try:
        yield _current
        if _current.leader:
            _current.share(None)
        # Every rank here before any leaves, and the DDP wrappers left from training (reference cycles) freed
        # while the group still exists: a rank 1 that left first died of "terminate called without an active
        # exception" after an amazon-sports build had been written.
        gc.collect()
        dist.barrier()
    finally:
        _current = None
        dist.destroy_process_group()


def serve(group: Group, train: Callable[..., Any]) -> int:
    """A rank other than 0: train every job rank 0 shares, until it shares None. Returns the number of jobs."""
    jobs = 0
    while (job := group.share(None)) is not None:
        train(*job)
        jobs += 1
    log.info("rank %d: %d training jobs done", group.rank, jobs)
    return jobs
