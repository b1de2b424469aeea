"""Differentiable collectives over a ``torch.distributed`` process group, for the ops and
losses that couple the samples of a batch across processes (the synchronised BatchNorm,
the batch-coupled generator losses under data-parallel training).

:func:`all_gather_into` and :func:`all_reduce_sum` are thin wrappers over one collective
each; :func:`gather_batch` concatenates every process's batch, differentiably. The process
group itself is set up by :mod:`fastgan.distributed`, which sits above this module.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["all_gather_into", "all_reduce_sum", "gather_batch"]


def all_gather_into(gathered: torch.Tensor, tensor: torch.Tensor, group=None) -> None:
    """``gathered`` (K·n, *) ← every process's ``tensor`` (n, *) in rank order: one collective
    into a preallocated buffer (``all_gather_single``, formerly ``all_gather_into_tensor``:
    CUDA-graph capturable with NCCL, and gloo takes it in this concatenation form)."""
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    gather(gathered, tensor.contiguous(), group=group)


def all_reduce_sum(tensor: torch.Tensor, group=None) -> None:
    """``tensor`` ← its sum over the processes of ``group``, in place."""
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group)


class _AllReduceSum(torch.autograd.Function):
    """Σ over the processes of ``group``, differentiable: every process's output is the sum of
    every input, so the gradient of the summed losses is again the sum of the gradients."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, group):
        ctx.group = group
        total = tensor.contiguous().clone()
        all_reduce_sum(total, group)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _AllReduceSum.apply(grad, ctx.group), None


class _GatherBatch(torch.autograd.Function):
    """Every process's (n, *) tensor → the (K·n, *) concatenation in rank order, on every
    process. Backward: each process's loss depends on every slice, so the gradient of the
    summed losses for this process's slice is the sum over processes of their gradients for
    it: one (differentiable, so gradients of any order work) all-reduce, then this process's rows."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, group):
        ctx.group = group
        gathered = tensor.new_empty((dist.get_world_size(group) * tensor.shape[0],) + tuple(tensor.shape[1:]))
        all_gather_into(gathered, tensor, group)
        return gathered

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        rows = grad.shape[0] // dist.get_world_size(ctx.group)
        rank = dist.get_rank(ctx.group)
        return _AllReduceSum.apply(grad, ctx.group)[rank * rows:(rank + 1) * rows], None


def gather_batch(tensor: torch.Tensor, group=None) -> torch.Tensor:
    """(n, *) on each of K processes → (K·n, *) on all, differentiable (equal n everywhere).

    For losses that couple the samples of a batch (a logsumexp over it: Rényi, forward KL):
    computed on the gathered batch by every process, under DDP's gradient averaging they give
    exactly the gradient of one process's loss on the concatenated batch. The synchronised
    BatchNorm reference gathers its per-process statistics rows with it too."""
    return _GatherBatch.apply(tensor, group)
