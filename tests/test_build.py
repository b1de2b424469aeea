"""The build script's switches and the installed layout (setup.py is imported, not run)."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

import fastgan

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup_module():
    spec = importlib.util.spec_from_file_location("fastgan_setup", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # `setup()` only runs as __main__
    return module


def test_arch_list_parsing(setup_module):
    parse, gencode = setup_module.parse_arch_list, setup_module.gencode_flags
    assert gencode(parse(setup_module.DEFAULT_ARCH_LIST)) == [
        "-gencode", "arch=compute_80,code=sm_80",
        "-gencode", "arch=compute_90,code=sm_90",
        "-gencode", "arch=compute_90,code=compute_90",
    ]
    assert parse("8.0 8.6,9.0a") == [("80", False), ("86", False), ("90a", False)]
    assert parse("80;90+PTX") == [("80", False), ("90", True)]
    for bad in ("", "sm_90", "9", "9.0+ptxx", "eight"):
        with pytest.raises(setup_module.BuildError, match="TORCH_CUDA_ARCH_LIST"):
            parse(bad)


def test_build_mode_switch(setup_module):
    assert setup_module.build_mode({}) == "auto"
    assert setup_module.build_mode({"FASTGAN_BUILD_CUDA": "1"}) == "1"
    assert setup_module.build_mode({"FASTGAN_BUILD_CUDA": "0"}) == "0"
    with pytest.raises(SystemExit, match="FASTGAN_BUILD_CUDA must be auto, 0 or 1"):
        setup_module.build_mode({"FASTGAN_BUILD_CUDA": "maybe"})


def test_cuda_home_discovery(setup_module, tmp_path):
    bogus = {"CUDA_HOME": str(tmp_path), "PATH": ""}
    home, why = setup_module.find_cuda_home(bogus)
    assert home is None and "is not a CUDA toolkit" in why
    home, why = setup_module.find_cuda_home({"PATH": str(tmp_path)})
    if not setup_module._is_toolkit(setup_module.CONVENTIONAL_CUDA):
        assert home is None and "nvcc not found" in why
    # An `nvcc` on PATH that is a wrapper script still leads to the real toolkit.
    real = setup_module.CONVENTIONAL_CUDA
    if setup_module._is_toolkit(real):
        wrapper = tmp_path / "nvcc"
        wrapper.write_text(f'#!/bin/sh\nexec {real.resolve()}/bin/nvcc "$@"\n')
        wrapper.chmod(0o755)
        home, why = setup_module.find_cuda_home({"PATH": str(tmp_path)})
        assert home == real.resolve() and "PATH" in why


def test_extension_built_when_required():
    spec = importlib.util.find_spec("fastgan._C")
    if spec is None:
        if os.environ.get("FASTGAN_BUILD_CUDA") == "1":
            pytest.fail("FASTGAN_BUILD_CUDA=1 but fastgan._C is not installed")
        pytest.skip("fastgan._C is not built here (no CUDA toolkit at install time)")
    from fastgan import _C

    info = _C.build_info()
    assert info["cuda_runtime_version"] >= 12000
    assert info["cuda_archs"]


def test_native_cpu_kernels_built_when_required():
    from fastgan import _native

    spec = importlib.util.find_spec("fastgan._C_cpu")
    if spec is None:
        if os.environ.get("FASTGAN_BUILD_CPU") == "1":
            pytest.fail("FASTGAN_BUILD_CPU=1 but fastgan._C_cpu is not installed")
        pytest.skip("fastgan._C_cpu is not built here (no host C++ compiler at install time)")
    from fastgan import _C_cpu

    assert _C_cpu.build_info()["instruction_set"]
    assert _native.status().startswith("on:") or not _native.enabled()


@pytest.mark.parametrize("openmp", [True, False], ids=["openmp", "compiler-without-openmp"])
def test_native_cpu_kernels_build_from_the_sources(setup_module, tmp_path, monkeypatch, openmp):
    # As setup.py does it: fastgan/_native.py loaded by path (no torch, no package import). A
    # compiler that refuses -fopenmp (Apple's clang) still builds them, without OpenMP.
    builder = setup_module._builder("_native")
    assert setup_module.build_mode({"FASTGAN_BUILD_CPU": "0"}, variable="FASTGAN_BUILD_CPU") == "0"
    try:
        builder.compiler()
    except builder.NativeBuildError as error:
        pytest.skip(str(error))
    if not openmp:
        monkeypatch.setattr(builder, "OPENMP", ["-fno-such-openmp-flag"])
    built = builder.build_module(tmp_path / builder.module_filename(), ROOT / "csrc")
    code = ("import importlib.util, sys; spec = importlib.util.spec_from_file_location('_C_cpu', sys.argv[1]); "
            "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); "
            "print(m.thread_grain(), m.build_info()['openmp'])")
    result = subprocess.run([sys.executable, "-c", code, str(built)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(builder.THREAD_GRAIN), str(openmp)]


def test_kernels_install_as_fastgan_kernels():
    import fastgan.kernels.bce

    assert Path(fastgan.kernels.bce.__file__).parent.name == "kernels"
    code = "import importlib.util, sys; print(importlib.util.find_spec('kernels') is None)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", timeout=60)
    assert result.stdout.strip() == "True", "a top-level module named `kernels` is installed"


def test_package_version():
    assert fastgan.__version__ == "0.1.0"
