"""Kernel report: what fastgan's kernels compile to on sm_90 (H200), shown without a GPU.

    python bench/kernel_report.py                 # -> bench/KERNELS.md and bench/kernel_report.json
    python bench/kernel_report.py --out-dir DIR   # elsewhere

Three parts, each on the CPU:

1. Triton launches, recorded. Representative op calls (the shapes, dtypes and layouts the
   op tests and benchmarks use) run under the Triton interpreter with every ``kernel[grid]``
   launch intercepted; for each launch the specialisation a GPU launch would get (argument
   types, the integers specialised as 1 or as multiples of 16, the 16-byte aligned
   pointers, the constexprs) is computed with Triton's own binder for an sm_90 target. The
   interpreter's loads and stores are counted too (bytes per op call), and so are the
   kernel launches of each call (:func:`fastgan.ops._launch.count_launches`).
2. Triton kernels, compiled ahead of time. Every distinct specialisation is compiled with
   ``triton.compile(ASTSource(...), target=GPUTarget("cuda", 90, 32))`` (in worker processes
   without the interpreter; Triton caches the results) and its cubin read with the
   ``cuobjdump`` / ``nvdisasm`` Triton's wheel ships.
3. CUDA kernels. Every ``csrc/*.cu`` compiled with ``nvcc -cubin -arch=sm_90 -Xptxas -v``
   (the toolkit found as setup.py finds it) and read the same way.

Per kernel: registers per thread, spills (local-memory STL/LDL instructions, ptxas' spill
bytes), static and dynamic shared memory, theoretical occupancy on an H200, and the widest
global load and store in the SASS.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import hashlib
import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"
CACHE = Path(os.environ.get("FASTGAN_KERNEL_REPORT_CACHE", Path(tempfile.gettempdir()) / "fastgan-kernel-report"))

# The target: an H200 (sm_90, 132 SMs).
ARCH = 90
H200 = dict(sms=132, registers_per_sm=65536, shared_per_sm=228 * 1024, shared_per_block=227 * 1024,
            threads_per_sm=2048, blocks_per_sm=32, warps_per_sm=64, reserved_shared_per_block=1024,
            register_unit=256, shared_unit=128, max_registers_per_thread=255)

TRITON_MODULES = ("fastgan.kernels.bce", "fastgan.kernels.renyi", "fastgan.kernels.batch_norm")


# --------------------------------------------------------------------------------------
# Tools
# --------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _setup_module():
    """setup.py imported (not run), for its ``find_cuda_home``."""
    spec = importlib.util.spec_from_file_location("fastgan_setup", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cuda_home() -> tuple[Path | None, str]:
    """The CUDA toolkit, found as setup.py finds it: (root or None, where or why not)."""
    return _setup_module().find_cuda_home()


@functools.lru_cache(maxsize=None)
def triton_tools() -> dict[str, Path]:
    """Triton's bundled ptxas, cuobjdump and nvdisasm (those present)."""
    try:
        import triton
    except ImportError:
        return {}
    folder = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    return {name: folder / name for name in ("ptxas", "cuobjdump", "nvdisasm") if (folder / name).is_file()}


def missing_tools() -> str:
    """Why the report cannot be made here ('' when it can)."""
    tools = triton_tools()
    missing = [name for name in ("ptxas", "cuobjdump") if name not in tools]
    if missing:
        return f"Triton's wheel lacks {', '.join(missing)} (triton/backends/nvidia/bin)"
    home, why = cuda_home()
    if home is None:
        return f"no CUDA toolkit for nvcc: {why}"
    return ""


# --------------------------------------------------------------------------------------
# Reading a cubin
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class KernelFacts:
    """What the machine code of one kernel function says."""

    registers: int
    static_shared: int  # bytes the kernel declares (the 1 KiB the system reserves per block excluded)
    local: int  # bytes of local memory per thread (spills, or stack arrays)
    stack: int
    spill_instructions: int  # STL/LDL in the SASS
    widest_load: int  # bits of the widest global load (LDG), 0 if none
    widest_store: int  # bits of the widest global store (STG), 0 if none
    loads: dict  # {"LDG.E.128": count, ...}
    stores: dict


_WIDTH_SUFFIX = {"U8": 8, "S8": 8, "U16": 16, "S16": 16, "64": 64, "128": 128, "256": 256}


def access_width(mnemonic: str) -> int:
    """Bits moved per thread by an LDG/STG mnemonic (``LDG.E.128`` -> 128, ``STG.E.U16`` -> 16)."""
    width = 32
    for part in mnemonic.split(".")[1:]:
        width = _WIDTH_SUFFIX.get(part, width)
    return width


def _run(command: list, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in command], capture_output=True, text=True, check=False, **kwargs)


def read_cubin(path: Path) -> dict[str, KernelFacts]:
    """Facts for every kernel function of a cubin, keyed by (mangled) name."""
    tools = triton_tools()
    usage = _run([tools["cuobjdump"], "--dump-resource-usage", path]).stdout
    resources = {}
    for name, fields in re.findall(r"Function (\S+):\s*\n\s*(REG:.*)", usage):
        values = dict(re.findall(r"(\w+(?:\[\d+\])?):(\d+)", fields))
        resources[name] = {key: int(value) for key, value in values.items()}
    sass = _run([tools["cuobjdump"], "-sass", path]).stdout
    per_function: dict[str, list[str]] = {}
    current = None
    for line in sass.splitlines():
        match = re.match(r"\s*Function : (\S+)", line)
        if match:
            current = match.group(1)
            per_function[current] = []
        elif current is not None:
            found = re.search(r"\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", line)
            if found:
                per_function[current].append(found.group(1))
    facts = {}
    for name, values in resources.items():
        mnemonics = per_function.get(name, [])
        loads = _tally(m for m in mnemonics if m.startswith("LDG"))
        stores = _tally(m for m in mnemonics if m.startswith("STG"))
        shared = values.get("SHARED", 0)
        facts[name] = KernelFacts(
            registers=values.get("REG", 0),
            static_shared=max(0, shared - H200["reserved_shared_per_block"]) if shared else 0,
            local=values.get("LOCAL", 0),
            stack=values.get("STACK", 0),
            spill_instructions=sum(1 for m in mnemonics if m.startswith(("STL", "LDL"))),
            widest_load=max((access_width(m) for m in loads), default=0),
            widest_store=max((access_width(m) for m in stores), default=0),
            loads=loads,
            stores=stores,
        )
    return facts


