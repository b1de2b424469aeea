"""What the kernels compile to on sm_90, held in CI without a GPU (bench/kernel_report.py).

The Triton launches of a few op calls are recorded under the interpreter (without running
the kernels), compiled ahead of time for sm_90 and read from their SASS; csrc/*.cu are
compiled by nvcc for sm_90 and read the same way. The lines held: no spills anywhere, and
128-bit global loads and stores in every contiguous bandwidth-bound path, float32 and
bfloat16, Triton and CUDA. Compiled artefacts are shared by the tests of one run (and kept
on disk by Triton's cache and the report's own).
"""

import importlib.util
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load_report():
    spec = importlib.util.spec_from_file_location("kernel_report", ROOT / "bench" / "kernel_report.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["kernel_report"] = module  # the compile workers import it by this name
    spec.loader.exec_module(module)
    return module


kernel_report = _load_report()
MISSING = kernel_report.missing_tools()
needs_tools = pytest.mark.skipif(bool(MISSING), reason=f"cannot compile for sm_90 here: {MISSING}")
needs_interpreter = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                       reason="recording Triton launches needs TRITON_INTERPRET=1 (set without a GPU)")

# Sizes where the data allows 128-bit accesses, among them counts that are not multiples of
# 16 (the masked tail) and channel counts / H·W that are not.
REQUIRED = kernel_report.required_triton()


def _selected_cases():
    wanted = {case for _, _, case in REQUIRED} | {"bce_with_logits mean, strided column n=96"}
    return [case for case in kernel_report.cases("triton", bandwidth=False) if case.name in wanted]


@pytest.fixture(scope="module")
def triton_rows():
    launches, _ = kernel_report.record(_selected_cases(), execute=False)
    facts = kernel_report.compile_triton(launches, jobs=os.cpu_count() or 1)
    return kernel_report.triton_rows(launches, facts)


@pytest.fixture(scope="module")
def cuda_rows():
    return kernel_report.cuda_report()


def test_access_width_of_sass_mnemonics():
    width = kernel_report.access_width
    assert [width(m) for m in ("LDG.E", "LDG.E.64", "LDG.E.128", "LDG.E.U16", "STG.E.U8", "STG.E.128")] == [
        32, 64, 128, 16, 8, 128]
    assert width("LDG.E.128.CONSTANT") == 128 and width("LDG.E.EF.64") == 64


def test_occupancy_model_matches_the_h200_limits():
    occupancy = kernel_report.occupancy
    assert occupancy(32, 0, 256) == 1.0  # 8 blocks of 8 warps: all 64 warps
    # 111 registers, 128 threads: 14 x 256 registers per warp, 18 warps fit, so 4 blocks of 4 warps.
    assert occupancy(111, 8192, 128) == 0.25
    assert occupancy(40, 0, 128) == 0.75  # 48 warps by registers (1280 per warp)
    assert occupancy(16, 100 * 1024, 256) == 0.25  # shared memory: 2 blocks of 8 warps
    assert occupancy(16, 0, 32) == 0.5  # at most 32 blocks of one warp


@needs_tools
@needs_interpreter
def test_no_triton_kernel_spills(triton_rows):
    spilling = [f"{r['kernel']} [{r['dtype']}] {r['specialisation']}" for r in triton_rows
                if r["spill_instructions"] or r["local"]]
    assert not spilling, spilling


@needs_tools
@needs_interpreter
@pytest.mark.parametrize("kernel,dtype,case", REQUIRED, ids=[f"{k}-{d}-{c}" for k, d, c in REQUIRED])
def test_triton_contiguous_paths_use_128_bit_accesses(triton_rows, kernel, dtype, case):
    """Widest access 128 bits, and no more narrow accesses than a remainder or the per-channel
    vectors need (a block walked with scalar accesses would add at least 8)."""
    rows = [r for r in triton_rows if r["kernel"] == kernel and r["dtype"] == dtype and case in r["cases"]]
    assert rows, f"{case!r} launched no {dtype} {kernel}"
    limit = kernel_report.MAX_NARROW_ACCESSES
    for row in rows:
        assert row["widest_load"] == 128, (row["specialisation"], row["loads"])
        assert kernel_report.narrow_accesses(row["loads"]) <= limit, (row["specialisation"], row["loads"])
        if kernel_report.BANDWIDTH_BOUND_TRITON[kernel]:
            assert row["widest_store"] == 128, (row["specialisation"], row["stores"])
            assert kernel_report.narrow_accesses(row["stores"]) <= limit, (row["specialisation"], row["stores"])


@needs_tools
@needs_interpreter
def test_the_check_sees_scalar_access(triton_rows):
    """The widths come from the code, not from the sizes: a strided column is read with
    scalar loads (its gradient, contiguous, is still written with vector stores)."""
    rows = [r for r in triton_rows if "bce_with_logits mean, strided column n=96" in r["cases"]]
    assert rows
    for row in rows:
        assert "LDG.E" in row["loads"] or "LDG.E.U16" in row["loads"], row["loads"]
        assert row["widest_store"] == 128


@needs_tools
def test_no_cuda_kernel_spills(cuda_rows):
    spilling = [f"{r['signature']}: {r['spill_instructions']} STL/LDL, {r['spill_bytes']} B" for r in cuda_rows
                if r["spill_instructions"] or r["spill_bytes"] or r["local"]]
    assert not spilling, spilling


CUDA_REQUIRED = [(kernel, dtype) for kernel in kernel_report.BANDWIDTH_BOUND_CUDA for dtype in ("float32", "bfloat16")]


@needs_tools
@pytest.mark.parametrize("kernel,dtype", CUDA_REQUIRED, ids=[f"{k}-{d}" for k, d in CUDA_REQUIRED])
def test_cuda_bandwidth_kernels_use_128_bit_accesses(cuda_rows, kernel, dtype):
    """Each bandwidth-bound kernel has an instantiation for the dtype (a template parameter,
    not a per-element switch) whose contiguous walk moves 16 bytes per access."""
    rows = [r for r in cuda_rows if r["kernel"] == kernel and r["dtype"] == dtype]
    found = sorted({r["dtype"] for r in cuda_rows if r["kernel"] == kernel})
    assert rows, f"no {dtype} instantiation of {kernel}; instantiations: {found}"
    assert max(r["widest_load"] for r in rows) == 128, [(r["signature"], r["loads"]) for r in rows]
    if kernel_report.BANDWIDTH_BOUND_CUDA[kernel]:
        assert max(r["widest_store"] for r in rows) == 128, [(r["signature"], r["stores"]) for r in rows]


@needs_tools
def test_every_cuda_kernel_is_reported(cuda_rows):
    """Every __global__ function in csrc/*.cu appears, with its launch bounds read back."""
    import re

    declared = set()
    for source in (ROOT / "csrc").glob("*.cu"):
        text = source.read_text()
        declared |= set(re.findall(r"__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s*)?(\w+)", text))
    reported = {r["kernel"] for r in cuda_rows}
    assert declared <= reported, declared - reported
    assert all(r["threads"] > 0 for r in cuda_rows)
