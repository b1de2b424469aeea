"""Strided-indexing plans shared by the Triton and CUDA launchers.

Elementwise kernels address up to four coalesced dimensions with per-tensor strides, so
non-contiguous inputs and broadcast operands (``expand`` gives stride 0) are read in
place, without a ``.contiguous()`` copy. Dimensions of size 1 are dropped and adjacent
dimensions that every operand can merge are merged, so a contiguous tensor becomes a
single dimension of stride 1.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch

KERNEL_RANK = 4
INT32_MAX = 2**31 - 1
# Grid-stride loops may form indices up to (programs x block) past the end before masking.
INDEX_HEADROOM = 2**22


class StridedPlan(NamedTuple):
    """How a kernel walks ``numel`` elements laid out as ``sizes`` (outermost first).

    ``strides[k]`` holds operand k's four strides (in elements); ``contiguous`` is True
    when every operand is a dense row-major tensor of that shape (offset == linear index);
    ``needs_int64`` is True when a linear index or an offset can exceed int32.
    """

    numel: int
    sizes: tuple[int, int, int, int]
    strides: tuple[tuple[int, int, int, int], ...]
    contiguous: bool
    needs_int64: bool


def coalesce(shape: tuple[int, ...], strides: list[tuple[int, ...]]) -> tuple[list[int], list[list[int]]]:
    """Drop size-1 dimensions and merge neighbours that are contiguous for every operand."""
    sizes: list[int] = []
    merged: list[list[int]] = [[] for _ in strides]
    for d, size in enumerate(shape):
        if size == 1:
            continue
        if sizes and all(st[-1] == s[d] * size for st, s in zip(merged, strides)):
            sizes[-1] *= size
            for st, s in zip(merged, strides):
                st[-1] = s[d]
            continue
        sizes.append(size)
        for st, s in zip(merged, strides):
            st.append(s[d])
    return sizes, merged


def needs_int64(largest_offset: int) -> bool:
    """Whether indices up to ``largest_offset`` (plus the grid-stride overshoot) leave int32."""
    return largest_offset > INT32_MAX - INDEX_HEADROOM


@functools.lru_cache(maxsize=1024)
def _dense_plan(numel: int, operands: int) -> StridedPlan:
    strides = ((0, 0, 0, 1),) * operands
    return StridedPlan(numel, (1, 1, 1, numel), strides, True, needs_int64(numel))


@functools.lru_cache(maxsize=1024)
def _strided_plan(shape: tuple[int, ...], strides: tuple[tuple[int, ...], ...]) -> StridedPlan | None:
    numel = 1
    for size in shape:
        numel *= size
    sizes, merged = coalesce(shape, list(strides))
    if len(sizes) > KERNEL_RANK:
        return None
    pad = KERNEL_RANK - len(sizes)
    sizes4 = (1,) * pad + tuple(sizes)
    strides4 = tuple((0,) * pad + tuple(st) for st in merged)
    contiguous = not sizes or (len(sizes) == 1 and all(st[-1] == 1 for st in strides4))
    largest_offset = max([sum((n - 1) * s for n, s in zip(sizes4, st)) for st in strides4] + [numel])
    return StridedPlan(numel, sizes4, strides4, contiguous, needs_int64(largest_offset))


def plan(shape: torch.Size, operands: list[torch.Tensor]) -> StridedPlan | None:
    """Plan a walk over ``shape`` reading each operand (already expanded to ``shape``).

    Returns None when more than :data:`KERNEL_RANK` dimensions remain after coalescing;
    the caller then makes the operands contiguous. Plans are cached by shape and strides,
    since a training loop asks for the same few on every step.
    """
    if all(t.is_contiguous() for t in operands):
        return _dense_plan(operands[0].numel(), len(operands))
    return _strided_plan(tuple(shape), tuple(t.stride() for t in operands))
