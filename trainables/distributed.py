"""Data parallelism over ``torch.distributed`` (gloo on CPU, NCCL on GPU), for Ray Train workers.

Every worker draws the same global batch (same seed); each runs the model step on its own shard
of it and the gradients are summed across workers, so one step equals the single-worker step on
the whole batch (exactly, up to float summation order, when no batch-norm statistics are taken
over the batch). The OT weight step, which couples the batch through the transport plan, runs on
the whole batch on every worker and rank 0's result is broadcast so replicas never drift.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["DataParallel"]


@dataclass(frozen=True)
class DataParallel:
    rank: int
    world: int

    @classmethod
    def from_process_group(cls) -> DataParallel:
        import torch.distributed as dist

        return cls(dist.get_rank(), dist.get_world_size())

    def shard(self, n: int, device: torch.device | None = None) -> Tensor:
        """This worker's positions in a batch of ``n``: rank, rank + world, ..."""
        return torch.arange(self.rank, n, self.world, device=device)

    def sum_grads_(self, params: Iterable[Tensor]) -> None:
        """Each parameter's ``.grad`` summed over the workers, in place."""
        params = list(params)
        for p in params:  # every rank must contribute the same tensors, in the same order
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        self.sum_([p.grad for p in params])

    def sum_(self, tensors: Iterable[Tensor]) -> None:
        """Each tensor summed over the workers, in place (one all-reduce for all of them)."""
        import torch.distributed as dist

        tensors = list(tensors)
        if not tensors:
            return
        flat = torch.cat([t.reshape(-1) for t in tensors])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for t in tensors:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()

    def broadcast_(self, tensors: Iterable[Tensor]) -> None:
        import torch.distributed as dist

        for t in tensors:
            dist.broadcast(t.data, src=0)

    def sum(self, value: Tensor) -> Tensor:
        import torch.distributed as dist

        out = value.detach().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    def gather_counts(self, count: int) -> list[int]:
        import torch.distributed as dist

        t = torch.zeros(self.world, dtype=torch.long)
        t[self.rank] = count
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.tolist()
