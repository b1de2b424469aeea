"""Build script for fastgan: the Python package plus the optional CUDA extension ``fastgan._C``.

The extension's C++ includes no PyTorch headers, so this file never imports torch: it
compiles ``csrc/*.cu`` and ``csrc/bindings.cpp`` with nvcc and links them (CUDA runtime
statically) into ``fastgan/_C``. A build needs no GPU.

Beside it, ``fastgan._C_emulated``: the same CUDA sources built by the host C++ compiler
against csrc/emulation, so the ``cuda`` backend runs on CPU tensors under
``FASTGAN_CUDA_EMULATE=1`` (fastgan/_emulation.py, which builds it on first use when it is not
built here). The sources ship in the package (fastgan/csrc) for that.

And ``fastgan._C_cpu``: fastgan's native CPU kernels (csrc/cpu, plain C++ vectorized by the host
compiler; fastgan/_native.py), which the torch backend uses on the CPU where one pass does what
PyTorch's op does in several.

Environment:
  FASTGAN_BUILD_CUDA    auto (default): build when nvcc is found, else install without the
                        extension and say why in one line; 1: the extension is required;
                        0: never build it.
  FASTGAN_BUILD_EMULATED  auto (default): build the emulated extension when a host C++
                        compiler works, else say why in one line (it is then built on first
                        use); 1: required; 0: never at install time.
  FASTGAN_BUILD_CPU     auto (default): build the native CPU kernels when a host C++ compiler
                        works, else say why in one line (PyTorch's ops are used instead);
                        1: required; 0: never.
  TORCH_CUDA_ARCH_LIST  target architectures, e.g. "8.0;9.0+PTX" (the default).
  MAX_JOBS              parallel nvcc jobs (default: the number of CPUs).
  CUDA_HOME / CUDA_PATH the CUDA toolkit, when not found from nvcc on PATH or /usr/local/cuda.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
CSRC = ROOT / "csrc"
DEFAULT_ARCH_LIST = "8.0;9.0+PTX"
CONVENTIONAL_CUDA = Path("/usr/local/cuda")
CUDA_SOURCES = sorted(CSRC.glob("*.cu")) + [CSRC / "bindings.cpp"]


class BuildError(RuntimeError):
    """The CUDA extension cannot be built (the message says why)."""


def build_mode(environ=os.environ, variable: str = "FASTGAN_BUILD_CUDA") -> str:
    """A build switch (FASTGAN_BUILD_CUDA, FASTGAN_BUILD_EMULATED) as one of auto, 0, 1."""
    value = environ.get(variable, "auto").strip().lower() or "auto"
    aliases = {"auto": "auto", "1": "1", "true": "1", "yes": "1", "on": "1", "0": "0", "false": "0", "no": "0", "off": "0"}
    if value not in aliases:
        raise SystemExit(f"fastgan: {variable} must be auto, 0 or 1; got {value!r}")
    return aliases[value]


def parse_arch_list(text: str) -> list[tuple[str, bool]]:
    """Parse a TORCH_CUDA_ARCH_LIST value into [(compute capability digits, with PTX)].

    Accepts "8.0;9.0+PTX", "8.0 9.0", "80,90", "9.0a" separated by ';', ',' or spaces.
    """
    entries = [entry for entry in re.split(r"[;,\s]+", text.strip()) if entry]
    if not entries:
        raise BuildError("TORCH_CUDA_ARCH_LIST is empty")
    archs = []
    for entry in entries:
        match = re.fullmatch(r"(\d+)(?:\.(\d+))?([af]?)(\+PTX)?", entry, flags=re.IGNORECASE)
        if match is None:
            raise BuildError(
                f"TORCH_CUDA_ARCH_LIST entry {entry!r} is not an architecture like '8.0', '9.0+PTX' or '90'"
            )
        major, minor, suffix, ptx = match.groups()
        digits = major + minor if minor is not None else major
        if minor is None and len(major) < 2:
            raise BuildError(f"TORCH_CUDA_ARCH_LIST entry {entry!r} needs a minor version, e.g. '{major}.0'")
        archs.append((digits + suffix.lower(), ptx is not None))
    return archs


def gencode_flags(archs: list[tuple[str, bool]]) -> list[str]:
    """nvcc -gencode flags: SASS for every arch, plus PTX where '+PTX' was asked."""
    flags = []
    for digits, ptx in archs:
        flags += ["-gencode", f"arch=compute_{digits},code=sm_{digits}"]
        if ptx:
            flags += ["-gencode", f"arch=compute_{digits},code=compute_{digits}"]
    return flags


def _is_toolkit(root: Path) -> bool:
    return (root / "bin" / "nvcc").is_file() and (root / "include" / "cuda_runtime.h").is_file()


def _toolkit_from_nvcc(nvcc: str) -> Path | None:
    """The toolkit root behind an nvcc on PATH, asked of nvcc itself (it may be a wrapper script)."""
    try:
        # A dry run prints nvcc's own settings, among them _HERE_=<toolkit>/bin.
        result = subprocess.run(
            [nvcc, "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull],
            capture_output=True, text=True, timeout=60, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    for key in ("_HERE_", "TOP"):
        match = re.search(rf"^#\$ {key}=(.+)$", result.stdout + result.stderr, flags=re.MULTILINE)
        if match:
            place = Path(match.group(1).strip())
            for root in (place.parent, place):  # _HERE_ is <root>/bin
                if _is_toolkit(root):
                    return root.resolve()
    real = Path(nvcc).resolve()
    return real.parent.parent if _is_toolkit(real.parent.parent) else None


def find_cuda_home(environ=os.environ) -> tuple[Path | None, str]:
    """(toolkit root or None, where it was found or why not)."""
    for variable in ("CUDA_HOME", "CUDA_PATH"):
        value = environ.get(variable)
        if value:
            if _is_toolkit(Path(value)):
                return Path(value), variable
            return None, f"{variable}={value} is not a CUDA toolkit (no bin/nvcc or include/cuda_runtime.h)"
    nvcc = shutil.which("nvcc", path=environ.get("PATH"))
    if nvcc:
        root = _toolkit_from_nvcc(nvcc)
        if root is not None:
            return root, f"nvcc on PATH ({nvcc})"
    if _is_toolkit(CONVENTIONAL_CUDA):
        return CONVENTIONAL_CUDA.resolve(), str(CONVENTIONAL_CUDA)
    return None, "nvcc not found (set CUDA_HOME, put nvcc on PATH, or install the toolkit in /usr/local/cuda)"


def _builder(name: str):
    """fastgan/<name>.py, loaded by path (importing the package would import torch)."""
    spec = importlib.util.spec_from_file_location(f"_fastgan_build{name}", ROOT / "fastgan" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildCudaExtension(build_ext):
    """Compiles the extension with nvcc, without torch.utils.cpp_extension (torch is not a
    build dependency), then the emulated CPU build. In ``auto`` mode a failure leaves the
    package installable without it."""

    def run(self):
        mode = build_mode()
        if mode == "0":
            self._skip("FASTGAN_BUILD_CUDA=0")
        else:
            try:
                super().run()
            except BuildError as error:
                if mode == "1":
                    raise SystemExit(f"fastgan: FASTGAN_BUILD_CUDA=1 but the CUDA extension cannot be built: {error}")
                self._skip(f"{error} (set FASTGAN_BUILD_CUDA=1 to make this an error, 0 to silence it)")
        self._build_emulated()
        self._build_native_cpu()

    def _build_native_cpu(self) -> None:
        mode = build_mode(variable="FASTGAN_BUILD_CPU")
        if mode == "0":
            return
        builder = _builder("_native")
        target = Path(self.get_ext_fullpath("fastgan." + builder.MODULE_NAME))
        try:
            print(f"fastgan: building the native CPU kernels into {target}", flush=True)
            builder.build_module(target, CSRC)
        except builder.NativeBuildError as error:
            if mode == "1":
                raise SystemExit(f"fastgan: FASTGAN_BUILD_CPU=1 but the native CPU kernels cannot be built: {error}")
            print(f"fastgan: building without the native CPU kernels ({str(error).splitlines()[0]}); the torch "
                  "backend uses PyTorch's ops on the CPU (set FASTGAN_BUILD_CPU=1 to make this an error)",
                  file=sys.stderr, flush=True)

    def _build_emulated(self) -> None:
        mode = build_mode(variable="FASTGAN_BUILD_EMULATED")
        if mode == "0":
            return
        target = Path(self.get_ext_fullpath("fastgan._C_emulated"))
        builder = _builder("_emulation")
        try:
            print(f"fastgan: building the emulated CUDA kernels (FASTGAN_CUDA_EMULATE=1) into {target.parent}", flush=True)
            builder.install_module(target.parent, CSRC)
        except builder.EmulationError as error:
            if mode == "1":
                raise SystemExit(f"fastgan: FASTGAN_BUILD_EMULATED=1 but the emulated build failed: {error}")
            print(f"fastgan: the emulated CUDA kernels are not built now ({str(error).splitlines()[0]}); "
                  "FASTGAN_CUDA_EMULATE=1 builds them on first use", file=sys.stderr, flush=True)

    def _skip(self, why: str) -> None:
        self.extensions = []
        print(f"fastgan: building without the CUDA extension: {why}", file=sys.stderr, flush=True)

    def build_extension(self, ext: Extension) -> None:
        cuda_home, found_in = find_cuda_home()
        if cuda_home is None:
            raise BuildError(found_in)
        nvcc = str(cuda_home / "bin" / "nvcc")
        arch_text = os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip() or DEFAULT_ARCH_LIST
        archs = gencode_flags(parse_arch_list(arch_text))
        jobs = int(os.environ.get("MAX_JOBS", "0") or 0) or os.cpu_count() or 1
        print(f"fastgan: building fastgan._C with {nvcc} (found via {found_in}) for {arch_text}, {jobs} jobs")

        includes = [
            f"-I{CSRC}",
            f"-I{_pybind11_include()}",
            f"-I{sysconfig.get_paths()['include']}",
        ]
        common = ["-O3", "-std=c++17", "-Xcompiler", "-fPIC", "-Xcompiler", "-fvisibility=hidden",
                  f'-DFASTGAN_CUDA_ARCHS="{arch_text}"', *includes]
        build_temp = Path(self.build_temp) / "csrc"
        build_temp.mkdir(parents=True, exist_ok=True)
        jobs_list = []
        for source in CUDA_SOURCES:
            device_flags = [*archs, "--expt-relaxed-constexpr"] if source.suffix == ".cu" else []
            jobs_list.append([nvcc, *common, *device_flags, "-c", str(source),
                              "-o", str(build_temp / (source.name + ".o"))])
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            for result in pool.map(_run_compiler, jobs_list):
                if result:
                    raise BuildError(result)

        output = Path(self.get_ext_fullpath(ext.name))
        output.parent.mkdir(parents=True, exist_ok=True)
        objects = [cmd[cmd.index("-o") + 1] for cmd in jobs_list]
        error = _run_compiler([nvcc, "-shared", "--cudart", "static", *archs, *objects, "-o", str(output)])
        if error:
            raise BuildError(error)


def _pybind11_include() -> str:
    try:
        import pybind11
    except ImportError as error:
        raise BuildError(f"pybind11 is needed to build the extension ({error})") from error
    return pybind11.get_include()


def _run_compiler(command: list[str]) -> str:
    """Run one nvcc command; returns '' on success, else the error to report."""
    print(" ".join(command), flush=True)
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.stdout.strip():
        print(result.stdout, flush=True)
    if result.returncode != 0:
        return f"nvcc failed ({result.returncode}) on {command[-3] if '-c' in command else 'link'}:\n{result.stderr}"
    if result.stderr.strip():
        print(result.stderr, file=sys.stderr, flush=True)
    return ""


if __name__ == "__main__":
    setup(
        packages=find_packages(include=["fastgan", "fastgan.*"])
        + ["fastgan.kernels", "fastgan.csrc", "fastgan.csrc.cpu", "fastgan.csrc.emulation", "fastgan.csrc.testing"],
        package_dir={"fastgan.kernels": "kernels", "fastgan.csrc": "csrc"},
        # The CUDA sources, for the emulated build on first use (fastgan/_emulation.py).
        package_data={"fastgan.csrc": ["*.cu", "*.cuh", "*.h", "*.cpp"], "fastgan.csrc.cpu": ["*.h", "*.cpp"],
                      "fastgan.csrc.emulation": ["*.h", "*.cpp"],
                      "fastgan.csrc.testing": ["*.cu"]},
        ext_modules=[Extension("fastgan._C", sources=[str(p.relative_to(ROOT)) for p in CUDA_SOURCES])],
        cmdclass={"build_ext": BuildCudaExtension},
    )
