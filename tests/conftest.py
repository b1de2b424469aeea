"""Shared test setup.

Without a GPU, Triton kernels run on the CPU through Triton's interpreter (it must be
switched on before ``triton`` is first imported, so it is set here, at collection time), and
the cuda backend runs the same CUDA sources built for the CPU (``FASTGAN_CUDA_EMULATE=1``):
the op tests of both kernel backends run everywhere.
"""

import os
import sys
import zlib

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
    os.environ.setdefault("FASTGAN_CUDA_EMULATE", "1")

import pytest  # noqa: E402

# Test helpers (distributed_harness) import by name here and in the processes it spawns.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from fastgan import _backend  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def backend_skip_reason(name: str) -> str:
    """Why backend ``name`` cannot run the tests on this machine ('' when it can)."""
    if name == "cuda" and not torch.cuda.is_available() and not _backend.emulating():
        return "the cuda backend needs a CUDA GPU (or FASTGAN_CUDA_EMULATE=1); none is visible"
    return _backend._why_not(name, DEVICE, torch.float32)


def _backend_params(names):
    params = []
    for name in names:
        reason = backend_skip_reason(name)
        marks = [pytest.mark.skip(reason=f"{name} backend unavailable: {reason}")] if reason else []
        if name == "cuda":
            marks.append(pytest.mark.cuda)
        params.append(pytest.param(name, marks=marks, id=name))
    return params


ALL_BACKENDS = _backend_params(["torch", "triton", "cuda"])
KERNEL_BACKENDS = _backend_params(["triton", "cuda"])


@pytest.fixture(params=ALL_BACKENDS)
def backend(request):
    """Every backend; unavailable ones are skipped with the reason."""
    return request.param


@pytest.fixture(params=KERNEL_BACKENDS)
def kernel_backend(request):
    """The kernel backends (triton, cuda); unavailable ones are skipped with the reason."""
    return request.param


@pytest.fixture
def device():
    return DEVICE


@pytest.fixture(autouse=True)
def _fresh_seed(request):
    """A different seed per test, stable across runs (so a failure reproduces); set
    FASTGAN_TEST_SEED to draw a fresh set of inputs for the whole suite."""
    seed = (zlib.crc32(request.node.nodeid.encode()) + int(os.environ.get("FASTGAN_TEST_SEED", "0"))) % (2**31)
    torch.manual_seed(seed)
    return seed


def _capture_cuda_graph(step, warmup: int = 3):
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = step()
    return graph, outputs


@pytest.fixture
def capture_cuda_graph():
    """``capture_cuda_graph(step)``: capture ``step`` in a CUDA graph the documented way
    (warm-up on a side stream, then capture); returns ``(graph, static outputs)``."""
    return _capture_cuda_graph
