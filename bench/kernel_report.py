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


def compile_cuda(source: Path, out_dir: Path) -> tuple[Path, dict[str, dict]]:
    """``nvcc -cubin`` for sm_90 of one ``csrc/*.cu``; returns the cubin and ptxas' -v figures
    per kernel (registers, spill store/load bytes, stack frame)."""
    home, why = cuda_home()
    if home is None:
        raise RuntimeError(f"no CUDA toolkit: {why}")
    cubin = out_dir / (source.stem + ".sm_90.cubin")
    command = [home / "bin" / "nvcc", "-O3", "-std=c++17", "--expt-relaxed-constexpr", f"-arch=sm_{ARCH}", "-cubin",
               "-Xptxas", "-v", f"-I{CSRC}", "-o", cubin, source]
    result = _run(command)
    if result.returncode != 0:
        raise RuntimeError(f"nvcc failed on {source.name}:\n{result.stderr}")
    figures: dict[str, dict] = {}
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


_CUDA_DTYPES = (("__nv_bfloat16", "bfloat16"), ("__half", "float16"), ("float", "float32"))


def cuda_dtype(demangled: str) -> str:
    """The element dtype a CUDA kernel instantiation is specialised for ('runtime' when its
    template arguments name none: the dtype is then chosen per element at run time)."""
    template = demangled.split("(")[0]
    if "<" not in template:
        return "runtime"
    arguments = template[template.index("<"):]
    for spelled, dtype in _CUDA_DTYPES:
        if re.search(rf"\b{spelled}\b", arguments):
            return dtype
    return "runtime"


def cuda_kernel_name(demangled: str) -> str:
    base = demangled.split("(")[0]
    base = re.sub(r"<.*>", "", base)
    return base.split("::")[-1]


def cuda_report(out_dir: Path) -> list[dict]:
    """One row per CUDA kernel instantiation in csrc/*.cu, compiled for sm_90."""
    rows = []
    for source in sorted(CSRC.glob("*.cu")):
        cubin, figures = compile_cuda(source, out_dir)
        facts = read_cubin(cubin)
        names = demangle(list(facts))
        for mangled, fact in sorted(facts.items(), key=lambda item: names[item[0]]):
            ptxas = figures.get(mangled, {})
            threads = _cuda_threads(names[mangled])
            rows.append(dict(
                source=source.name, kernel=cuda_kernel_name(names[mangled]), signature=names[mangled],
                dtype=cuda_dtype(names[mangled]), **dataclasses.asdict(fact),
                spill_bytes=ptxas.get("spill_stores", 0) + ptxas.get("spill_loads", 0),
                dynamic_shared=0, threads=threads,
                occupancy=occupancy(fact.registers, fact.static_shared, threads) if threads else None,
            ))
    return rows


def _cuda_threads(demangled: str) -> int:
    """Threads per block: the kernels declare it in __launch_bounds__, which SASS does not
    keep; the sources use 256 throughout (kThreads), checked against csrc in the test."""
    return 256


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
    options: dict  # num_warps, num_stages, num_ctas
    grid: list

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
    kept = {name: getattr(options, name) for name in ("num_warps", "num_stages", "num_ctas")}
    return (dict(signature), [[list(path), value] for path, value in sorted(constexprs.items())],
            [[list(path), [list(a) for a in value]] for path, value in sorted(attrs.items()) if value], kept)


class Recorder:
    """Intercepts Triton launches (interpreted) to record their specialisations, and counts
    the bytes the interpreter's loads and stores move (masked-off lanes excluded)."""

    def __init__(self):
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
            if not warmup:
                signature, constexprs, attrs, options = specialise(kernel, args, kwargs)
                recorder.launches.append(Launch(
                    recorder.case, kernel.fn.__module__, kernel.fn.__name__, signature, constexprs, attrs, options,
                    list(grid) if isinstance(grid, (tuple, list)) else [str(grid)],
                ))
            return original_run(kernel, *args, grid=grid, warmup=warmup, **kwargs)

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


def compile_triton(launches: list[Launch], jobs: int = 2) -> dict[str, dict]:
    """Facts for every distinct specialisation in ``launches``, keyed by :attr:`Launch.key`."""
    CACHE.mkdir(parents=True, exist_ok=True)
    distinct = {}
    for launch in launches:
        distinct.setdefault(launch.key, launch)
    work = []
    for index, (key, launch) in enumerate(distinct.items()):
        cubin = CACHE / f"{launch.kernel}-{hashlib.sha1(key.encode()).hexdigest()[:16]}.cubin"
        work.append((key, (launch.module, launch.kernel, launch.signature, launch.constexprs, launch.attrs,
                           launch.options, str(cubin))))
    import multiprocessing

    with ProcessPoolExecutor(max_workers=max(1, jobs), mp_context=multiprocessing.get_context("spawn"),
                             initializer=_compile_worker_init) as pool:
        results = list(pool.map(_compile_one, [job for _, job in work]))
    facts = {}
    for (key, _), result in zip(work, results):
        result["occupancy"] = occupancy(result["registers"], result["static_shared"] + result["dynamic_shared"],
                                        result["threads"])
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

        gan_sizes = [(64, 64), (100, 100), (8192, 8192)] + ([(1 << 19, 1 << 19)] if bandwidth else [])
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

        bn_shapes = [((8, 64, 16, 16), "nchw"), ((8, 64, 14, 14), "nchw"), ((8, 64, 7, 7), "nchw"),
                     ((8, 64, 16, 16), "channels_last"), ((8, 100, 7, 7), "channels_last"),
                     ((32, 128), "nchw")]
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
        if recorder is not None:
            start_loaded, start_stored = recorder.bytes_loaded, recorder.bytes_stored
        with _launch.count_launches() as forward_count:
            outputs = call()
        backward = _grad_call(outputs, inputs)
        with _launch.count_launches() as backward_count:
            backward()
        moved = forward_count.torch_bytes + backward_count.torch_bytes
        if recorder is not None:
            moved += recorder.bytes_loaded - start_loaded + recorder.bytes_stored - start_stored
        rows.append(dict(
            case=case.name, op=case.op, dtype=case.dtype, elements=case.elements, latency=case.latency,
            forward_launches=forward_count.names, backward_launches=backward_count.names,
            bytes_per_element=moved / case.elements,
            compulsory_fwd_bwd=case.compulsory_fwd_bwd,
        ))
    return rows


def record(selected: list[Case]) -> tuple[list[Launch], list[dict]]:
    """Run ``selected`` under the Triton interpreter, recording every launch."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("recording needs the Triton interpreter: set TRITON_INTERPRET=1 before triton is imported")
    recorder = Recorder()
    with recorder.active():
        rows = run_cases(selected, recorder)
    return recorder.launches, rows
