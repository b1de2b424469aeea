"""Backend selection: explicit argument > use_backend > FASTGAN_BACKEND > auto; clear errors."""

import json
import os
import shutil
import subprocess
import sys
import warnings

import pytest
import torch

import fastgan
from fastgan import _backend

CPU = torch.device("cpu")
CUDA = torch.device("cuda")


@pytest.fixture
def no_extension(monkeypatch):
    """Pretend the CUDA extension was not built, whatever this machine has."""
    monkeypatch.setattr(_backend, "_extension_status", lambda: (None, "not built (simulated by the test)"))


@pytest.fixture
def clean_env(monkeypatch):
    monkeypatch.delenv("FASTGAN_BACKEND", raising=False)
    monkeypatch.delenv("FASTGAN_CUDA_EMULATE", raising=False)
    monkeypatch.setattr(_backend, "_warned", set())


def test_precedence_argument_context_env_auto(clean_env, monkeypatch):
    assert _backend.requested_backend(None) == "auto"
    monkeypatch.setenv("FASTGAN_BACKEND", "torch")
    assert _backend.requested_backend(None) == "torch"
    with fastgan.use_backend("triton"):
        assert _backend.requested_backend(None) == "triton"
        with fastgan.use_backend("AUTO"):
            assert _backend.requested_backend(None) == "auto"
        assert _backend.requested_backend(None) == "triton"
        assert _backend.requested_backend("cuda") == "cuda"
    assert _backend.requested_backend(None) == "torch"


def test_bad_names_are_errors_naming_the_source(clean_env, monkeypatch):
    with pytest.raises(ValueError, match="backend must be one of"):
        _backend.requested_backend("fastest")
    with pytest.raises(ValueError, match=r"use_backend\(name\)"):
        with fastgan.use_backend("gpu"):
            pass
    monkeypatch.setenv("FASTGAN_BACKEND", "cudnn")
    with pytest.raises(ValueError, match="FASTGAN_BACKEND"):
        _backend.requested_backend(None)


def test_auto_on_cpu_is_torch_without_warning(clean_env):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _backend.select_backend("op", None, CPU, torch.float32) == "torch"
        assert _backend.select_backend("op", None, CPU, torch.float64) == "torch"


def test_auto_on_cuda_falls_back_with_one_warning(clean_env, no_extension, monkeypatch):
    monkeypatch.setattr(_backend, "_triton_status", lambda: (object(), ""))
    with pytest.warns(UserWarning, match=r"using the triton backend \(cuda: not built"):
        assert _backend.select_backend("bce_with_logits", None, CUDA, torch.float32) == "triton"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _backend.select_backend("bce_with_logits", None, CUDA, torch.float32) == "triton"
    monkeypatch.setattr(_backend, "_triton_status", lambda: (None, "triton is not installed"))
    with pytest.warns(UserWarning, match="using the torch backend .*triton is not installed"):
        assert _backend.select_backend("bce_with_logits", None, CUDA, torch.float32) == "torch"


def test_auto_on_cuda_float64_uses_torch_and_says_why(clean_env, monkeypatch):
    monkeypatch.setattr(_backend, "_extension_status", lambda: (object(), ""))
    with pytest.warns(UserWarning, match="float64"):
        assert _backend.select_backend("op", None, CUDA, torch.float64) == "torch"
    assert _backend.select_backend("op", None, CUDA, torch.float32) == "cuda"


def test_explicit_backend_that_cannot_run_raises(clean_env, no_extension, monkeypatch):
    with pytest.raises(fastgan.BackendUnavailableError, match="backend 'cuda' cannot run: not built"):
        _backend.select_backend("op", "cuda", CUDA, torch.float32)
    monkeypatch.setenv("FASTGAN_BACKEND", "cuda")
    with pytest.raises(fastgan.BackendUnavailableError, match="cuda"):
        _backend.select_backend("op", None, CUDA, torch.float32)
    monkeypatch.delenv("FASTGAN_BACKEND")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(fastgan.BackendUnavailableError, match="TRITON_INTERPRET=1"):
        _backend.select_backend("op", "triton", CPU, torch.float32)
    with pytest.raises(fastgan.BackendUnavailableError, match="float64"):
        _backend.select_backend("op", "triton", CUDA, torch.float64)
    assert _backend.select_backend("op", "torch", CUDA, torch.float64) == "torch"


