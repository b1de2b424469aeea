"""The ``cuda`` backend on the CPU: csrc/*.cu built by the host C++ compiler (``FASTGAN_CUDA_EMULATE=1``).

The twin of ``TRITON_INTERPRET=1``. The CUDA sources are compiled unchanged against the
emulation headers in ``csrc/emulation/`` (the CUDA execution model on the CPU: fibers per
thread, real barriers and warp shuffles; see ``csrc/emulation/cuda_runtime.h``). The only
source rewrite turns each ``kernel<<<grid, block, smem, stream>>>(args)`` into a call of
``fastgan_emu::launch``, keeping every line where it was (and ``#line``), so compiler errors
and sanitizer reports point at the ``.cu`` line.

The extension ``fastgan._C_emulated`` has the same functions as ``fastgan._C`` and takes CPU
addresses. It is built at install time when a host compiler is there (setup.py), else on first
use into a cache (``FASTGAN_CACHE_DIR``, else ``$XDG_CACHE_HOME/fastgan``, else
``~/.cache/fastgan``), keyed by a digest of the sources; never at ``import fastgan``.

This module imports no torch: setup.py loads it by path to build the extension.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import importlib.machinery
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, Optional

MODULE_NAME = "_C_emulated"
ENV_FLAG = "FASTGAN_CUDA_EMULATE"
SANITIZERS = {
    None: ["-O2"],
    "address": ["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined", "-fno-sanitize-recover=all"],
    "thread": ["-O1", "-g", "-fsanitize=thread"],
}
SCHEDULES = {"forward": 0, "reverse": 1, "random": 2}
_COMMON_FLAGS = [
    "-std=c++17", "-fPIC", "-fno-strict-aliasing", "-ffp-contract=off", "-Wall", "-Wno-unknown-pragmas", "-Wno-unused-function",
    '-DFASTGAN_CUDA_ARCHS="emulated"',
]


class EmulationError(RuntimeError):
    """The emulated CUDA build cannot be made or loaded (the message says why)."""


def enabled(environ=os.environ) -> bool:
    """True when ``FASTGAN_CUDA_EMULATE`` asks for the emulated cuda backend."""
    return flag_set(environ.get(ENV_FLAG))


def flag_set(value: Optional[str]) -> bool:
    """Whether an ``FASTGAN_CUDA_EMULATE`` value (None: unset) asks for emulation."""
    return value is not None and value.strip().lower() not in ("", "0", "false", "no", "off")


def source_dir() -> Path:
    """The CUDA sources: ``csrc/`` beside the package in a checkout, ``fastgan/csrc`` when installed."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "csrc", here.parent / "csrc"):
        if (candidate / "bindings.cpp").is_file() and (candidate / "emulation" / "cuda_runtime.h").is_file():
            return candidate
    raise EmulationError(f"the CUDA sources (csrc/) are not found beside {here}")


def kernel_sources(csrc: Path) -> list[Path]:
    return sorted(csrc.glob("*.cu"))


