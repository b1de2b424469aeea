"""fastgan's native CPU kernels, the extension ``fastgan._C_cpu`` (sources in ``csrc/cpu/``).

Where PyTorch's CPU op makes several passes over memory that one can do (BCE-with-logits:
loss and gradient from one read), the torch backend calls these kernels on the CPU. They are
plain C++ built by the host compiler at install time (setup.py, ``FASTGAN_BUILD_CPU``); the
compiler vectorizes them for the machine's instruction set. Without them the torch backend
runs PyTorch's own ops and says so once.

Loaded on first use, never at ``import fastgan``. ``FASTGAN_CPU_KERNELS=0`` (read at first
use) turns them off. This module imports no other fastgan module, and torch only inside the
function that asks which OpenMP runtime PyTorch uses: setup.py loads it by path to build the
extension.
"""

from __future__ import annotations

import functools
import importlib
import os
import shutil
import subprocess
import sysconfig
import tempfile
from pathlib import Path
from typing import Optional

MODULE_NAME = "_C_cpu"
ENV_SWITCH = "FASTGAN_CPU_KERNELS"
FLAGS = ["-O3", "-std=gnu++17", "-fPIC", "-fvisibility=hidden", "-pthread", "-Wall",
         # no errno from math, so the loops stay vector code
         "-fno-math-errno"]
# OpenMP: the kernels' `omp simd` loops, and run_parallel on PyTorch's own OpenMP pool
# (csrc/cpu/parallel.h). A compiler without an OpenMP runtime (Apple's clang) builds with
# OPENMP_SIMD_ONLY: the same vector loops, more than one thread from std::thread.
OPENMP = ["-fopenmp"]
OPENMP_SIMD_ONLY = ["-fopenmp-simd"]


# Elements per thread below which the BCE and Rényi kernels stay on the calling thread
# (kThreadGrain in csrc/cpu/bce.cpp and renyi.cpp; tests check they agree): see threads_for.
THREAD_GRAIN = 1 << 15


# The sanitizer builds of csrc/testing/cpu_driver.cpp. ThreadSanitizer cannot run the ifunc
# resolvers of the kernels' per-ISA clones, so that build has one version.
SANITIZERS = {
    "address": ["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined", "-fno-sanitize-recover=all"],
    "thread": ["-O1", "-g", "-fsanitize=thread", "-DFASTGAN_NO_ISA_CLONES"],
}
# ThreadSanitizer cannot see libgomp's synchronisation (its barriers would read as races), so
# that build runs run_parallel's std::thread form.
SANITIZER_OPENMP = {"address": [OPENMP, OPENMP_SIMD_ONLY], "thread": [OPENMP_SIMD_ONLY]}


class NativeBuildError(RuntimeError):
    """The native CPU kernels cannot be built (the message says why)."""


def kernel_sources(csrc: Path) -> list[Path]:
    """csrc/cpu's kernels (no Python in them); the module adds csrc/cpu/bindings.cpp."""
    return sorted(path for path in (csrc / "cpu").glob("*.cpp") if path.name != "bindings.cpp")


def module_filename() -> str:
    return MODULE_NAME + (sysconfig.get_config_var("EXT_SUFFIX") or ".so")


def compiler(environ=os.environ) -> str:
    """The host C++ compiler: $CXX, else g++, else c++."""
    for candidate in (environ.get("CXX"), "g++", "c++"):
        if candidate and shutil.which(candidate.split()[0]):
            return candidate
    raise NativeBuildError("no host C++ compiler found (set CXX, or install g++)")


def _pybind11_include() -> str:
    try:
        import pybind11
    except ImportError as error:
        raise NativeBuildError(f"pybind11 is needed to build the native CPU kernels ({error})") from error
    return pybind11.get_include()


def build_module(output: Path, csrc: Path) -> Path:
    """Compile ``csrc/cpu/*.cpp`` into the extension file ``output``; returns it. With OpenMP
    where the compiler has it, else without (the build says which: ``build_info()["openmp"]``)."""
    sources = [*map(str, kernel_sources(csrc)), str(csrc / "cpu" / "bindings.cpp")]
    includes = [f"-I{csrc / 'cpu'}", f"-I{_pybind11_include()}", f"-I{sysconfig.get_paths()['include']}"]
    output.parent.mkdir(parents=True, exist_ok=True)
    failures = []
    with tempfile.TemporaryDirectory(prefix="fastgan-cpu-") as tmp:
        partial = Path(tmp) / output.name
        for openmp in (OPENMP, OPENMP_SIMD_ONLY):
            command = [*compiler().split(), *FLAGS, *openmp, "-shared", *includes, *sources, "-ldl", "-o",
                       str(partial)]
            result = subprocess.run(command, capture_output=True, text=True, check=False)
            if result.returncode == 0:
                shutil.move(str(partial), str(output))
                return output
            failures.append(f"{' '.join(command)}\n{result.stderr.strip()}")
    raise NativeBuildError(f"the native CPU build failed: {failures[-1]}")


