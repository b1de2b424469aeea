"""Backend discovery and per-call backend selection.

fastgan has three implementations of every op:

* ``cuda``   -- the compiled extension ``fastgan._C`` (CUDA tensors), or with
  ``FASTGAN_CUDA_EMULATE=1`` the same CUDA sources built for the CPU by the host compiler
  (``fastgan._C_emulated``, CPU tensors; see :mod:`fastgan._emulation`);
* ``triton`` -- the Triton kernels in ``fastgan.kernels`` (CUDA tensors, or CPU
  tensors when ``TRITON_INTERPRET=1`` was set before ``triton`` was imported);
* ``torch``  -- the reference: plain differentiable PyTorch, any device, also float64.

The choice is made per call, never at import time, in this order:
explicit ``backend=`` argument > innermost :func:`use_backend` context >
``FASTGAN_BACKEND`` environment variable > ``auto``.
``auto`` picks ``cuda`` for CUDA tensors when the extension is built, else ``triton``
on CUDA, else ``torch``; when it has to fall back on a CUDA tensor it says why once,
through :mod:`warnings`. An explicitly requested backend that cannot run raises
:class:`BackendUnavailableError`.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import warnings
from dataclasses import dataclass
from typing import Iterator

import torch

from fastgan import _emulation, _environment

BACKENDS = ("cuda", "triton", "torch")
_CHOICES = BACKENDS + ("auto",)
# dtypes the cuda and triton kernels are written for; float64 runs on the torch backend.
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MIN_TRITON = (3, 6)

_context_stack: list[str] = []
_warned: set[str] = set()


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend cannot run this call (the message says why)."""


@dataclass(frozen=True)
class BackendStatus:
    """Whether a backend can run on this machine; ``reason`` says why not (empty when it can)."""

    name: str
    available: bool
    reason: str = ""


def _validate_name(name: str, argument: str) -> str:
    if not isinstance(name, str) or name.lower() not in _CHOICES:
        raise ValueError(f"{argument} must be one of {', '.join(_CHOICES)}; got {name!r}")
    return name.lower()


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Run the ops inside the ``with`` block on backend ``name`` (``"cuda"``, ``"triton"``,
    ``"torch"`` or ``"auto"``) unless a call passes ``backend=`` itself."""
    _context_stack.append(_validate_name(name, "use_backend(name)"))
    try:
        yield
    finally:
        _context_stack.pop()


def emulating() -> bool:
    """True when ``FASTGAN_CUDA_EMULATE=1``: the cuda backend runs on CPU tensors, emulated."""
    return _emulation.flag_set(_environment.get(_emulation.ENV_FLAG))


@functools.lru_cache(maxsize=None)
def _compiled_extension_status():
    try:
        module = importlib.import_module("fastgan._C")
    except ImportError as error:
        return None, (
            "the CUDA extension fastgan._C is not built "
            f"({error}); reinstall with FASTGAN_BUILD_CUDA=1 and a CUDA toolkit"
        )
    return module, ""


@functools.lru_cache(maxsize=None)
def _emulated_extension_status():
    try:
        return _emulation.load(), ""
    except (_emulation.EmulationError, ImportError, OSError) as error:
        return None, f"FASTGAN_CUDA_EMULATE=1 but the emulated CUDA build is unavailable: {error}"


def _extension_status():
    """(module or None, reason) for the extension the cuda backend uses; loaded on first use only."""
    return _emulated_extension_status() if emulating() else _compiled_extension_status()


def extension():
    """The extension the cuda backend launches through: ``fastgan._C``, or ``fastgan._C_emulated``
    under ``FASTGAN_CUDA_EMULATE=1``; raises :class:`BackendUnavailableError` if absent."""
    module, reason = _extension_status()
    if module is None:
        raise BackendUnavailableError(reason)
    return module


def triton_interpreting() -> bool:
    """True when Triton kernels run on the CPU through Triton's interpreter."""
    return _environment.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.lru_cache(maxsize=None)
def _triton_status():
    try:
        triton = importlib.import_module("triton")
    except ImportError as error:
        return None, f"triton is not installed ({error}); pip install 'triton>={MIN_TRITON[0]}.{MIN_TRITON[1]}'"
    try:
        version = tuple(int(part) for part in triton.__version__.split(".")[:2])
    except ValueError:
        version = MIN_TRITON
    if version < MIN_TRITON:
        return None, f"triton {triton.__version__} is older than the {MIN_TRITON[0]}.{MIN_TRITON[1]} fastgan needs"
    return triton, ""