def _tally(items) -> dict:
    counts: dict = {}
    for item in items:
        counts[item] = counts.get(item, 0) + 1
    return dict(sorted(counts.items()))


def occupancy(registers: int, shared_bytes: int, threads: int) -> float:
    """Theoretical occupancy (resident warps / 64) of a kernel on an H200 SM."""
    warps = -(-threads // 32)
    per_warp = -(-max(registers, 1) * 32 // H200["register_unit"]) * H200["register_unit"]
    by_registers = (H200["registers_per_sm"] // per_warp) // warps
    block_shared = shared_bytes + H200["reserved_shared_per_block"]
    block_shared = -(-block_shared // H200["shared_unit"]) * H200["shared_unit"]
    by_shared = H200["shared_per_sm"] // block_shared
    by_threads = H200["threads_per_sm"] // (warps * 32)
    blocks = min(by_registers, by_shared, by_threads, H200["blocks_per_sm"])
    return blocks * warps / H200["warps_per_sm"]


# --------------------------------------------------------------------------------------
# CUDA kernels: nvcc for sm_90
# --------------------------------------------------------------------------------------

_PTXAS_ENTRY = re.compile(r"Compiling entry function '(\S+)' for 'sm_\d+'")
_PTXAS_SPILLS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")


def compile_cuda(source: Path) -> tuple[Path, dict[str, dict]]:
    """``nvcc -cubin`` for sm_90 of one ``csrc/*.cu``; returns the cubin and ptxas' -v figures
    per kernel (registers, spill store/load bytes, stack frame). Results are kept in
    :data:`CACHE` keyed by the sources (the .cu and every header beside it) and the command."""
    home, why = cuda_home()
    if home is None:
        raise RuntimeError(f"no CUDA toolkit: {why}")
    command = [home / "bin" / "nvcc", "-O3", "-std=c++17", "--expt-relaxed-constexpr", f"-arch=sm_{ARCH}", "-cubin",
               "-Xptxas", "-v", f"-I{source.parent}"]
    digest = hashlib.sha1(" ".join(map(str, command)).encode())
    for dependency in [source] + sorted(source.parent.glob("*.h")) + sorted(source.parent.glob("*.cuh")):
        digest.update(dependency.name.encode() + dependency.read_bytes())
    cached = CACHE / f"{source.stem}-{digest.hexdigest()[:16]}"
    cubin, log = cached.with_suffix(".cubin"), cached.with_suffix(".ptxas.txt")
    if not (cubin.is_file() and log.is_file()):
        CACHE.mkdir(parents=True, exist_ok=True)
        result = _run(command + ["-o", cubin, source])
        if result.returncode != 0:
            raise RuntimeError(f"nvcc failed on {source.name}:\n{result.stderr}")
        log.write_text(result.stderr)
    figures: dict[str, dict] = {}
    result = subprocess.CompletedProcess([], 0, "", log.read_text())
    current = None
    for line in result.stderr.splitlines():
        entry = _PTXAS_ENTRY.search(line)
        if entry:
            current = entry.group(1)
            figures[current] = {}
            continue
        spills = _PTXAS_SPILLS.search(line)
        if spills and current:
            figures[current].update(stack_frame=int(spills.group(1)), spill_stores=int(spills.group(2)),
                                    spill_loads=int(spills.group(3)))
    return cubin, figures


def demangle(names: list[str]) -> dict[str, str]:
    home, _ = cuda_home()
    filt = None
    if home is not None and (home / "bin" / "cu++filt").is_file():
        filt = home / "bin" / "cu++filt"
    elif shutil.which("c++filt"):
        filt = shutil.which("c++filt")
    if filt is None:
        return {name: name for name in names}
    result = _run([filt], input="\n".join(names))
    lines = result.stdout.splitlines()
    return dict(zip(names, lines)) if len(lines) == len(names) else {name: name for name in names}


_CUDA_DTYPES = {"__nv_bfloat16": "bfloat16", "__half": "float16", "float": "float32"}


def cuda_dtype(demangled: str) -> str:
    """The element dtype(s) a CUDA kernel instantiation is specialised for, in template order
    (``float16+bfloat16`` for mixed operands); 'runtime' when its template arguments name
    none: the dtype is then chosen per element at run time."""
    template = _without_arguments(demangled)
    if "<" not in template:
        return "runtime"
    found = re.findall(r"\b(__nv_bfloat16|__half|float)\b", template[template.index("<"):])
    dtypes = list(dict.fromkeys(_CUDA_DTYPES[name] for name in found))
    return "+".join(dtypes) if dtypes else "runtime"


def _without_arguments(demangled: str) -> str:
    """``void ns::kernel<T>(Args)`` -> ``ns::kernel<T>`` (anonymous namespaces dropped)."""
    text = demangled.replace("(anonymous namespace)::", "")
    text = re.sub(r"^void ", "", text)
    depth = 0
    for index, char in enumerate(text):
        depth += char == "<"
        depth -= char == ">"
        if char == "(" and depth == 0:
            return text[:index]
    return text


def cuda_kernel_name(demangled: str) -> str:
    """The kernel's own name: namespaces, template arguments and parameters dropped."""
    base = _without_arguments(demangled)
    base = base.split("<", 1)[0]
    return base.split("::")[-1]


def cuda_report() -> list[dict]:
    """One row per CUDA kernel instantiation in csrc/*.cu, compiled for sm_90 (the files in
    parallel)."""
    from concurrent.futures import ThreadPoolExecutor

    sources = sorted(CSRC.glob("*.cu"))
    with ThreadPoolExecutor(max_workers=len(sources) or 1) as pool:
        compiled = list(pool.map(compile_cuda, sources))
    rows = []
    for source, (cubin, figures) in zip(sources, compiled):
        facts = read_cubin(cubin)
        names = demangle(list(facts))
        bounds = launch_bounds(cubin)
        for mangled, fact in sorted(facts.items(), key=lambda item: names[item[0]]):
            ptxas = figures.get(mangled, {})
            threads = bounds.get(mangled, 0)
            rows.append(dict(
                source=source.name, kernel=cuda_kernel_name(names[mangled]),
                signature=_without_arguments(names[mangled]).replace("fastgan::", ""),
                dtype=cuda_dtype(names[mangled]), **dataclasses.asdict(fact),
                spill_bytes=ptxas.get("spill_stores", 0) + ptxas.get("spill_loads", 0),
                dynamic_shared=0, threads=threads,
                occupancy=occupancy(fact.registers, fact.static_shared, threads) if threads else None,
            ))
    return rows


def launch_bounds(cubin: Path) -> dict[str, int]:
    """Threads per block each kernel declares in ``__launch_bounds__`` (EIATTR_MAX_THREADS in
    its .nv.info section), keyed by mangled name; kernels without one are absent."""
    elf = _run([triton_tools()["cuobjdump"], "-elf", cubin]).stdout
    bounds = {}
    for name, body in re.findall(r"^\.nv\.info\.(\S+)\n(.*?)(?=^\.\S|\Z)", elf, flags=re.MULTILINE | re.DOTALL):
        found = re.search(r"EIATTR_MAX_THREADS\s*\n\s*Format:.*\n\s*Value:\s*"
                          r"(0x[0-9a-f]+)\s+(0x[0-9a-f]+)\s+(0x[0-9a-f]+)", body)
        if found:
            bounds[name] = math.prod(int(v, 16) for v in found.groups())
    return bounds


# --------------------------------------------------------------------------------------
# Triton launches: recorded under the interpreter
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class Launch:
    """One recorded launch: the kernel and the specialisation a GPU launch would compile."""

    case: str
    module: str
    kernel: str
    signature: dict
    constexprs: list  # [[path, value], ...]
    attrs: list  # [[path, [[name, value], ...]], ...]
    options: dict  # num_warps, num_stages, num_ctas, enable_fp_fusion
    grid: list
    bytes_moved: int = 0  # bytes its loads and stores requested (when executed)

    @property
    def key(self) -> str:
        return json.dumps([self.module, self.kernel, self.signature, self.constexprs, self.attrs, self.options],
                          sort_keys=True)

    @property
    def dtype(self) -> str:
        """The element type of the kernel's first pointer argument (its data)."""
        for value in self.signature.values():
            if isinstance(value, str) and value.startswith("*"):
                return value[1:]
        return "-"


@functools.lru_cache(maxsize=None)
def _sm90_backend():
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend

    return make_backend(GPUTarget("cuda", ARCH, 32))


@functools.lru_cache(maxsize=None)
def _binder(fn):
    """Triton's own argument binder for ``fn`` against an sm_90 backend: what a launch on an
    H200 would specialise on."""
    from triton.runtime import jit

    jit_fn = jit.JITFunction(fn)
    return jit_fn, jit.create_function_from_signature(jit_fn.signature, jit_fn.params, _sm90_backend())


def specialise(kernel, args, kwargs) -> tuple[dict, list, list, dict]:
    """(signature, constexprs, attrs, options) of a launch of ``kernel`` with these arguments."""
    fn = kernel.fn
    jit_fn, binder = _binder(fn)
    bound, specialisation, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = jit_fn._pack_args(_sm90_backend(), kwargs, bound, specialisation, options)
    kept = {name: getattr(options, name) for name in ("num_warps", "num_stages", "num_ctas", "enable_fp_fusion")}
    return (dict(signature), [[list(path), value] for path, value in sorted(constexprs.items())],
            [[list(path), [list(a) for a in value]] for path, value in sorted(attrs.items()) if value], kept)


class Recorder:
    """Intercepts Triton launches (interpreted) to record their specialisations, and counts
    the bytes the interpreter's loads and stores move (masked-off lanes excluded).
    ``execute=False`` records without running the kernels (fast; their outputs are then
    uninitialised, which changes no launch: the ops plan launches from shapes and strides)."""

    def __init__(self, execute: bool = True):
        self.execute = execute
        self.launches: list[Launch] = []
        self.case = ""
        self.bytes_loaded = 0
        self.bytes_stored = 0

    @contextlib.contextmanager
    def active(self):
        from triton.runtime import interpreter

        recorder = self
        original_run = interpreter.InterpretedFunction.run
        builder = interpreter.InterpreterBuilder
        original_load, original_store = builder.create_masked_load, builder.create_masked_store

        def run(kernel, *args, grid, warmup, **kwargs):
            if warmup:
                return original_run(kernel, *args, grid=grid, warmup=warmup, **kwargs)
            signature, constexprs, attrs, options = specialise(kernel, args, kwargs)
            launch = Launch(recorder.case, kernel.fn.__module__, kernel.fn.__name__, signature, constexprs, attrs,
                            options, list(grid) if isinstance(grid, (tuple, list)) else [str(grid)])
            recorder.launches.append(launch)
            if not recorder.execute:
                return None
            before = recorder.bytes_loaded + recorder.bytes_stored
            result = original_run(kernel, *args, grid=grid, warmup=warmup, **kwargs)
            launch.bytes_moved = recorder.bytes_loaded + recorder.bytes_stored - before
            return result

        def masked_load(self, ptrs, mask, other, *rest):
            recorder.bytes_loaded += int(mask.data.sum()) * ptrs.get_element_ty().primitive_bitwidth // 8
            return original_load(self, ptrs, mask, other, *rest)

        def masked_store(self, ptrs, value, mask, *rest):
            recorder.bytes_stored += int(mask.data.sum()) * ptrs.get_element_ty().primitive_bitwidth // 8
            return original_store(self, ptrs, value, mask, *rest)

        interpreter.InterpretedFunction.run = run
        builder.create_masked_load, builder.create_masked_store = masked_load, masked_store
        try:
            yield self
        finally:
            interpreter.InterpretedFunction.run = original_run
            builder.create_masked_load, builder.create_masked_store = original_load, original_store


# --------------------------------------------------------------------------------------
# Compiling the recorded specialisations (worker processes, no interpreter)
# --------------------------------------------------------------------------------------


def _compile_worker_init():
    os.environ["TRITON_INTERPRET"] = "0"
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")


def _compile_one(job: tuple[str, str, dict, list, list, dict, str]) -> dict:
    """Compile one specialisation for sm_90; returns its facts (runs in a worker process)."""
    module_name, kernel_name, signature, constexprs, attrs, options, cubin_path = job
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget

    kernel = getattr(importlib.import_module(module_name), kernel_name)
    source = triton.compiler.ASTSource(
        kernel, signature, constexprs={tuple(path): value for path, value in constexprs},
        attrs={tuple(path): [tuple(a) for a in value] for path, value in attrs},
    )
    compiled = triton.compile(source, target=GPUTarget("cuda", ARCH, 32), options=options)
    Path(cubin_path).write_bytes(compiled.asm["cubin"])
    facts = read_cubin(Path(cubin_path))
    fact = facts.get(compiled.metadata.name) or next(iter(facts.values()))
    return dict(dataclasses.asdict(fact), dynamic_shared=compiled.metadata.shared,
                threads=compiled.metadata.num_warps * 32)


@functools.lru_cache(maxsize=None)
def _module_digest(module_name: str) -> str:
    """Digest of a kernel module's source and the Triton version (what its cubins depend on)."""
    import triton

    origin = importlib.util.find_spec(module_name).origin
    return hashlib.sha1(Path(origin).read_bytes() + triton.__version__.encode()).hexdigest()


def compile_triton(launches: list[Launch], jobs: int = 2) -> dict[str, dict]:
    """Facts for every distinct specialisation in ``launches``, keyed by :attr:`Launch.key`.
    Each is kept in :data:`CACHE` (by specialisation, kernel source and Triton version), so
    only new ones start compiler processes."""
    CACHE.mkdir(parents=True, exist_ok=True)
    distinct = {}
    for launch in launches:
        distinct.setdefault(launch.key, launch)
    facts, work = {}, []
    for key, launch in distinct.items():
        stem = f"{launch.kernel}-{hashlib.sha1((key + _module_digest(launch.module)).encode()).hexdigest()[:20]}"
        cached = CACHE / f"{stem}.json"
        if cached.is_file():
            facts[key] = json.loads(cached.read_text())
            continue
        work.append((key, cached, (launch.module, launch.kernel, launch.signature, launch.constexprs, launch.attrs,
                                   launch.options, str(CACHE / f"{stem}.cubin"))))
    if work:
        import multiprocessing

        # The workers import this file by its module name (tests load it by path).
        for folder in (str(Path(__file__).resolve().parent), str(ROOT)):
            if folder not in sys.path:
                sys.path.append(folder)
        with ProcessPoolExecutor(max_workers=max(1, min(jobs, len(work))),
                                 mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_compile_worker_init) as pool:
            results = list(pool.map(_compile_one, [job for _, _, job in work]))
        for (key, cached, _), result in zip(work, results):
            result["occupancy"] = occupancy(result["registers"], result["static_shared"] + result["dynamic_shared"],
                                            result["threads"])
            cached.write_text(json.dumps(result))
            facts[key] = result
    return facts


# --------------------------------------------------------------------------------------
# Workloads: the op calls whose launches are recorded
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class Case:
    """One op call: ``make()`` draws the inputs and returns ``(call, inputs)``, ``call()``
    running the op and returning the outputs to differentiate with respect to ``inputs``."""

    name: str
    op: str
    dtype: str
    elements: int  # elements of the op's main input (logits, or the activation)
    compulsory_fwd: float  # compulsory bytes per element (bench/README.md), forward
    compulsory_fwd_bwd: float  # forward + backward
    make: object
    latency: bool  # in the latency regime (<= 16,384 logits): one launch per direction is the rule


def _logits(shape, dtype, offset=0):
    import torch

    return (torch.randn(*shape, dtype=torch.float32) * 3 + 0.5).to(dtype).requires_grad_()


def _grad_call(outputs, inputs):
    import torch

    outputs = [o for o in outputs if o.requires_grad]
    grads = [torch.ones_like(o) for o in outputs]

    def backward():
        torch.autograd.grad(outputs, inputs, grads, allow_unused=True)

    return backward


DTYPES = ("float32", "bfloat16")


def cases(backend: str = "triton", dtypes=DTYPES, bandwidth: bool = True) -> list[Case]:
    """The op calls of the report: every op and path, at latency sizes that are and are not
    multiples of the vector width, and (``bandwidth``) at a multi-program size."""
    import torch
    import torch.nn.functional  # noqa: F401

    from fastgan.ops import batch_norm_leaky_relu, bce_with_logits, gan_bce_losses, renyi_divergence

    found = []

    def add(name, op, dtype, elements, compulsory, make, latency):
        found.append(Case(name, op, dtype, elements, compulsory[0], compulsory[1], make, latency))

    for dtype_name in dtypes:
        dtype = getattr(torch, dtype_name)
        size = torch.tensor([], dtype=dtype).element_size()
        bce_sizes = [100, 1000, 16384] + ([1 << 20] if bandwidth else [])
        for n in bce_sizes:
            def bce(n=n, dtype=dtype):
                x, y = _logits((n,), dtype), torch.rand(n).to(dtype)
                return (lambda: (bce_with_logits(x, y, backend=backend),)), (x,)

            add(f"bce_with_logits mean n={n}", "bce_with_logits", dtype_name, n, (2 * size, 3 * size), bce,
                n <= 16384)

        def bce_scalar_target(dtype=dtype):
            x = _logits((256,), dtype)
            return (lambda: (bce_with_logits(x, 0.9, backend=backend),)), (x,)

        add("bce_with_logits mean, float target n=256", "bce_with_logits", dtype_name, 256, (size, 2 * size),
            bce_scalar_target, True)

        def bce_none(dtype=dtype):
            x, y = _logits((64, 10), dtype), torch.rand(64, 10).to(dtype)
            pos_weight = torch.rand(10).to(dtype) + 0.5
            return (lambda: (bce_with_logits(x, y, pos_weight=pos_weight, reduction="none", backend=backend),)), (x,)

        add("bce_with_logits none, pos_weight (64,10)", "bce_with_logits", dtype_name, 640, (3 * size, 4 * size),
            bce_none, True)

        def bce_strided(dtype=dtype):
            x = _logits((96, 8), dtype).detach()[:, 1].requires_grad_()
            target = torch.ones(96, dtype=dtype)
            return (lambda: (bce_with_logits(x, target, backend=backend),)), (x,)

        add("bce_with_logits mean, strided column n=96", "bce_with_logits", dtype_name, 96, (2 * size, 3 * size),
            bce_strided, True)

        gan_sizes = [(64, 64), (96, 100), (100, 96), (8192, 8192)] + ([(1 << 19, 1 << 19)] if bandwidth else [])
        for n_real, n_fake in gan_sizes:
            def gan(n_real=n_real, n_fake=n_fake, dtype=dtype):
                real, fake = _logits((n_real,), dtype), _logits((n_fake, 1), dtype)
                return (lambda: (gan_bce_losses(real, fake, backend=backend).d_loss,)), (real, fake)

            add(f"gan_bce_losses d_loss real={n_real} fake={n_fake}", "gan_bce_losses", dtype_name,
                n_real + n_fake, (size, 2 * size), gan, n_real + n_fake <= 16384)

        renyi_sizes = [100, 1000, 16384] + ([1 << 20] if bandwidth else [])
        for n in renyi_sizes:
            def renyi(n=n, dtype=dtype):
                r = _logits((n,), dtype)
                return (lambda: (renyi_divergence(r, 0.5, backend=backend),)), (r,)

            add(f"renyi_divergence n={n}", "renyi_divergence", dtype_name, n, (size, 3 * size), renyi, n <= 16384)

        def renyi_rows(dtype=dtype):
            r = _logits((4, 100), dtype)
            return (lambda: (renyi_divergence(r, 2.0, dim=1, backend=backend),)), (r,)

        add("renyi_divergence (4, 100) over dim 1", "renyi_divergence", dtype_name, 400, (size, 3 * size),
            renyi_rows, True)

        # H·W and C multiples of 16, of 8 (8x5, C=24), of 4 (14x14, C=100) and odd (7x7).
        bn_shapes = [((4, 32, 16, 16), "nchw"), ((4, 32, 8, 5), "nchw"), ((4, 32, 14, 14), "nchw"),
                     ((4, 32, 7, 7), "nchw"), ((4, 32, 16, 16), "channels_last"), ((4, 24, 7, 7), "channels_last"),
                     ((4, 100, 7, 7), "channels_last"), ((32, 128), "nchw")]
        for shape, layout in bn_shapes:
            for training in (True, False):
                def bn(shape=shape, layout=layout, training=training, dtype=dtype):
                    x = torch.randn(*shape).to(dtype) * 2 + 1
                    if layout == "channels_last":
                        x = x.contiguous(memory_format=torch.channels_last)
                    x.requires_grad_()
                    c = shape[1]
                    weight = (torch.rand(c) + 0.5).requires_grad_()
                    bias = torch.randn(c).requires_grad_()
                    running_mean, running_var = torch.zeros(c), torch.ones(c)
                    return (lambda: (batch_norm_leaky_relu(x, weight, bias, running_mean, running_var, training, 0.1,
                                                           1e-5, 0.2, backend=backend),)), (x, weight, bias)

                elements = math.prod(shape)
                passes = (3, 8) if training else (2, 4)
                mode = "train" if training else "eval"
                add(f"batch_norm_leaky_relu {mode} {'x'.join(map(str, shape))} {layout}", "batch_norm_leaky_relu",
                    dtype_name, elements, (passes[0] * size, passes[1] * size), bn, False)
    return found


def run_cases(selected: list[Case], recorder: Recorder | None = None) -> list[dict]:
    """Run each case once (forward, then backward), recording launches and bytes; returns one
    row per case with its launch counts per direction and bytes moved per element."""
    import torch

    from fastgan.ops import _launch

    rows = []
    for case in selected:
        torch.manual_seed(0)
        if recorder is not None:
            recorder.case = case.name
        call, inputs = case.make()
        call()  # warm-up: a first call may do one-time work
        first = len(recorder.launches) if recorder is not None else 0
        with _launch.count_launches() as forward_count:
            outputs = call()
        backward = _grad_call(outputs, inputs)
        with _launch.count_launches() as backward_count:
            backward()
        measured = recorder.launches[first:] if recorder is not None else []
        per_kernel: dict[str, float] = {}
        for launch in measured:
            per_kernel[launch.kernel] = per_kernel.get(launch.kernel, 0.0) + launch.bytes_moved / case.elements
        aten_bytes = forward_count.torch_bytes + backward_count.torch_bytes
        if aten_bytes:
            per_kernel["aten"] = aten_bytes / case.elements
        moved = sum(per_kernel.values()) * case.elements
        rows.append(dict(
            case=case.name, op=case.op, dtype=case.dtype, elements=case.elements, latency=case.latency,
            forward_launches=forward_count.names, backward_launches=backward_count.names,
            bytes_per_element=moved / case.elements, bytes_per_element_by_kernel=per_kernel,
            compulsory_fwd_bwd=case.compulsory_fwd_bwd,
        ))
    return rows


def record(selected: list[Case], execute: bool = True) -> tuple[list[Launch], list[dict]]:
    """Run ``selected`` under the Triton interpreter, recording every launch (see :class:`Recorder`)."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("recording needs the Triton interpreter: set TRITON_INTERPRET=1 before triton is imported")
    recorder = Recorder(execute)
    with recorder.active():
        rows = run_cases(selected, recorder)
    return recorder.launches, rows


def count_cuda_launches(selected: list[Case]) -> dict[str, tuple[list, list]]:
    """Launch names per direction of each case (from :func:`cases` with ``backend="cuda"``),
    keyed ``"case|dtype"``; under CUDA emulation on a CPU. Empty when the cuda backend cannot
    run here on CPU tensors."""
    import torch

    from fastgan import _backend

    if _backend._why_not("cuda", torch.device("cpu"), torch.float32):
        return {}
    rows = run_cases(selected)
    return {row["case"] + "|" + row["dtype"]: (row["forward_launches"], row["backward_launches"]) for row in rows}


# --------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------

# Kernels that move activation- or logit-sized data (the rest touch per-channel or
# per-program vectors): their contiguous paths must use 128-bit accesses where the data
# allows. Value: whether they also store per-element outputs.
BANDWIDTH_BOUND_TRITON = {
    "bce_with_logits_forward_kernel": True, "gan_bce_forward_kernel": True, "renyi_forward_kernel": False,
    "renyi_backward_kernel": True, "bn_partial_statistics_kernel": False, "bn_leaky_relu_forward_kernel": True,
    "bn_leaky_relu_backward_reduce_kernel": False, "bn_leaky_relu_backward_input_kernel": True,
}
BANDWIDTH_BOUND_CUDA = {
    "bce_with_logits_forward_kernel": True, "gan_bce_forward_kernel": True, "renyi_forward_kernel": False,
    "renyi_backward_kernel": True, "bn_partial_statistics_kernel": False, "bn_forward_elementwise_kernel": True,
    "bn_backward_reduce_kernel": False, "bn_backward_input_kernel": True,
}


def specialisation_label(launch: Launch) -> str:
    """The constexprs a launch fixed (flags that are on, sizes), and its unaligned pointers."""
    names = list(launch.signature)
    parts = []
    for path, value in launch.constexprs:
        name = names[path[0]]
        if not name.isupper():
            continue
        if value is True:
            parts.append(name)
        elif value is not False:
            parts.append(f"{name}={value}")
    aligned = {names[path[0]] for path, _ in launch.attrs}
    unaligned = [n for n, t in launch.signature.items() if isinstance(t, str) and t.startswith("*")
                 and n not in aligned]
    if unaligned:
        parts.append("unaligned " + "/".join(n.removesuffix("_ptr") for n in unaligned))
    return ", ".join(parts)


def _width(bits: int) -> str:
    return f"{bits}-bit" if bits else "-"


def _mix(counts: dict) -> str:
    return " ".join(f"{name.split('.', 1)[1] if '.' in name else name}×{n}" for name, n in counts.items()) or "-"


def _launch_cell(names: list) -> str:
    if not names:
        return "0"
    short = [n.split(":", 1)[1] if n.startswith("triton:") else n.replace("torch:", "aten ").replace(":", " ")
             for n in names]
    return f"{len(names)}: " + ", ".join(short)


def summary_rows(triton: list[dict], cuda: list[dict]) -> list[dict]:
    """Per kernel and dtype: how many specialisations (or instantiations), the register and
    occupancy range, the most shared memory, spills, and the widest accesses reached."""
    groups: dict = {}
    for source, rows in (("triton", triton), ("cuda", cuda)):
        for row in rows:
            groups.setdefault((source, row["kernel"], row["dtype"]), []).append(row)
    summary = []
    for (source, kernel, dtype), rows in sorted(groups.items()):
        summary.append(dict(
            source=source, kernel=kernel, dtype=dtype, variants=len(rows),
            registers=(min(r["registers"] for r in rows), max(r["registers"] for r in rows)),
            occupancy=(min(r["occupancy"] or 0 for r in rows), max(r["occupancy"] or 0 for r in rows)),
            shared=max(r["static_shared"] + r["dynamic_shared"] for r in rows),
            spills=sum(r["spill_instructions"] for r in rows),
            widest_load=max(r["widest_load"] for r in rows), widest_store=max(r["widest_store"] for r in rows),
        ))
    return summary


def triton_rows(launches: list[Launch], facts: dict[str, dict]) -> list[dict]:
    """One row per distinct specialisation, with the cases that launched it."""
    rows: dict[str, dict] = {}
    for launch in launches:
        row = rows.get(launch.key)
        if row is None:
            row = rows[launch.key] = dict(kernel=launch.kernel, dtype=launch.dtype,
                                          specialisation=specialisation_label(launch), cases=[],
                                          **facts[launch.key])
        if launch.case not in row["cases"]:
            row["cases"].append(launch.case)
    return sorted(rows.values(), key=lambda r: (r["kernel"], r["dtype"], r["specialisation"]))


# A block of 1024 elements walked with narrow accesses costs 8 per thread and operand (fp32,
# 4 warps); remainders and per-channel vectors cost fewer. More than this many narrow
# accesses in a contiguous path means a whole block went scalar.
MAX_NARROW_ACCESSES = 7


def narrow_accesses(counts: dict) -> int:
    """How many of the LDG/STG instructions in ``counts`` move less than 128 bits."""
    return sum(n for mnemonic, n in counts.items() if access_width(mnemonic) < 128)


def check_rows(triton: list[dict], cuda: list[dict], required_triton: list[tuple]) -> list[str]:
    """The lines the CI test holds, as failures ('' list when all hold): no spills anywhere;
    128-bit loads (and stores where they write per-element outputs) in the bandwidth-bound
    kernels, fp32 and bf16, for Triton (the ``required_triton`` (kernel, dtype, case) launches)
    and CUDA (every instantiation of those kernels for float32 and bfloat16)."""
    failures = []
    for row in triton + cuda:
        where = f"{'cuda' if 'signature' in row else 'triton'} {row.get('signature', row['kernel'])} [{row['dtype']}]"
        if row["spill_instructions"] or row["local"] or row.get("spill_bytes", 0):
            failures.append(f"{where}: spills ({row['spill_instructions']} STL/LDL instructions, "
                            f"{row.get('spill_bytes', 0)} B spilled per ptxas, {row['local']} B local)")
    by_case = {}
    for row in triton:
        for case in row["cases"]:
            by_case.setdefault((row["kernel"], row["dtype"], case), []).append(row)
    for kernel, dtype, case in required_triton:
        found = by_case.get((kernel, dtype, case))
        if not found:
            failures.append(f"triton {kernel} [{dtype}] was not launched by {case!r}")
            continue
        for row in found:
            kinds = [("load", row["loads"])] + ([("store", row["stores"])] if BANDWIDTH_BOUND_TRITON[kernel] else [])
            for kind, counts in kinds:
                widest = max((access_width(m) for m in counts), default=0)
                if widest < 128 or narrow_accesses(counts) > MAX_NARROW_ACCESSES:
                    failures.append(f"triton {kernel} [{dtype}] ({case}): global {kind}s {_mix(counts)}")
    for kernel, stores in BANDWIDTH_BOUND_CUDA.items():
        for dtype in ("float32", "bfloat16"):
            found = [row for row in cuda if row["kernel"] == kernel and row["dtype"] == dtype]
            if not found:
                kinds = sorted({row["dtype"] for row in cuda if row["kernel"] == kernel}) or ["no instantiation"]
                failures.append(f"cuda {kernel}: no {dtype} instantiation (dtype as a template parameter); "
                                f"found {', '.join(kinds)}")
                continue
            widest_load = max(row["widest_load"] for row in found)
            widest_store = max(row["widest_store"] for row in found)
            if widest_load < 128:
                failures.append(f"cuda {kernel} [{dtype}]: widest global load {widest_load}-bit")
            if stores and widest_store < 128:
                failures.append(f"cuda {kernel} [{dtype}]: widest global store {widest_store}-bit")
    return failures


def write_markdown(path: Path, report: dict) -> None:
    lines = [
        "# Kernel report (sm_90, H200)",
        "",
        "Generated by `python bench/kernel_report.py` (see bench/README.md, *Kernel report*): no GPU was used.",
        "Triton kernels are compiled ahead of time for sm_90 with the specialisations the op calls below make",
        "(recorded under the Triton interpreter with Triton's own binder for an sm_90 target); CUDA kernels are",
        "`csrc/*.cu` compiled by nvcc for sm_90. Occupancy is theoretical, on an H200 SM (64K registers, 228 KB",
        "shared memory, 2048 threads, 32 blocks). Widest load/store: the widest LDG/STG in the SASS.",
        "",
        f"- Date (UTC): {report['date']}; commit {report['commit']}",
        f"- triton {report['versions']['triton']}, torch {report['versions']['torch']}, "
        f"nvcc {report['versions']['nvcc']}",
        "",
        "## Launches per op call",
        "",
        "Kernel launches of one call, per direction (the backward is `torch.autograd.grad` of the outputs),",
        "counted on the CPU with `fastgan.ops._launch.count_launches`: Triton launches under the interpreter,",
        "CUDA launches under `FASTGAN_CUDA_EMULATE=1`, and ATen operators that run a kernel (`aten ...`).",
        "*Moved*: bytes per element the call's loads and stores request (Triton path: the interpreter's",
        "unmasked lanes, plus the ATen operators' tensors), in all and by kernel, against the compulsory",
        "bytes of bench/README.md (fwd+bwd).",
        "",
        "| op call | dtype | triton fwd | triton bwd | cuda fwd | cuda bwd | moved B/elem | by kernel | "
        "compulsory B/elem |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["calls"]:
        cuda = report["cuda_calls"].get(row["case"] + "|" + row["dtype"])
        cuda_cells = (_launch_cell(cuda[0]), _launch_cell(cuda[1])) if cuda else ("n/a", "n/a")
        latency = " (latency)" if row["latency"] else ""
        by_kernel = ", ".join(f"{name.removesuffix('_kernel')} {value:.1f}"
                              for name, value in row["bytes_per_element_by_kernel"].items())
        lines.append(f"| {row['case']}{latency} | {row['dtype']} | {_launch_cell(row['forward_launches'])} | "
                     f"{_launch_cell(row['backward_launches'])} | {cuda_cells[0]} | {cuda_cells[1]} | "
                     f"{row['bytes_per_element']:.1f} | {by_kernel} | {row['compulsory_fwd_bwd']:g} |")
    lines += [
        "",
        "## Summary per kernel",
        "",
        "Over the specialisations (Triton) or template instantiations (CUDA) of each kernel and dtype below:",
        "register and occupancy ranges, the most shared memory (static + dynamic bytes), spill instructions,",
        "and the widest global load and store any of them reaches.",
        "",
        "| source | kernel | dtype | variants | registers | occupancy | shared | spills | widest load | "
        "widest store |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in summary_rows(report["triton"], report["cuda"]):
        low, high = row["registers"]
        occ_low, occ_high = row["occupancy"]
        lines.append(
            f"| {row['source']} | {row['kernel']} | {row['dtype']} | {row['variants']} | "
            f"{low}–{high} | {occ_low:.0%}–{occ_high:.0%} | {row['shared']} | {row['spills']} | "
            f"{_width(row['widest_load'])} | {_width(row['widest_store'])} |")
    lines += [
        "",
        "## Triton kernels",
        "",
        "One row per distinct specialisation (constexprs on, sizes; *unaligned*: pointers not 16-byte aligned in",
        "that launch). Registers per thread; spills = STL/LDL instructions; shared = static / dynamic bytes.",
        "",
        "| kernel | dtype | specialisation | launched by | regs | spills | shared | occupancy | widest load | "
        "widest store | loads | stores |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["triton"]:
        cases = "; ".join(row["cases"][:2]) + (f"; +{len(row['cases']) - 2}" if len(row["cases"]) > 2 else "")
        lines.append(
            f"| {row['kernel']} | {row['dtype']} | {row['specialisation']} | {cases} | {row['registers']} | "
            f"{row['spill_instructions']} | {row['static_shared']} / {row['dynamic_shared']} | "
            f"{row['occupancy']:.0%} | {_width(row['widest_load'])} | {_width(row['widest_store'])} | "
            f"{_mix(row['loads'])} | {_mix(row['stores'])} |")
    lines += [
        "",
        "## CUDA kernels",
        "",
        "Every kernel instantiation in `csrc/*.cu` (`nvcc -cubin -arch=sm_90 -Xptxas -v`); dtype from the",
        "template arguments (*runtime*: no dtype parameter, the element type is chosen per access). Spills:",
        "STL/LDL instructions and ptxas' spill bytes. Occupancy at the kernel's `__launch_bounds__` block size.",
        "",
        "| kernel | dtype | instantiation | regs | spills | shared | occupancy | widest load | widest store | "
        "loads | stores |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["cuda"]:
        occupancy_cell = f"{row['occupancy']:.0%}" if row["occupancy"] is not None else "-"
        lines.append(
            f"| {row['kernel']} | {row['dtype']} | `{row['signature']}` | {row['registers']} | "
            f"{row['spill_instructions']} / {row['spill_bytes']} B | {row['static_shared']} | {occupancy_cell} | "
            f"{_width(row['widest_load'])} | {_width(row['widest_store'])} | {_mix(row['loads'])} | "
            f"{_mix(row['stores'])} |")
    lines += ["", "## The lines CI holds (tests/test_kernel_report.py)", ""]
    if report["failures"]:
        lines.append("Not yet held:")
        lines.append("")
        lines += [f"- {failure}" for failure in report["failures"]]
    else:
        lines.append("All hold: no spills; 128-bit global loads and stores in every contiguous bandwidth-bound "
                     "path, float32 and bfloat16, Triton and CUDA.")
    path.write_text("\n".join(lines) + "\n")


def _versions() -> dict:
    import torch
    import triton

    home, _ = cuda_home()
    nvcc = "not found"
    if home is not None:
        found = re.search(r"release ([\d.]+)", _run([home / "bin" / "nvcc", "--version"]).stdout)
        nvcc = found.group(1) if found else "unknown"
    return dict(triton=triton.__version__, torch=torch.__version__, nvcc=nvcc)


def _commit() -> str:
    result = _run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"])
    return result.stdout.strip() or "unknown"


# The Triton launches whose widest accesses CI checks: contiguous paths, fp32 and bf16, at
# sizes where the data allows 128-bit accesses (not multiples of 16 among them).
def required_triton(dtypes=DTYPES) -> list[tuple]:
    required = []
    for dtype in dtypes:
        short = {"float32": "fp32", "bfloat16": "bf16"}[dtype]
        for case in ("bce_with_logits mean n=100", "bce_with_logits mean n=1000"):
            required.append(("bce_with_logits_forward_kernel", short, case))
        required.append(("gan_bce_forward_kernel", short, "gan_bce_losses d_loss real=96 fake=100"))
        required.append(("renyi_forward_kernel", short, "renyi_divergence n=1000"))
        required.append(("renyi_backward_kernel", short, "renyi_divergence n=1000"))
        # Sizes and strides whose alignment allows 16-byte vectors of this dtype: multiples of
        # 16, and (the launcher's ALIGN specialisation) of 8, and for float32 of 4.
        bn_cases = ["4x32x16x16 nchw", "4x32x8x5 nchw", "4x32x16x16 channels_last", "4x24x7x7 channels_last"]
        if dtype == "float32":
            bn_cases += ["4x32x14x14 nchw", "4x100x7x7 channels_last"]
        for shape in bn_cases:
            for kernel in ("bn_partial_statistics_kernel", "bn_leaky_relu_forward_kernel",
                           "bn_leaky_relu_backward_reduce_kernel", "bn_leaky_relu_backward_input_kernel"):
                required.append((kernel, short, f"batch_norm_leaky_relu train {shape}"))
    return required


def make_report(jobs: int = 2, bandwidth: bool = True) -> dict:
    """Record, compile and read everything; returns the report as a dict."""
    import datetime

    selected = cases("triton", bandwidth=bandwidth)
    launches, calls = record(selected)
    facts = compile_triton(launches, jobs=jobs)
    cuda = cuda_report()
    triton = triton_rows(launches, facts)
    return dict(
        date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"), commit=_commit(),
        versions=_versions(), target=dict(arch=f"sm_{ARCH}", **H200),
        calls=calls, cuda_calls=count_cuda_launches(cases("cuda", bandwidth=bandwidth)),
        triton=triton, cuda=cuda, failures=check_rows(triton, cuda, required_triton()),
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, default=ROOT / "bench", help="where KERNELS.md and the JSON go")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="compiler processes")
    parser.add_argument("--latency-only", action="store_true", help="skip the bandwidth-sized op calls")
    args = parser.parse_args(argv)
    # Before triton is imported: recording runs the kernels under the interpreter, and the
    # CUDA launches are counted under emulation.
    os.environ["TRITON_INTERPRET"] = "1"
    os.environ.setdefault("FASTGAN_CUDA_EMULATE", "1")
    why = missing_tools()
    if why:
        print(f"kernel_report: cannot compile for sm_90 here: {why}", file=sys.stderr)
        return 2
    sys.path.insert(0, str(ROOT))
    report = make_report(jobs=args.jobs, bandwidth=not args.latency_only)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "kernel_report.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    write_markdown(args.out_dir / "KERNELS.md", report)
    print(f"kernel_report: wrote {args.out_dir / 'KERNELS.md'} ({len(report['triton'])} Triton specialisations, "
          f"{len(report['cuda'])} CUDA kernels); {len(report['failures'])} lines not held")
    return 0


if __name__ == "__main__":
    sys.exit(main())
