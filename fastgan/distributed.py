"""Data-parallel training on ``torch.distributed``: process-group set-up from torchrun's
environment, and the per-rank random streams.

fastgan does not launch processes itself: ``torchrun --nproc_per_node=K -m fastgan train``
(or any launcher that sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``) starts K copies of the CLI, and :func:`init_from_environment` joins them
into one process group: NCCL on CUDA devices, gloo on the CPU. :class:`fastgan.Trainer`
then notices the initialised group and trains with ``DistributedDataParallel``.
"""

from __future__ import annotations

import datetime
import os
from typing import NamedTuple, Optional

import torch
import torch.distributed as dist

__all__ = ["ProcessInfo", "all_gather_into", "all_reduce_sum", "gather_batch", "init_from_environment",
           "launched_by_torchrun", "process_info", "resumed_stream_seed", "stream_seed"]

_LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class ProcessInfo(NamedTuple):
    """This process's place in the group (rank 0 of 1 without ``torch.distributed``)."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs, evaluates and writes checkpoints."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """Whether the launcher's variables say this process is one of several (WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def process_info(process_group=None) -> ProcessInfo:
    """Rank and world size in ``process_group`` (default: the global group) once initialised;
    otherwise rank 0 of 1. The local rank comes from ``LOCAL_RANK`` (0 when unset)."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_available() and dist.is_initialized():
        return ProcessInfo(dist.get_rank(process_group), dist.get_world_size(process_group), local_rank)
    return ProcessInfo(0, 1, local_rank)


def init_from_environment(device: Optional[str] = None, timeout_s: float = 600.0) -> tuple[ProcessInfo, torch.device]:
    """Join the process group described by torchrun's variables; returns (info, device).

    ``device``: ``"cuda"`` (each process takes GPU ``LOCAL_RANK``, backend NCCL), ``"cpu"``
    (backend gloo) or None (CUDA when available). Raises ``RuntimeError`` naming what is
    missing when the variables are incomplete or there are fewer GPUs than local ranks.
    """
    missing = [name for name in _LAUNCH_VARIABLES if name not in os.environ]
    if missing:
        raise RuntimeError(f"distributed launch: environment variables {', '.join(missing)} are not set "
                           "(start the processes with torchrun)")
    if not dist.is_available():
        raise RuntimeError("distributed launch: this PyTorch build has no torch.distributed")
    local_rank = int(os.environ["LOCAL_RANK"])
    use_cuda = torch.cuda.is_available() if device is None else torch.device(device).type == "cuda"
    if use_cuda:
        if not torch.cuda.is_available():
            raise RuntimeError("distributed launch: device cuda was requested but CUDA is not available")
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"distributed launch: LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} "
                               "GPU(s) are visible (--nproc_per_node must not exceed the GPUs per node)")
        chosen = torch.device("cuda", local_rank)
        torch.cuda.set_device(chosen)
    else:
        chosen = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(seconds=timeout_s),
                                **({"device_id": chosen} if use_cuda else {}))
    return process_info(), chosen


_MASK64 = 2**64 - 1


def _splitmix64(value: int) -> int:
    """SplitMix64's finaliser: every input bit changes about half of the output bits."""
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


def _mixed_seed(*values: int) -> int:
    state = 0
    for value in values:
        state = _splitmix64(state ^ (int(value) & _MASK64))
    return state % 2**63  # a valid seed for every torch.Generator


def stream_seed(seed: int, rank: int, stream: int) -> int:
    """The seed of random stream ``stream`` (0: noise, 1: data) of process ``rank``.

    Rank 0 gets ``seed + stream``, exactly the single-process streams, so a 1-process run is
    the plain run; the other ranks' seeds are hashes of (seed, rank, stream) with all 64 bits
    mixed (the CPU generator reads only the low 32 bits of a seed, so plain offsets such as
    rank·2^33 would give every process the same draws)."""
    if rank == 0:
        return int(seed) + int(stream)
    return _mixed_seed(seed, rank, stream)


def resumed_stream_seed(seed: int, rank: int, stream: int, step: int) -> int:
    """The seed a stream restarts from when a checkpoint's per-process random states do not
    fit this run (another world size): a hash of (seed, rank, stream, step), distinct from
    every :func:`stream_seed` in its low 32 bits as well."""
    return _mixed_seed(seed, rank, stream, step, 0x5EED)


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
