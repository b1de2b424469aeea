"""Shared benchmark setup: the device, the providers each op is timed on, and the figures
recorded beside each timing (``extra_info``; see bench/README.md and bench/report.py).

Providers: ``eager`` (the plain PyTorch a user writes today), ``compile`` (that code under
``torch.compile``, compiled before timing), and fastgan's ``torch``, ``triton`` and ``cuda``
backends. Unavailable ones skip with the reason.
"""

from __future__ import annotations

import os
import platform
import sys

import pytest
import torch

import fastgan
from fastgan import _backend

sys.path.insert(0, os.path.dirname(__file__))  # the benchmark files import benchutil

from fastgan._allocator import keep_freed_memory  # noqa: E402

# Freed blocks stay in the process's heap, as `fastgan train` keeps them (README, "The CPU
# allocator"): under glibc's defaults a block of 2 MiB and up is mapped and zeroed afresh
# whenever its moving mmap and trim thresholds say so, and the same 32x64x16x16 block call
# measured 0.22 ms in one run and 1.2 ms in the next (eager's 0.9-1.07 ms; 0.30-0.33 ms with
# the blocks kept). Both providers run under the same setting; FASTGAN_KEEP_FREED_MEMORY=0
# benches the C library's defaults. Recorded with every case (report.py's header).
ALLOCATOR = ("freed memory kept in the heap (glibc mmap/trim thresholds raised, as fastgan train does)"
             if keep_freed_memory() else "the C library's defaults")

from benchutil import (  # noqa: E402
    DEVICE,
    GPU,
    _host_us,
    _kernel_launches,
    _peak_memory,
    copy_bandwidth_gb_per_s,
    gpu_driver_version,
)


def _provider_params():
    params = [pytest.param("eager", id="eager"), pytest.param("compile", id="compile")]
    for name in ("torch", "triton", "cuda"):
        reason = "" if name == "torch" else _backend._why_not(name, DEVICE, torch.float32)
        if name == "triton" and not GPU:
            reason = "timing the Triton interpreter measures nothing"
        marks = [pytest.mark.skip(reason=f"fastgan {name}: {reason}")] if reason else []
        params.append(pytest.param(name, id=f"fastgan-{name}", marks=marks))
    return params


@pytest.fixture(params=_provider_params())
def provider(request):
    """'eager', 'compile', or a fastgan backend name."""
    return request.param


@pytest.fixture
def device():
    return DEVICE


@pytest.fixture
def synchronize():
    """Wait for the GPU so a timed call includes its kernels."""
    return torch.cuda.synchronize if GPU else (lambda: None)


@pytest.fixture
def measure(benchmark):
    """``measure(fn, unsynchronised=None, compulsory_bytes=None, group=None, **extra)``: time
    ``fn`` (which must synchronise itself; ``unsynchronised`` is the same call without the wait), then record GB/s against the compulsory bytes, % of the copy bandwidth,
    kernel launches, host time per call and peak memory in ``benchmark.extra_info``."""

    def run(fn, *, unsynchronised=None, compulsory_bytes=None, group=None, **extra):
        if group is not None:
            benchmark.group = group
        fn()  # warm-up: compilation, autotuning, allocator
        benchmark(fn)
        median = benchmark.stats.stats.median
        info = benchmark.extra_info
        info.update(extra)
        info["device"] = torch.cuda.get_device_name() if GPU else f"cpu ({platform.processor() or platform.machine()})"
        info["versions"] = {"torch": torch.__version__, "fastgan": fastgan.__version__}
        info["allocator"] = ALLOCATOR
        if GPU:
            info["versions"].update(cuda=torch.version.cuda, driver=gpu_driver_version())
        issue = unsynchronised or fn
        info["launches"] = _kernel_launches(issue)
        info["host_us"] = _host_us(issue)
        info["peak_memory_bytes"] = _peak_memory(issue)
        if compulsory_bytes:
            info["compulsory_bytes"] = int(compulsory_bytes)
            info["gb_per_s"] = compulsory_bytes / median / 1e9
            info["copy_gb_per_s"] = copy_bandwidth_gb_per_s()
            info["pct_of_copy"] = 100 * info["gb_per_s"] / info["copy_gb_per_s"]

    run.benchmark = benchmark
    return run
