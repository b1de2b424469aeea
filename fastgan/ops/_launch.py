"""Grid shapes for the elementwise and reduction kernels (shared by triton and cuda).

Reductions use a persistent grid-stride launch: ``num_programs`` programs each walk
``blocks_per_program`` blocks and leave one fp32 partial; with a single program the
kernel writes the final value itself, so the small batches GANs use (up to
``SINGLE_PROGRAM_MAX_BLOCKS * BLOCK`` logits) cost exactly one launch.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from dataclasses import dataclass

import torch
import torch.utils._pytree
import torch.utils._python_dispatch

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

    With :func:`output_like`, the allocation seams of the kernel paths: a test that poisons
    outputs to check every element is written patches both.
    """
    if dtype is None or dtype == like.dtype:
        # Sizes as separate ints parse faster than a tuple (0.7 µs against 1.0-1.4 µs a call;
        # host time is the cost at 64-1024 logits).
        return like.new_empty(*shape) if shape else like.new_empty(())
    return like.new_empty(shape, dtype=dtype)


def output_like(like: torch.Tensor) -> torch.Tensor:
    """An uninitialised kernel output shaped and strided like ``like`` (memory format kept):
    activation-sized outputs, and reduced losses allocated like a :func:`loss_template`."""
    return torch.empty_like(like)


def loss_template(device: torch.device, dtype: torch.dtype) -> torch.Tensor | None:
    """A 0-d tensor a cached eager call plan keeps, so that each call allocates its reduced
    loss as ``output_like(template)``: 0.6 µs where ``new_empty(())`` takes 0.9 (host time at
    64-1024 logits). None during CUDA graph capture, where the template would stay behind in
    the graph's private memory pool: the plan then allocates with :func:`output`.

    Plans made by the ``torch.library`` ops (``torch.compile``) take no template: there
    CUDA-graph trees account for every allocation in their pool."""
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return None
    return torch.empty((), dtype=dtype, device=device)


def elementwise(numel: int) -> LaunchShape:
    """One program per block, no reduction."""
    return LaunchShape(num_programs=max(1, -(-numel // BLOCK)), blocks_per_program=1)


def reduction(numel: int, num_programs: int) -> LaunchShape:
    """``num_programs`` programs covering ``numel`` elements in grid-stride order."""
    blocks = -(-numel // BLOCK)
    return LaunchShape(num_programs=num_programs, blocks_per_program=-(-blocks // num_programs))


# --------------------------------------------------------------------------------------
# Counting launches on any machine (tests and bench/kernel_report.py)
# --------------------------------------------------------------------------------------

# ATen operators that only allocate or relabel memory: no kernel runs for them.
_NO_KERNEL_OPS = frozenset({
    "aten::empty", "aten::empty_like", "aten::empty_strided", "aten::new_empty", "aten::new_empty_strided",
    "aten::lift_fresh", "aten::promote_types", "aten::detach", "aten::alias", "aten::_local_scalar_dense", "aten::set_",
    "aten::resize_", "aten::sym_size", "aten::sym_stride", "aten::sym_numel", "aten::sym_storage_offset",
})


@dataclass
class LaunchCount:
    """Kernel launches seen inside :func:`count_launches`, by kind.

    ``triton``: launches of Triton kernels (``kernel[grid](...)``, interpreted or compiled);
    ``cuda``: launches of fastgan's CUDA kernels, counted under CUDA emulation
    (``FASTGAN_CUDA_EMULATE=1``; on a GPU use ``torch.profiler``, as bench/ does);
    ``torch``: ATen operators that run a kernel (views and allocations excluded), e.g. the
    multiply of an autograd backward; ``torch_bytes``: the bytes of their tensor arguments
    and results; ``names``: every launch, ``"triton:<kernel>"`` and ``"torch:<operator>"`` in
    order, then ``"cuda:kernel"`` once per emulated CUDA launch (the emulation counts, it does
    not name).
    """

    triton: int = 0
    cuda: int = 0
    torch: int = 0
    names: list = None
    torch_bytes: int = 0  # bytes of the tensors the counted ATen operators read and write

    def __post_init__(self):
        self.names = [] if self.names is None else self.names

    @property
    def total(self) -> int:
        return self.triton + self.cuda + self.torch


class _CountingMode(torch.utils._python_dispatch.TorchDispatchMode):
    def __init__(self, count: LaunchCount):
        super().__init__()
        self.count = count

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        result = func(*args, **(kwargs or {}))
        if not name.startswith("aten::"):
            # A custom operator: not a kernel itself. Its implementation runs below this mode,
            # so only its Triton and CUDA launches are counted: layout copies and the like
            # belong outside fastgan's custom operators to be counted.
            return result
        if not func.is_view and name not in _NO_KERNEL_OPS:
            self.count.torch += 1
            self.count.names.append(f"torch:{name.removeprefix('aten::')}")
            leaves = torch.utils._pytree.tree_leaves((args, kwargs, result))
            self.count.torch_bytes += sum(t.numel() * t.element_size() for t in leaves if isinstance(t, torch.Tensor))
        return result


def _triton_kernel_classes() -> list:
    """The classes whose ``run`` launches a Triton kernel (compiled and interpreted)."""
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    return [JITFunction, InterpretedFunction]


@contextlib.contextmanager
def count_launches():
    """Count the kernel launches of the code inside the block (on any device, and under the
    Triton interpreter): yields a :class:`LaunchCount` filled in as the block runs. Work the
    interpreter does on the host to run a Triton kernel is not counted as torch launches."""
    count = LaunchCount()
    mode = _CountingMode(count)
    patched = []
    try:
        classes = _triton_kernel_classes()
    except ImportError:  # no triton: only torch launches can happen
        classes = []
    for cls in classes:
        original = cls.run

        def run(self, *args, _original=original, **kwargs):
            if not kwargs.get("warmup", False):
                count.triton += 1
                count.names.append(f"triton:{getattr(self, 'fn', self).__name__}")
            with torch.utils._python_dispatch._disable_current_modes():
                return _original(self, *args, **kwargs)

        cls.run = run
        patched.append((cls, original))
    emulated_before = _emulated_launches()
    try:
        with mode:
            yield count
    finally:
        for cls, original in patched:
            cls.run = original
        count.cuda = _emulated_launches() - emulated_before
        count.names.extend(["cuda:kernel"] * count.cuda)


def _emulated_launches() -> int:
    """Launches the emulated CUDA extension has made in this process (0 before it is loaded,
    which is also where its own count starts)."""
    if "fastgan._C_emulated" not in sys.modules:
        return 0
    from fastgan import _emulation

    return _emulation.launch_count()
