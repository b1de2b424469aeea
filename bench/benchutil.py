"""Helpers shared by the benchmark files (importable as ``benchutil``: bench/conftest.py puts
this folder on sys.path)."""

from __future__ import annotations

import functools
import time

import pytest
import torch

GPU = torch.cuda.is_available()
DEVICE = torch.device("cuda" if GPU else "cpu")
DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.bfloat16, id="bf16")]


def implementation(provider: str, eager, fastgan_call):
    """The callable a provider times: ``eager`` itself, ``torch.compile(eager)``, or
    ``fastgan_call(backend)``."""
    if provider == "eager":
        return eager
    if provider == "compile":
        return torch.compile(eager)
    return fastgan_call(provider)


@functools.lru_cache(maxsize=None)
def copy_bandwidth_gb_per_s() -> float:
    """The device's copy bandwidth (read + write bytes per second), measured once per run."""
    numel = (256 if GPU else 32) * 2**20 // 4
    src = torch.empty(numel, device=DEVICE)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    if GPU:
        torch.cuda.synchronize()
    best = float("inf")
    for _ in range(10):
        start = time.perf_counter()
        dst.copy_(src)
        if GPU:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * numel * 4 / best / 1e9


def _kernel_launches(fn) -> int | None:
    """CUDA kernels one call launches (torch.profiler), or None on the CPU."""
    if not GPU:
        return None
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sum(1 for event in prof.events() if event.device_type == torch.autograd.DeviceType.CUDA)


def _host_us(fn, calls: int = 50) -> float:
    """Wall time per call of issuing ``fn`` without waiting for the device (host overhead)."""
    fn()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    elapsed = time.perf_counter() - start
    if GPU:
        torch.cuda.synchronize()
    return elapsed / calls * 1e6


def _peak_memory(fn) -> int | None:
    if not GPU:
        return None
    torch.cuda.synchronize()
    baseline = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - baseline


class Rotating:
    """Cycles through ``count`` copies of some inputs so bandwidth-sized cases do not time
    data already sitting in L2."""

    def __init__(self, make, count: int):
        self.items = [make() for _ in range(count)]
        self.index = 0

    def next(self):
        item = self.items[self.index]
        self.index = (self.index + 1) % len(self.items)
        return item


@functools.lru_cache(maxsize=None)
def gpu_driver_version() -> str | None:
    """The NVIDIA driver version (nvidia-smi), or None when it cannot be read."""
    import subprocess

    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