def build_driver(output: Path, csrc: Path, sanitize: str) -> Path:
    """Compile csrc/testing/cpu_driver.cpp with the kernels under ``sanitize`` ("address": ASan
    + UBSan, with OpenMP where the compiler has it; or "thread"); returns the program."""
    flags = [flag for flag in FLAGS if flag not in ("-O3", "-fPIC", "-fvisibility=hidden")]
    for openmp in SANITIZER_OPENMP[sanitize]:
        command = [*compiler().split(), *flags, *openmp, *SANITIZERS[sanitize], f"-I{csrc / 'cpu'}",
                   str(csrc / "testing" / "cpu_driver.cpp"), *map(str, kernel_sources(csrc)), "-o", str(output)]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode == 0:
            return output
    raise NativeBuildError(f"the {sanitize} driver build failed: {' '.join(command)}\n{result.stderr.strip()}")


def enabled(environ=os.environ) -> bool:
    """False when ``FASTGAN_CPU_KERNELS`` turns the native CPU kernels off."""
    return environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "false", "no", "off")


@functools.lru_cache(maxsize=None)
def _load() -> tuple[Optional[object], str]:
    if not enabled():
        return None, f"{ENV_SWITCH}=0"
    try:
        return importlib.import_module(f"fastgan.{MODULE_NAME}"), ""
    except ImportError as error:
        return None, (f"fastgan.{MODULE_NAME} is not built ({error}); reinstall with a C++ compiler "
                      "(pip install .) or build in place (python setup.py build_ext --inplace)")


def module() -> Optional[object]:
    """The ``fastgan._C_cpu`` module, or None when it is off or not built (see :func:`status`)."""
    return _load()[0]


def _torch_openmp_runtime() -> str:
    """The OpenMP runtime library PyTorch's CPU ops run their threads on ("" if its ATen
    parallel backend is not OpenMP or the library cannot be found): the one libtorch_cpu's own
    omp_get_num_threads resolves to."""
    import ctypes

    import torch  # only here: setup.py loads this module by path, without torch

    if "parallel backend: OpenMP" not in torch.__config__.parallel_info():
        return ""
    libraries = sorted((Path(torch.__file__).parent / "lib").glob("libtorch_cpu.*"))
    try:
        function = ctypes.CDLL(str(libraries[0])).omp_get_num_threads
    except (IndexError, OSError, AttributeError):
        return ""
    return module().library_of(ctypes.cast(function, ctypes.c_void_p).value or 0)


@functools.lru_cache(maxsize=None)
def shares_openmp_pool() -> bool:
    """Whether the kernels' threads come from PyTorch's own OpenMP pool: the module is built with
    OpenMP and its parallel regions run on the same runtime library as PyTorch's (the extension
    binds to the libgomp.so.1 that torch loaded first, where torch's is a libgomp.so.1).
    Otherwise the kernels keep to the calling thread: a second OpenMP pool would spin against
    PyTorch's, and threads of their own start too slowly to pay."""
    loaded = module()
    if loaded is None or not loaded.build_info()["openmp"]:
        return False
    ours, torchs = loaded.openmp_runtime(), _torch_openmp_runtime()
    try:
        return bool(ours and torchs) and os.path.samefile(ours, torchs)
    except OSError:
        return False


def threads_for(numel: int) -> int:
    """Threads to ask the BCE and Rényi kernels for over ``numel`` elements: one below two grains
    (checked first: host time at 256 logits), else PyTorch's intra-op threads where the kernels
    share its OpenMP pool, or from four grains in a build without OpenMP, whose threads are the
    kernels' own and cost tens of microseconds each; an OpenMP build whose runtime is not
    PyTorch's keeps to one thread."""
    if numel < 2 * THREAD_GRAIN:
        return 1
    import torch  # only here: setup.py loads this module by path, without torch

    available = torch.get_num_threads()
    if available <= 1:
        return 1
    if shares_openmp_pool():
        return available
    return available if numel >= 4 * THREAD_GRAIN and not module().build_info()["openmp"] else 1


def status() -> str:
    """One line: the kernels' instruction set and threads, or why they are not used."""
    loaded, why = _load()
    if loaded is None:
        return f"off: {why}"
    info = loaded.build_info()
    if shares_openmp_pool():
        threads = "threads from PyTorch's OpenMP pool"
    elif not info["openmp"]:
        threads = "built without OpenMP: the block kernel on one thread"
    else:
        threads = f"OpenMP runtime {loaded.openmp_runtime() or '?'} is not PyTorch's: one thread"
    return f"on: {info['instruction_set']}, {threads} ({loaded.__file__})"


def reset() -> None:
    """Forget the loaded module, so the next use reads ``FASTGAN_CPU_KERNELS`` again (tests)."""
    _load.cache_clear()
    shares_openmp_pool.cache_clear()
