"""Grid shapes for the elementwise and reduction kernels (shared by triton and cuda).

Reductions use a persistent grid-stride launch: ``num_programs`` programs each walk
``blocks_per_program`` blocks and leave one fp32 partial; with a single program the
kernel writes the final value itself, so the small batches GANs use (up to
``SINGLE_PROGRAM_MAX_BLOCKS * BLOCK`` logits) cost exactly one launch.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

BLOCK = 1024  # elements per program iteration
SINGLE_PROGRAM_MAX_BLOCKS = 16  # up to 16384 elements: one program, one launch
PROGRAMS_PER_SM = 4
MAX_PROGRAMS = 1024  # the finishing kernel sums at most this many partials in one block
INTERPRETER_PROGRAMS = 8  # CPU (Triton interpreter): enough to exercise the multi-program path


@dataclass(frozen=True)
class LaunchShape:
    num_programs: int
    blocks_per_program: int
    block: int = BLOCK

    @property
    def finish_block(self) -> int:
        """Power-of-two block for the kernel that sums ``num_programs`` partials."""
        return max(16, triton_next_power_of_2(self.num_programs))


def triton_next_power_of_2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


@functools.lru_cache(maxsize=None)
def _multiprocessors(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def program_budget(device: torch.device, blocks: int) -> int:
    """How many programs a reduction over ``blocks`` blocks uses on ``device``."""
    if blocks <= SINGLE_PROGRAM_MAX_BLOCKS:
        return 1
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        cap = PROGRAMS_PER_SM * _multiprocessors(index)
    else:
        cap = INTERPRETER_PROGRAMS
    return max(1, min(blocks, cap, MAX_PROGRAMS))


def output(like: torch.Tensor, shape, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Allocate a kernel output (uninitialised; every element is written by the kernel).

    The one allocation point of the kernel paths, so tests can poison it and check that.
    """
    return like.new_empty(shape, dtype=dtype if dtype is not None else like.dtype)


def output_like(like: torch.Tensor) -> torch.Tensor:
    """An uninitialised kernel output shaped and strided like ``like`` (memory format kept);
    the allocation seam for activation-sized outputs, as :func:`output` is for the rest."""
    return torch.empty_like(like)


def elementwise(numel: int) -> LaunchShape:
    """One program per block, no reduction."""
    return LaunchShape(num_programs=max(1, -(-numel // BLOCK)), blocks_per_program=1)


def reduction(numel: int, num_programs: int) -> LaunchShape:
    """``num_programs`` programs covering ``numel`` elements in grid-stride order."""
    blocks = -(-numel // BLOCK)
    return LaunchShape(num_programs=num_programs, blocks_per_program=-(-blocks // num_programs))
