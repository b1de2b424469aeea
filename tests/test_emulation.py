"""The CUDA emulation (FASTGAN_CUDA_EMULATE=1): the source rewrite, the execution model, the
fp16/bf16 conversions against the CUDA toolkit's own, and the kernels under AddressSanitizer +
UBSan and ThreadSanitizer in several thread schedules.

The op-level tests of the ``cuda`` backend (test_bce.py, test_renyi.py, test_batch_norm.py,
test_sync_batch_norm.py) run through the emulated extension on CPU tensors; this file tests the
emulator itself and runs csrc/testing/kernel_driver.cu, which calls every kernel.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastgan import _backend, _emulation

ROOT = Path(__file__).resolve().parent.parent
SEMANTICS = Path(__file__).resolve().parent / "emulation" / "semantics.cu"
CONVERSIONS = Path(__file__).resolve().parent / "emulation" / "conversions.cpp"
OUT_OF_BOUNDS = Path(__file__).resolve().parent / "emulation" / "out_of_bounds.cu"
SCHEDULES = ["forward", "reverse", "random:1"]


def _have_compiler() -> bool:
    try:
        _emulation.compiler()
    except _emulation.EmulationError:
        return False
    return True


needs_compiler = pytest.mark.skipif(not _have_compiler(), reason="no host C++ compiler (g++) to build the emulation")


def _cuda_include() -> Path | None:
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root and (Path(root) / "include" / "cuda_fp16.hpp").is_file():
            return Path(root) / "include"
    return None


def _sources() -> Path:
    return _emulation.source_dir()


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("emulated")


def _run(command, env=None, timeout=600):
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, check=False)


# ---- the source rewrite ------------------------------------------------------------------------

def test_rewrite_keeps_lines_and_handles_templates_and_configs():
    source = (
        "void f() {\n"
        "  k<<<grid, 256, 0, stream>>>(args);\n"
        "  kernel_name<T, 4>\n"
        "      <<<elementwise_grid<T>(shape, op), dim3(T::kChannels, T::kLanes), 0, stream>>>(x, y,\n"
        "          z);\n"
        "  // a comment mentioning k<<<1, 1>>>() stays as it is\n"
        "  ns::empty<<<1, 32>>>();\n"
        "}\n"
    )
    out = _emulation.rewrite_launches(source, "x.cu")
    assert out.count("\n") == source.count("\n")
    lines = out.splitlines()
    assert lines[1].strip() == "::fastgan_emu::launch(::fastgan_emu::LaunchConfig(grid, 256, 0, stream), k, args);"
    assert "::fastgan_emu::LaunchConfig(elementwise_grid<T>(shape, op), dim3(T::kChannels, T::kLanes), 0, stream), " \
           "kernel_name<T, 4>, x, y," in lines[3]
    assert lines[2].strip() == "::fastgan_emu::launch("
    assert lines[4].strip() == "z);"
    assert "k<<<1, 1>>>()" in lines[5]
    assert lines[6].strip() == "::fastgan_emu::launch(::fastgan_emu::LaunchConfig(1, 32), ns::empty);"


@pytest.mark.parametrize("bad, message", [
    ("  k<<<1, 1(x);\n", "<<< without >>>"),
    ("  k<<<1, 1>>> x;\n", r"expected '\(' after >>>"),
    ("  k<<<1, 1>>>(x;\n", "unbalanced parentheses"),
    ("  (<<<1, 1>>>(x);\n", "kernel name"),
])
def test_rewrite_errors_name_the_line(bad, message):
    with pytest.raises(_emulation.EmulationError, match=rf"x\.cu:2: .*{message}"):
        _emulation.rewrite_launches("// first line\n" + bad, "x.cu")


def test_every_kernel_source_rewrites_and_keeps_its_line_count():
    for source in _emulation.kernel_sources(_sources()):
        text = source.read_text()
        out = _emulation.rewrite_launches(text, str(source))
        assert "<<<" not in re.sub(r"//.*", "", out), source.name
        assert out.count("\n") == text.count("\n"), source.name


def test_enabled_reads_the_flag():
    assert _emulation.enabled({"FASTGAN_CUDA_EMULATE": "1"})
    assert not _emulation.enabled({"FASTGAN_CUDA_EMULATE": "0"})
    assert not _emulation.enabled({})


# ---- the execution model ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def semantics(build_dir):
    if not _have_compiler():
        pytest.skip("no host C++ compiler")
    return _emulation.build_executable(build_dir / "semantics", SEMANTICS, with_kernels=False)


def _values(output: str, name: str) -> list[float]:
    for line in output.splitlines():
        if line.startswith(name + " "):
            return [float(v) for v in line.split()[1:]]
    raise AssertionError(f"no line {name!r} in:\n{output}")


def _status(output: str, name: str) -> str:
    for line in output.splitlines():
        if line.startswith(name + " "):
            return line[len(name) + 1:]
    raise AssertionError(f"no line {name!r} in:\n{output}")


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_execution_model(semantics, schedule):
    result = _run([str(semantics), "all"], env={"FASTGAN_EMULATE_SCHEDULE": schedule})
    assert result.returncode == 0, result.stderr
    out = result.stdout
    threads = 128
    assert _values(out, "barrier") == [(threads - 1 - t) * 10 + b for b in range(3) for t in range(threads)]
    shuffles = _values(out, "shuffle")
    rows = [shuffles[k * 64:(k + 1) * 64] for k in range(7)]
    for t in range(64):
        lane, warp = t % 32, t - t % 32
        assert rows[0][t] == 1000 + warp + (lane + 3 if lane + 3 < 32 else lane)
        assert rows[1][t] == 1000 + warp + (lane - 5 if lane >= 5 else lane)
        assert rows[2][t] == 1000 + warp + (lane ^ 6)
        assert rows[3][t] == 1000 + warp + 7
        segment = lane - lane % 16
        assert rows[4][t] == 1000 + warp + (lane + 3 if lane + 3 < segment + 16 else lane)
        assert rows[5][t] == 1000 + warp + segment + 21 % 16
        assert rows[6][t] == 2 * (1000 + warp + (lane ^ 1)) + 1
    values = [float(i % 7) - 2.0 for i in range(2 * threads)]
    assert _values(out, "block_sum") == [sum(values[:threads]), sum(values[threads:])]
    assert _values(out, "exited") == [100]
    assert _values(out, "builtins") == [t + 1000 * b for b in range(6) for t in range(24)]
    for name in ("barrier_status", "shuffle_status", "block_sum_status", "exited_status", "builtins_status"):
        assert _status(out, name).startswith("cudaSuccess"), name
    assert _status(out, "bad_block").startswith("cudaErrorInvalidConfiguration")
    assert "at most 1024 threads" in _status(out, "bad_block")
    assert _status(out, "bad_grid").startswith("cudaErrorInvalidConfiguration")
    assert "dynamic shared memory" in _status(out, "dynamic_shared")
    assert _status(out, "good_after_bad").startswith("cudaSuccess")  # the error was read and cleared


def test_threads_at_different_barriers_are_a_deadlock_naming_both_lines(semantics):
    out = _run([str(semantics), "different_barriers"]).stdout
    status = _status(out, "different_barriers")
    lines = [i + 1 for i, text in enumerate(SEMANTICS.read_text().splitlines()) if "__syncthreads();" in text]
    assert status.startswith("cudaErrorLaunchFailure"), status
    assert "different __syncthreads" in status
    assert f"semantics.cu:{lines[-2]}" in status and f"semantics.cu:{lines[-1]}" in status


def test_a_full_mask_shuffle_with_an_exited_lane_fails(semantics):
    status = _status(_run([str(semantics), "missing_lane"]).stdout, "missing_lane")
    assert status.startswith("cudaErrorLaunchFailure"), status
    assert "lanes 5 have exited" in status and "0xffffffff" in status


# ---- fp16 / bf16 conversions, bit for bit --------------------------------------------------------

@needs_compiler
@pytest.mark.skipif(_cuda_include() is None, reason="the CUDA toolkit's headers (cuda_fp16.hpp) are not installed")
def test_half_and_bfloat16_conversions_match_cuda_for_every_input(build_dir):
    """All 2^32 floats to fp16 and bf16, and all 2^16 patterns back, against the toolkit's own
    host implementation (which matches the device's round-to-nearest-even)."""
    cxx = _emulation.compiler().split()
    programs = {}
    for name, include in (("cuda", _cuda_include()), ("emulated", _sources() / "emulation")):
        programs[name] = build_dir / f"conversions_{name}"
        compiled = _run([*cxx, "-O2", "-std=c++17", f"-I{include}", str(CONVERSIONS), "-o", str(programs[name])])
        assert compiled.returncode == 0, compiled.stderr
    runs = {name: subprocess.Popen([str(p)], stdout=subprocess.PIPE, text=True) for name, p in programs.items()}
    outputs = {name: run.communicate(timeout=600)[0].splitlines() for name, run in runs.items()}
    assert len(outputs["cuda"]) == 256 + 65536
    for want, got in zip(outputs["cuda"], outputs["emulated"]):
        assert got == want, f"the emulated conversion differs from CUDA's: {got!r} vs {want!r}"


# ---- the emulated extension --------------------------------------------------------------------

needs_emulation = pytest.mark.skipif(
    not _backend.emulating() or bool(_backend._why_not("cuda", torch.device("cpu"), torch.float32)),
    reason="FASTGAN_CUDA_EMULATE is off or the emulated build is unavailable",
)


@needs_emulation
def test_emulated_extension_is_the_cuda_backend_on_cpu_tensors():
    module = _backend.extension()
    assert module.__name__ == "fastgan._C_emulated"
    assert module.build_info()["cuda_archs"] == "emulated"
    status = _backend.backends()["cuda"]
    assert status.available and status.reason == ""


@needs_emulation
def test_launch_counter_counts_kernel_launches():
    from fastgan.ops import bce_with_logits

    x = torch.randn(300)
    with _emulation.count_launches() as launches:
        bce_with_logits(x, 1.0, backend="cuda")
    assert launches[0] == 1


@needs_emulation
def test_info_says_the_cuda_backend_is_emulated():
    result = _run([sys.executable, "-m", "fastgan", "info"], env={"FASTGAN_CUDA_EMULATE": "1"})
    assert result.returncode == 0, result.stderr
    assert re.search(r"emulation\s+on: .*_C_emulated", result.stdout), result.stdout
    assert re.search(r"^\s+cuda\s+yes", result.stdout, flags=re.MULTILINE), result.stdout


def test_schedule_names_are_checked():
    with pytest.raises(ValueError, match="schedule must be one of"):
        _emulation.set_schedule("sideways")


# ---- sanitizers over every kernel ------------------------------------------------------------------

@pytest.fixture(scope="module", params=["address", "thread"])
def sanitized_driver(request, build_dir):
    if not _have_compiler():
        pytest.skip("no host C++ compiler")
    output = build_dir / f"kernel_driver_{request.param}"
    try:
        _emulation.build_executable(output, _sources() / "testing" / "kernel_driver.cu", sanitize=request.param)
    except _emulation.EmulationError as error:
        if "sanitize" in str(error) and ("cannot find" in str(error) or "libtsan" in str(error) or "libasan" in str(error)):
            pytest.skip(f"the compiler has no {request.param} sanitizer runtime: {error}")
        raise
    return request.param, output


@needs_compiler
def test_one_past_the_end_of_a_device_buffer_is_a_reported_overflow(build_dir):
    """cudaMalloc allocates exactly the bytes asked for (256-byte aligned, as on a GPU, but not
    rounded up: compute-sanitizer's memcheck also reports an access beyond the requested size), so
    an off-by-one read in a kernel is an AddressSanitizer heap-buffer-overflow at its .cu line, and
    the kernel driver's exact-size buffers are exact."""
    program = build_dir / "out_of_bounds"
    try:
        _emulation.build_executable(program, OUT_OF_BOUNDS, sanitize="address", with_kernels=False)
    except _emulation.EmulationError as error:
        if "cannot find" in str(error) or "libasan" in str(error):
            pytest.skip(f"the compiler has no address sanitizer runtime: {error}")
        raise
    result = _run([str(program)], env={"ASAN_OPTIONS": "detect_leaks=0:abort_on_error=0"})
    report = result.stdout + result.stderr
    read_line = next(i + 1 for i, text in enumerate(OUT_OF_BOUNDS.read_text().splitlines()) if "out[i] = in[i + 1];" in text)
    assert "aligned 1" in result.stdout, report[-3000:]
    assert "ERROR: AddressSanitizer: heap-buffer-overflow" in report, report[-3000:]
    assert f"out_of_bounds.cu:{read_line}" in report, report[-3000:]


def test_kernels_are_clean_and_deterministic_under_sanitizers_in_every_schedule(sanitized_driver):
    """Every kernel through csrc/testing/kernel_driver.cu (exact-size buffers, poisoned outputs,
    float64 references), under AddressSanitizer + UBSan or ThreadSanitizer (each emulated thread a
    TSan fiber: a missing __syncthreads is a reported race), in forward, reverse and random
    schedules; the deterministic kernels must give the same bits in every schedule."""
    sanitizer, driver = sanitized_driver
    checksums = {}
    for schedule in SCHEDULES:
        env = {"FASTGAN_EMULATE_SCHEDULE": schedule, "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=0",
               "TSAN_OPTIONS": "halt_on_error=0:exitcode=66", "UBSAN_OPTIONS": "print_stacktrace=1"}
        result = _run([str(driver)], env=env)
        report = result.stdout + result.stderr
        assert "ERROR: AddressSanitizer" not in report and "runtime error:" not in report, report[-4000:]
        assert "WARNING: ThreadSanitizer" not in report, report[-4000:]
        assert result.returncode == 0, f"{sanitizer}/{schedule}: exit {result.returncode}\n{report[-3000:]}"
        checksums[schedule] = [line for line in result.stdout.splitlines() if line.startswith("case ")]
        assert len(checksums[schedule]) >= 30
    first = checksums[SCHEDULES[0]]
    for schedule in SCHEDULES[1:]:
        assert checksums[schedule] == first, f"results depend on the thread schedule ({schedule})"