def source_digest(csrc: Path, extra: str = "") -> str:
    """A digest of every source and header the emulated build reads, and of ``extra`` (flags)."""
    digest = hashlib.sha256(extra.encode())
    files = sorted(p for p in csrc.rglob("*") if p.suffix in (".cu", ".cuh", ".h", ".cpp") and p.is_file())
    for path in files:
        digest.update(str(path.relative_to(csrc)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:20]


# ---- the source rewrite ---------------------------------------------------------------------

_CALLEE_CHARS = re.compile(r"[A-Za-z0-9_:]")


def _matching_backward(text: str, close: int, opening: str, closing: str) -> int:
    depth = 0
    for index in range(close, -1, -1):
        if text[index] == closing:
            depth += 1
        elif text[index] == opening:
            depth -= 1
            if depth == 0:
                return index
    return -1


def _matching_forward(text: str, open_index: int, opening: str, closing: str) -> int:
    depth = 0
    for index in range(open_index, len(text)):
        if text[index] == opening:
            depth += 1
        elif text[index] == closing:
            depth -= 1
            if depth == 0:
                return index
    return -1


def rewrite_launches(text: str, path: str = "<source>") -> str:
    """Turn every ``callee<<<config>>>(args)`` into ``::fastgan_emu::launch(LaunchConfig(config), callee, args)``.

    Line breaks are kept in place, so line numbers do not move. Raises :class:`EmulationError`
    naming ``path:line`` for a launch it cannot parse.
    """
    out = []
    position = 0
    while True:
        start = text.find("<<<", position)
        if start < 0:
            break
        line_start = text.rfind("\n", 0, start) + 1
        line_no = text.count("\n", 0, start) + 1
        if "//" in text[line_start:start]:  # inside a comment
            out.append(text[position:start + 3])
            position = start + 3
            continue
        callee_end = start
        while callee_end > 0 and text[callee_end - 1].isspace():
            callee_end -= 1
        callee_start = callee_end
        if text[callee_start - 1] == ">":  # template arguments
            callee_start = _matching_backward(text, callee_start - 1, "<", ">")
            if callee_start < 0:
                raise EmulationError(f"{path}:{line_no}: cannot find the kernel's template arguments before <<<")
        while callee_start > 0 and _CALLEE_CHARS.match(text[callee_start - 1]):
            callee_start -= 1
        callee = text[callee_start:callee_end]
        if not callee or not re.match(r"[A-Za-z_:]", callee):
            raise EmulationError(f"{path}:{line_no}: cannot find the kernel name before <<<")
        config_end = text.find(">>>", start)
        if config_end < 0:
            raise EmulationError(f"{path}:{line_no}: <<< without >>>")
        config = text[start + 3:config_end]
        open_paren = config_end + 3
        while open_paren < len(text) and text[open_paren].isspace():
            open_paren += 1
        if open_paren >= len(text) or text[open_paren] != "(":
            raise EmulationError(f"{path}:{line_no}: expected '(' after >>>")
        close_paren = _matching_forward(text, open_paren, "(", ")")
        if close_paren < 0:
            raise EmulationError(f"{path}:{line_no}: unbalanced parentheses in the kernel arguments")
        args = text[open_paren + 1:close_paren]
        gap_lines = text.count("\n", callee_end, start) + text.count("\n", config_end, open_paren)
        out.append(text[position:callee_start])
        out.append("::fastgan_emu::launch(" + "\n" * gap_lines + f"::fastgan_emu::LaunchConfig({config}), {callee}")
        out.append(f", {args})" if args.strip() else ")")
        position = close_paren + 1
    out.append(text[position:])
    return "".join(out)


def write_rewritten(source: Path, out_dir: Path) -> Path:
    """``out_dir/<name>.cpp``: the rewritten source, its lines mapped back to ``source``."""
    text = source.read_text()
    target = out_dir / (source.name + ".cpp")
    target.write_text(f'#line 1 "{source}"\n' + rewrite_launches(text, str(source)))
    return target


# ---- building --------------------------------------------------------------------------------

def compiler() -> str:
    """The host C++ compiler: $CXX, else g++, else c++."""
    for candidate in (os.environ.get("CXX"), "g++", "c++"):
        if candidate and shutil.which(candidate.split()[0]):
            return candidate
    raise EmulationError("no host C++ compiler found (set CXX, or install g++)")


def _compile_all(commands: list[list[str]]) -> None:
    def run(command):
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        return command, result

    with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
        for command, result in pool.map(run, commands):
            if result.returncode != 0:
                raise EmulationError(
                    f"the emulated CUDA build failed ({result.returncode}): {' '.join(command)}\n{result.stderr.strip()}"
                )


def _objects(csrc: Path, work: Path, sources: list[Path], flags: list[str]) -> list[Path]:
    cxx = compiler().split()
    commands, objects = [], []
    for source in sources:
        unit = write_rewritten(source, work) if source.suffix == ".cu" else source
        obj = work / (source.name + ".o")
        commands.append([*cxx, *flags, "-c", str(unit), "-o", str(obj)])
        objects.append(obj)
    _compile_all(commands)
    return objects


def _include_flags(csrc: Path) -> list[str]:
    # The emulation headers shadow <cuda_runtime.h>, <cuda_fp16.h> and <cuda_bf16.h>.
    return [f"-I{csrc / 'emulation'}", f"-I{csrc}"]


def _pybind11_include() -> str:
    try:
        import pybind11
    except ImportError as error:
        raise EmulationError(f"pybind11 is needed to build the emulated extension ({error}); pip install pybind11")
    return pybind11.get_include()


def module_filename() -> str:
    return MODULE_NAME + (sysconfig.get_config_var("EXT_SUFFIX") or ".so")


def build_module(output: Path, csrc: Optional[Path] = None, sanitize: Optional[str] = None) -> Path:
    """Compile the emulated extension into the file ``output``; returns it."""
    csrc = csrc or source_dir()
    flags = [*_COMMON_FLAGS, *SANITIZERS[sanitize], "-fvisibility=hidden", *_include_flags(csrc),
             f"-I{_pybind11_include()}", f"-I{sysconfig.get_paths()['include']}",
             f"-DFASTGAN_MODULE_NAME={MODULE_NAME}"]
    sources = [*kernel_sources(csrc), csrc / "bindings.cpp", csrc / "emulation" / "emulator.cpp"]
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fastgan-emulate-") as tmp:
        work = Path(tmp)
        objects = _objects(csrc, work, sources, flags)
        partial = work / output.name
        _compile_all([[*compiler().split(), "-shared", *SANITIZERS[sanitize], *map(str, objects), "-o", str(partial)]])
        shutil.move(str(partial), str(output))
    return output


def build_executable(output: Path, main_source: Path, csrc: Optional[Path] = None,
                     sanitize: Optional[str] = None, with_kernels: bool = True) -> Path:
    """Compile a program (e.g. csrc/testing/kernel_driver.cu), emulated, with every kernel of
    csrc/ unless ``with_kernels`` is false; ``sanitize``: None, "address" (+UBSan) or "thread"."""
    csrc = csrc or source_dir()
    flags = [*_COMMON_FLAGS, *SANITIZERS[sanitize], *_include_flags(csrc)]
    sources = [main_source, *(kernel_sources(csrc) if with_kernels else []), csrc / "emulation" / "emulator.cpp"]
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fastgan-emulate-") as tmp:
        objects = _objects(csrc, Path(tmp), sources, flags)
        _compile_all([[*compiler().split(), *SANITIZERS[sanitize], *map(str, objects), "-o", str(output)]])
    return output


def cache_dir() -> Path:
    root = os.environ.get("FASTGAN_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "fastgan")
    return Path(root) / "emulated"


def _digest_for_module(csrc: Path) -> str:
    return source_digest(csrc, " ".join([*_COMMON_FLAGS, module_filename(), sys.version.split()[0]]))


def packaged_module(csrc: Path) -> Optional[Path]:
    """The module built at install time beside this file, if it matches the sources."""
    here = Path(__file__).resolve().parent
    built, stamp = here / module_filename(), here / (MODULE_NAME + ".digest")
    if built.is_file() and stamp.is_file() and stamp.read_text().strip() == _digest_for_module(csrc):
        return built
    return None


def install_module(package_dir: Path, csrc: Path) -> Path:
    """Build the module into ``package_dir`` with its digest stamp (setup.py, at install time)."""
    built = build_module(package_dir / module_filename(), csrc)
    (package_dir / (MODULE_NAME + ".digest")).write_text(_digest_for_module(csrc) + "\n")
    return built


def module_path() -> Path:
    """The emulated extension for the current sources: the installed one, else a cached build."""
    csrc = source_dir()
    packaged = packaged_module(csrc)
    if packaged is not None:
        return packaged
    target = cache_dir() / _digest_for_module(csrc) / module_filename()
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    import fcntl  # POSIX; the emulation's fibers are POSIX too

    with open(target.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build when several processes start at once
        if not target.is_file():
            print(f"fastgan: building the emulated CUDA kernels into {target.parent} (once)", file=sys.stderr, flush=True)
            build_module(target, csrc)
    return target


@functools.lru_cache(maxsize=None)
def load():
    """The ``fastgan._C_emulated`` module (built on first use); raises :class:`EmulationError`."""
    path = module_path()
    name = f"fastgan.{MODULE_NAME}"
    loader = importlib.machinery.ExtensionFileLoader(name, str(path))
    spec = importlib.util.spec_from_file_location(name, str(path), loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    sys.modules[name] = module
    return module


@functools.lru_cache(maxsize=None)
def _controls() -> ctypes.CDLL:
    library = ctypes.CDLL(load().__file__)
    library.fastgan_emu_launch_count.restype = ctypes.c_uint64
    library.fastgan_emu_set_schedule.argtypes = [ctypes.c_int, ctypes.c_uint64]
    library.fastgan_emu_set_schedule.restype = ctypes.c_int
    return library


def launch_count() -> int:
    """Kernel launches made by the emulated extension in this process so far."""
    return int(_controls().fastgan_emu_launch_count())


@contextlib.contextmanager
def count_launches() -> Iterator[list]:
    """``with count_launches() as launches: ...`` leaves the launch count of the block in ``launches[0]``."""
    result = [0]
    before = launch_count()
    try:
        yield result
    finally:
        result[0] = launch_count() - before


def set_schedule(kind: str, seed: int = 0) -> None:
    """The order emulated threads are resumed in: ``forward``, ``reverse`` or ``random`` (seeded)."""
    if kind not in SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}; got {kind!r}")
    _controls().fastgan_emu_set_schedule(SCHEDULES[kind], seed)
