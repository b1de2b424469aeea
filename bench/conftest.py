"""Shared benchmark setup: the device, the sizes, and the providers each op is timed on."""

import pytest
import torch

from fastgan import _backend

GPU = torch.cuda.is_available()


def _provider_params():
    params = [pytest.param("eager", id="eager")]
    for name in ("torch", "triton", "cuda"):
        reason = "" if name == "torch" else _backend._why_not(name, torch.device("cuda" if GPU else "cpu"), torch.float32)
        if name == "triton" and not GPU:
            reason = "timing the Triton interpreter measures nothing"
        marks = [pytest.mark.skip(reason=f"fastgan {name}: {reason}")] if reason else []
        params.append(pytest.param(name, id=f"fastgan-{name}", marks=marks))
    return params


@pytest.fixture(params=_provider_params())
def provider(request):
    """'eager' (the plain PyTorch a user writes) or a fastgan backend; unavailable ones skip with the reason."""
    return request.param


@pytest.fixture
def device():
    return torch.device("cuda" if GPU else "cpu")


@pytest.fixture
def synchronize():
    """Wait for the GPU so a timed call includes its kernels."""
    return torch.cuda.synchronize if GPU else (lambda: None)
