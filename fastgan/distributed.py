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

# The differentiable collectives live beside the ops that use them; re-exported for earlier imports.
from fastgan.ops.collectives import all_gather_into, all_reduce_sum, gather_batch

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