def test_ops_honour_the_context_and_env(clean_env, monkeypatch):
    calls = []  # the backend each call runs on
    real_select = _backend.select_backend

    def spy(*args, **kwargs):
        calls.append(real_select(*args, **kwargs))
        return calls[-1]

    monkeypatch.setattr(_backend, "select_backend", spy)
    x = torch.randn(5)
    fastgan.ops.bce_with_logits(x, 1.0)
    assert calls == ["torch"]
    monkeypatch.setenv("FASTGAN_BACKEND", "cuda")
    with pytest.raises(fastgan.BackendUnavailableError):
        fastgan.ops.bce_with_logits(x, 1.0)
    with fastgan.use_backend("torch"):
        fastgan.ops.bce_with_logits(x, 1.0)
    assert calls == ["torch", "torch"]


def test_backends_reports_every_backend_with_reasons():
    status = fastgan.backends()
    assert list(status) == ["cuda", "triton", "torch"]
    assert status["torch"].available and status["torch"].reason == ""
    for item in status.values():
        assert item.available == (item.reason == "")
    if not torch.cuda.is_available():
        assert status["cuda"].available == _backend.emulating()
        assert status["triton"].available == _backend.triton_interpreting()


def test_backends_reasons_without_gpu(monkeypatch):
    monkeypatch.delenv("FASTGAN_CUDA_EMULATE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(_backend, "_extension_status", lambda: (object(), ""))
    monkeypatch.setattr(_backend, "_triton_status", lambda: (object(), ""))
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    status = fastgan.backends()
    assert status["cuda"].reason == "no CUDA device is visible to torch"
    assert "TRITON_INTERPRET=1" in status["triton"].reason
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert fastgan.backends()["triton"].available


def _run(*args, env=None):
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})}
    )


def test_import_touches_no_gpu_and_compiles_nothing():
    code = (
        "import sys, torch, fastgan, fastgan.nn, fastgan.ops;"
        "print(int('triton' in sys.modules), int('fastgan._C' in sys.modules), int(torch.cuda.is_initialized()))"
    )
    result = _run("-c", code, env={"TRITON_INTERPRET": "0"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0", "0", "0"]


def test_info_command():
    result = _run("-m", "fastgan", "info")
    assert result.returncode == 0, result.stderr
    for word in ("fastgan", "torch", "triton", "extension", "device", "backends:", "cuda", "torch"):
        assert word in result.stdout
    as_json = json.loads(_run("-m", "fastgan", "info", "--json").stdout)
    assert set(as_json["backends"]) == {"cuda", "triton", "torch"}
    assert as_json["backends"]["torch"]["available"] is True
    no_command = _run("-m", "fastgan")
    assert no_command.returncode == 2 and "info" in no_command.stdout


@pytest.mark.skipif(shutil.which("fastgan") is None, reason="the fastgan console script is not installed")
def test_console_script():
    result = subprocess.run(["fastgan", "info"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "backends:" in result.stdout


class _FakeCudaTensor:
    """What stream_handle reads of a CUDA tensor, on a machine without one."""

    is_cuda = True
    device = torch.device("cuda:1")

    def get_device(self):
        return 1


def test_stream_handle_is_the_current_raw_stream_of_the_current_device(monkeypatch):
    from fastgan import _cuda

    assert _cuda.stream_handle(torch.empty(1)) == 0  # CPU tensors (the emulated build) have no stream
    asked = []
    monkeypatch.setattr(_cuda, "_current_raw_stream", lambda index: asked.append(index) or 1234)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert _cuda.stream_handle(_FakeCudaTensor()) == 1234 and asked == [1]
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    with pytest.raises(RuntimeError, match=r"launches on the current device \(cuda:0\) but the tensor is on cuda:1"):
        _cuda.stream_handle(_FakeCudaTensor())