def _why_not(name: str, device: torch.device, dtype: torch.dtype) -> str:
    """Empty string when backend ``name`` can run on tensors of this device and dtype, else the reason."""
    if name == "torch":
        return ""
    if dtype not in KERNEL_DTYPES:
        return f"the {name} kernels support float32, float16 and bfloat16, not {dtype}"
    if name == "cuda":
        if emulating():
            if device.type != "cpu":
                return f"FASTGAN_CUDA_EMULATE=1 runs the cuda backend on CPU tensors; got a tensor on {device}"
            return _extension_status()[1]
        missing = _extension_status()[1]
        if missing:
            return missing
        if device.type != "cuda":
            return (f"the cuda backend needs CUDA tensors; got a tensor on {device} "
                    "(FASTGAN_CUDA_EMULATE=1 runs it on CPU tensors)")
        return ""
    # triton
    reason = _triton_status()[1]
    if reason:
        return reason
    if device.type == "cuda" or (device.type == "cpu" and triton_interpreting()):
        return ""
    if device.type == "cpu":
        return "the triton backend needs CUDA tensors (or TRITON_INTERPRET=1 for CPU tensors)"
    return f"the triton backend does not run on {device}"


def warn_once(key: str, message: str) -> None:
    """Emit ``message`` as a UserWarning the first time ``key`` is seen in this process."""
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, UserWarning, stacklevel=4)


def requested_backend(backend: str | None) -> str:
    """The backend name asked for: argument > use_backend context > FASTGAN_BACKEND > 'auto'."""
    if backend is not None:
        return _validate_name(backend, "backend")
    if _context_stack:
        return _context_stack[-1]
    env = _environment.get("FASTGAN_BACKEND")
    if env:
        return _validate_name(env, "FASTGAN_BACKEND")
    return "auto"


def _constant_under_compile(fn):
    """Mark ``fn`` as having a constant result under torch.compile: what
    ``torch.compiler.assume_constant_result`` does, without importing ``torch._dynamo`` (about
    a second, and an import of triton) when fastgan is imported. tests/test_bce.py's
    torch.compile(fullgraph=True) test fails if a torch release changes the mark."""
    fn._dynamo_marked_constant = True
    return fn


@_constant_under_compile
def select_backend(op: str, backend: str | None, device: torch.device, dtype: torch.dtype) -> str:
    """Resolve which backend runs ``op`` on tensors of ``device``/``dtype``.

    Raises :class:`BackendUnavailableError` when a backend named explicitly cannot run.
    Under ``torch.compile`` it runs once at trace time and the choice is a constant of the graph.
    """
    name = requested_backend(backend)
    if name != "auto":
        reason = _why_not(name, device, dtype)
        if reason:
            raise BackendUnavailableError(f"fastgan.ops.{op}: backend {name!r} cannot run: {reason}")
        return name
    if device.type != "cuda":
        return "torch"
    cuda_reason = _why_not("cuda", device, dtype)
    if not cuda_reason:
        return "cuda"
    triton_reason = _why_not("triton", device, dtype)
    fallback = "torch" if triton_reason else "triton"
    reasons = f"cuda: {cuda_reason}" + (f"; triton: {triton_reason}" if triton_reason else "")
    warn_once(f"{op}:{reasons}", f"fastgan.ops.{op}: using the {fallback} backend ({reasons})")
    return fallback


def backends() -> dict[str, BackendStatus]:
    """What can run on this machine, and why not.

    Returns:
        ``{"cuda": BackendStatus, "triton": BackendStatus, "torch": BackendStatus}``; a
        backend is available when it can run the ops on this machine's tensors (CUDA tensors,
        or CPU tensors for triton under ``TRITON_INTERPRET=1`` and for cuda under
        ``FASTGAN_CUDA_EMULATE=1``).
    """
    gpu_visible = torch.cuda.is_available()
    if emulating():
        cuda_reason = _extension_status()[1]
    else:
        cuda_reason = _extension_status()[1] or ("" if gpu_visible else "no CUDA device is visible to torch")
    triton_reason = _triton_status()[1]
    if not triton_reason and not gpu_visible and not triton_interpreting():
        triton_reason = "no CUDA device is visible to torch (TRITON_INTERPRET=1 runs it on the CPU)"
    return {
        "cuda": BackendStatus("cuda", not cuda_reason, cuda_reason),
        "triton": BackendStatus("triton", not triton_reason, triton_reason),
        "torch": BackendStatus("torch", True),
    }
