#!/usr/bin/env python
"""fastgan's GPU acceptance in one call of at most 9 minutes (see bench/README.md, "GPU acceptance").

    bash bench/gpu_acceptance.sh --out DIR               # on a GPU machine (an H200): the whole run
    bash bench/gpu_acceptance.sh --out DIR --dry-run     # anywhere: check the plan, no GPU needed

Three stages. The steps of the first two run at the same time; the timed stage runs alone, one
step after another, so nothing else shares the GPU while it is timed.

build    install         pip install --no-build-isolation --no-deps -e . (FASTGAN_BUILD_CUDA=1,
                         TORCH_CUDA_ARCH_LIST=9.0); then `fastgan info` must list the cuda and
                         triton backends as available
         driver-build    nvcc -arch=sm_90 the kernel driver (csrc/testing/kernel_driver.cu)
         versions        torch, triton, CUDA runtime, driver, GPU, nvcc, compute-sanitizer, commit
check    kernel-tests    pytest: every test marked ``cuda`` and every triton/cuda-parametrised test
         trainer-graphs  pytest: the trainer's CUDA-graph tests (graphs match eager after 20 steps)
         driver-run      the kernel driver on the GPU
         memcheck, racecheck, synccheck, initcheck   the driver under compute-sanitizer
time     bench-losses, bench-batch-norm, bench-training   pytest bench --benchmark-only over the
                         must-have cases (``--bench-cases all`` for every case)
         report          the benchmark JSON merged into bench.json; bench/report.py -> RESULTS.md,
                         results/<device>.json and results/<device>.png

Each step has a time budget; time a step leaves unused goes to the steps after it, and a step
that overruns is interrupted (SIGINT, so pytest still writes what it measured) and then killed.
Steps run on after a failure; a step whose inputs failed is reported as not run. The exit status
is 0 only when every step passed (2 for bad arguments).

The output folder receives at most seven files, so it fits a device call that returns eight:
summary.md (each step's status and duration, the versions, the training it/s), summary.json,
bench.json, RESULTS.md, results/<device>.json, results/<device>.png and logs.tar.gz (every
step's log, the JUnit XML, the sanitizer logs, the benchmark JSON of each step). summary.md and
logs.tar.gz are rewritten after every step, so an interrupted call still returns its progress.

This module is also the pytest plugin (``-p gpu_acceptance``, with bench/ on PYTHONPATH) that
selects the cases each pytest step runs and, when pytest is interrupted, keeps the benchmarks
that finished.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import importlib.util
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Callable

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

DEVICE_CALL_S = 540  # one device call: 9 minutes, the longest this run may take
RESERVE_S = 15  # Python start-up, summaries and packing between steps
GRACE_S = 10  # from SIGINT to SIGKILL when a step overruns
BANDWIDTH_N = 2**26  # the bench files' bandwidth size (GPU only)
LATENCY_N = 256  # and their latency size
BN_BANDWIDTH_SHAPE = (128, 256, 32, 32)

OP_TEST_FILES = ("tests/test_bce.py", "tests/test_renyi.py", "tests/test_batch_norm.py",
                 "tests/test_sync_batch_norm.py")
TRAINER_TEST_FILE = "tests/test_trainer.py"
DRIVER_SOURCE = "csrc/testing/kernel_driver.cu"
KERNEL_SOURCES = ("csrc/bce.cu", "csrc/renyi.cu", "csrc/batch_norm.cu")
SANITIZER_TOOLS = ("memcheck", "racecheck", "synccheck", "initcheck")
BENCH_STEPS = ("bench-losses", "bench-batch-norm", "bench-training")
# Skip reasons that mean the GPU or a kernel backend was not used: a failure on a GPU machine.
NOT_ON_THE_GPU = re.compile(r"backend unavailable|fastgan (cuda|triton):|needs? a (CUDA )?GPU|no CUDA device|not built|"
                            r"none is visible", re.IGNORECASE)


# --------------------------------------------------------------------------- case selection


@dataclasses.dataclass(frozen=True)
class Case:
    """What a selection rule sees of one collected pytest item."""

    path: str  # relative to the repository, e.g. "bench/bench_bce.py"
    function: str
    params: dict
    markers: frozenset


def provider(case: Case) -> str | None:
    """The bench provider id (``eager``, ``compile``, ``fastgan-cuda``, ``fastgan-graphs``, ...)."""
    value = case.params.get("provider")
    return f"fastgan-{value}" if value in ("torch", "triton", "cuda") else value


def dtype(case: Case) -> str | None:
    value = case.params.get("dtype")
    return None if value is None else str(value).removeprefix("torch.")


def backend(case: Case) -> str | None:
    """The fastgan backend a test is parametrised with (fixtures ``backend``, ``kernel_backend``)."""
    return case.params.get("backend", case.params.get("kernel_backend"))


def layout(case: Case) -> str:
    return "channels_last" if case.params.get("channels_last") else "nchw"


ATTRIBUTES: dict[str, Callable[[Case], object]] = {
    "provider": provider, "dtype": dtype, "backend": backend, "layout": layout,
    "n": lambda case: case.params.get("n"),
}


@dataclasses.dataclass(frozen=True)
class Rule:
    """Selects the cases ``matches`` accepts. A required rule must match at least one collected
    case, and its matches must include every value listed in ``covers`` (attribute -> values)."""

    name: str
    matches: Callable[[Case], bool]
    covers: dict = dataclasses.field(default_factory=dict)
    required: bool = True

    def missing(self, cases: list[Case]) -> dict:
        """``covers`` values no matched case has (attribute -> sorted values)."""
        gaps = {}
        for attribute, wanted in self.covers.items():
            have = {ATTRIBUTES[attribute](case) for case in cases}
            absent = set(wanted) - have
            if absent:
                gaps[attribute] = sorted(map(str, absent))
        return gaps


@dataclasses.dataclass(frozen=True)
class Selection:
    """The cases one pytest step runs: the paths given to pytest, and rules over what they collect."""

    paths: tuple
    rules: tuple

    def within(self, case: Case) -> bool:
        return any(case.path == p or case.path.startswith(p.rstrip("/") + "/") for p in self.paths)

    def selects(self, case: Case, everything: bool = False) -> bool:
        return self.within(case) and (everything or any(rule.matches(case) for rule in self.rules))


def _in(path: str, function: str | None = None) -> Callable[[Case], bool]:
    return lambda case: case.path == path and (function is None or case.function == function)


BOTH_DTYPES = {"float32", "bfloat16"}
KERNEL_PROVIDERS = {"eager", "fastgan-triton", "fastgan-cuda"}
ALL_OP_PROVIDERS = KERNEL_PROVIDERS | {"compile"}


def _kernel_provider(case: Case) -> bool:
    """Eager, torch.compile and fastgan's kernel backends: fastgan's torch backend is the
    reference fallback, not a contender on a GPU (``--bench-cases all`` times it too)."""
    return provider(case) != "fastgan-torch"


def _kernel_test_rules() -> tuple:
    rules = []
    for path in OP_TEST_FILES:
        for name in ("triton", "cuda"):
            rules.append(Rule(f"{path}: the {name} backend's tests",
                              lambda case, path=path, name=name: case.path == path and backend(case) == name))
    rules.append(Rule("tests marked cuda (pytest -m cuda), the trainer's excepted",
                      lambda case: "cuda" in case.markers and case.path != TRAINER_TEST_FILE))
    rules.append(Rule("other tests on the triton backend",
                      lambda case: backend(case) == "triton" and case.path != TRAINER_TEST_FILE, required=False))
    return tuple(rules)


def _bce(case: Case, *, backward: bool, n: int) -> bool:
    return _in("bench/bench_bce.py", "bench_bce_with_logits")(case) and _kernel_provider(case) and \
        case.params.get("backward") is backward and case.params.get("n") == n


def _renyi(case: Case, *, backward: bool, n: int) -> bool:
    return _in("bench/bench_renyi.py", "bench_renyi_divergence")(case) and _kernel_provider(case) and \
        case.params.get("backward") is backward and case.params.get("n") == n


def _gan(case: Case, *, n: int) -> bool:
    return _in("bench/bench_bce.py", "bench_gan_bce_losses_fwd_bwd")(case) and _kernel_provider(case) and \
        case.params.get("n") == n


def _not_compiled(case: Case) -> bool:
    return provider(case) != "compile"


SELECTIONS = {
    "kernel-tests": Selection(("tests",), _kernel_test_rules()),
    "trainer-graphs": Selection((TRAINER_TEST_FILE,), (
        Rule("the trainer's CUDA-graph tests", lambda case: "cuda" in case.markers),
    )),
    "bench-losses": Selection(("bench/bench_bce.py", "bench/bench_renyi.py", "bench/bench_host_overhead.py"), (
        Rule("BCE fwd+bwd, latency size, every provider", lambda c: _bce(c, backward=True, n=LATENCY_N),
             {"dtype": BOTH_DTYPES, "provider": ALL_OP_PROVIDERS}),
        Rule("BCE fwd+bwd, bandwidth size, every provider", lambda c: _bce(c, backward=True, n=BANDWIDTH_N),
             {"dtype": BOTH_DTYPES, "provider": ALL_OP_PROVIDERS}),
        Rule("BCE fwd, latency size (launches, host time)",
             lambda c: _bce(c, backward=False, n=LATENCY_N) and _not_compiled(c),
             {"dtype": BOTH_DTYPES, "provider": KERNEL_PROVIDERS}),
        Rule("GAN BCE fwd+bwd, latency size", lambda c: _gan(c, n=LATENCY_N) and _not_compiled(c),
             {"dtype": BOTH_DTYPES, "provider": KERNEL_PROVIDERS}),
        Rule("GAN BCE fwd+bwd, bandwidth size", lambda c: _gan(c, n=BANDWIDTH_N) and _not_compiled(c),
             {"dtype": BOTH_DTYPES, "provider": KERNEL_PROVIDERS}),
        Rule("BCE host overhead", _in("bench/bench_host_overhead.py", "bench_bce_with_logits_host_overhead")),
        Rule("GAN BCE host overhead", _in("bench/bench_host_overhead.py", "bench_gan_bce_losses_host_overhead")),
        Rule("Rényi host overhead", _in("bench/bench_host_overhead.py", "bench_renyi_divergence_host_overhead")),
        Rule("Rényi fwd+bwd, latency size", lambda c: _renyi(c, backward=True, n=LATENCY_N) and _not_compiled(c),
             {"dtype": BOTH_DTYPES, "provider": KERNEL_PROVIDERS}),
        Rule("Rényi fwd+bwd, bandwidth size",
             lambda c: _renyi(c, backward=True, n=BANDWIDTH_N) and _not_compiled(c),
             {"dtype": BOTH_DTYPES, "provider": KERNEL_PROVIDERS}),
        Rule("Rényi fwd, latency size", lambda c: _renyi(c, backward=False, n=LATENCY_N) and _not_compiled(c),
             {"dtype": BOTH_DTYPES, "provider": KERNEL_PROVIDERS}),
    )),
    "bench-batch-norm": Selection(("bench/bench_batch_norm.py",), (
        Rule(f"fused BatchNorm + LeakyReLU training fwd+bwd at {'x'.join(map(str, BN_BANDWIDTH_SHAPE))}",
             lambda c: _in("bench/bench_batch_norm.py", "bench_batch_norm_leaky_relu")(c)
             and _kernel_provider(c) and c.params.get("training") is True
             and tuple(c.params.get("shape", ())) == BN_BANDWIDTH_SHAPE,
             {"dtype": BOTH_DTYPES, "layout": {"nchw", "channels_last"}, "provider": ALL_OP_PROVIDERS}),
    )),
    "bench-training": Selection(("bench/bench_training.py",), (
        Rule("toy MLP GAN step, batch 512, every provider", _in("bench/bench_training.py", "bench_toy_mlp_gan_step"),
             {"provider": {"eager-loop", "compile", "compile-reduce-overhead", "fastgan", "fastgan-graphs"}}),
        Rule("DCGAN-64 bf16 step: eager loop, fastgan, fastgan with CUDA graphs",
             lambda c: _in("bench/bench_training.py", "bench_dcgan64_step")(c)
             and provider(c) in ("eager-loop", "fastgan", "fastgan-graphs"),
             {"provider": {"eager-loop", "fastgan", "fastgan-graphs"}}),
    )),
}


def coverage(selection: Selection, cases: list[Case]) -> dict:
    """Per rule: how many collected cases it matches, and what its ``covers`` misses."""
    report = {}
    for rule in selection.rules:
        matched = [case for case in cases if selection.within(case) and rule.matches(case)]
        report[rule.name] = {"count": len(matched), "required": rule.required, "missing": rule.missing(matched)}
    return report


def coverage_problems(name: str, report: dict) -> list[str]:
    """One line per required rule of selection ``name`` that matched nothing or misses a value."""
    problems = []
    for rule, found in report.items():
        if not found["required"]:
            continue
        if found["count"] == 0:
            problems.append(f"{name}: no collected case matches '{rule}'")
            continue
        for attribute, values in found["missing"].items():
            problems.append(f"{name}: '{rule}' has no case with {attribute} {', '.join(values)}")
    return problems


# --------------------------------------------------------------------------- the pytest plugin


def pytest_addoption(parser):
    group = parser.getgroup("fastgan GPU acceptance (bench/gpu_acceptance.py)")
    group.addoption("--acceptance-select", default=None,
                    help=f"comma-separated selections to run: {', '.join(SELECTIONS)}")
    group.addoption("--acceptance-everything", action="store_true",
                    help="run every case under the selections' paths, not only the must-have ones")
    group.addoption("--acceptance-report", default=None, help="write each selection's rule coverage here (JSON)")
    group.addoption("--acceptance-gpu-shapes", action="store_true",
                    help="collect the benchmarks as parametrised on a GPU (for the dry run on a CPU)")


def pytest_configure(config):
    if config.getoption("--acceptance-gpu-shapes", default=False):
        import torch

        import benchutil  # bench/conftest.py and the bench files read GPU and DEVICE from here

        benchutil.GPU = True
        benchutil.DEVICE = torch.device("cuda")


def _case_of(item) -> Case:
    try:
        path = Path(str(item.path)).resolve().relative_to(REPO).as_posix()
    except ValueError:
        path = str(item.path)
    callspec = getattr(item, "callspec", None)
    return Case(path, getattr(item, "originalname", None) or item.name,
                dict(callspec.params) if callspec is not None else {},
                frozenset(marker.name for marker in item.iter_markers()))


def pytest_collection_modifyitems(session, config, items):
    names = config.getoption("--acceptance-select", default=None)
    if not names:
        return
    unknown = [name for name in names.split(",") if name not in SELECTIONS]
    if unknown:
        raise pytest.UsageError(f"--acceptance-select: unknown selection {', '.join(unknown)}; "
                         f"choose from {', '.join(SELECTIONS)}")
    selections = {name: SELECTIONS[name] for name in names.split(",")}
    everything = config.getoption("--acceptance-everything")
    cases = [_case_of(item) for item in items]
    keep = [any(s.selects(case, everything) for s in selections.values()) for case in cases]
    report_path = config.getoption("--acceptance-report")
    worker = getattr(config, "workerinput", {}).get("workerid")  # under pytest-xdist: write once
    if report_path and worker in (None, "gw0"):
        report = {name: {"selected": sum(1 for case in cases if s.selects(case, everything)),
                         "rules": coverage(s, cases)} for name, s in selections.items()}
        Path(report_path).write_text(json.dumps(report, indent=2) + "\n")
    config.hook.pytest_deselected(items=[item for item, kept in zip(items, keep) if not kept])
    items[:] = [item for item, kept in zip(items, keep) if kept]


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_sessionfinish(session, exitstatus):
    """Drop benchmarks that recorded no timing (a case interrupted by the step's time limit), so
    pytest-benchmark still writes the JSON of the cases that finished (it fails on an empty one).
    Runs before pytest-benchmark's own wrapper, which saves the JSON."""
    bench_session = getattr(session.config, "_benchmarksession", None)
    if bench_session is not None:
        bench_session.benchmarks[:] = [bench for bench in bench_session.benchmarks if bench]
    yield


# --------------------------------------------------------------------------- the plan


@dataclasses.dataclass
class Outcome:
    status: str  # passed, failed, timed out, skipped, not run
    detail: str = ""


@dataclasses.dataclass
class Step:
    name: str
    stage: str
    budget_s: int
    summary: str
    run: Callable[["Run", "Step", float], Outcome]
    needs: tuple = ()  # steps that must have passed first
    commands: list = dataclasses.field(default_factory=list)  # shown in the plan


STAGES = (("build", "together"), ("check", "together"), ("time", "in turn"))


def critical_path_s(steps: list[Step]) -> int:
    """The longest the run can take: per stage the largest budget (together) or the sum (in
    turn), plus the reserve for start-up and packing."""
    total = RESERVE_S
    for stage, mode in STAGES:
        budgets = [step.budget_s for step in steps if step.stage == stage]
        if budgets:
            total += max(budgets) if mode == "together" else sum(budgets)
    return total


def stage_budget_s(steps: list[Step], stage: str) -> int:
    mode = dict(STAGES)[stage]
    budgets = [step.budget_s for step in steps if step.stage == stage]
    return (max(budgets) if mode == "together" else sum(budgets)) if budgets else 0


# --------------------------------------------------------------------------- running commands


def find_tool(name: str) -> str | None:
    """``name`` on PATH, else in the CUDA toolkit (CUDA_HOME, /usr/local/cuda)."""
    found = shutil.which(name)
    if found:
        return found
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root:
            for candidate in (Path(root) / "bin" / name, Path(root) / "compute-sanitizer" / name):
                if candidate.is_file() and os.access(candidate, os.X_OK):
                    return str(candidate)
    return None


def python_env(extra: dict | None = None) -> dict:
    """The environment of the Python steps: the installed fastgan (not a shadowing ./fastgan:
    PYTHONSAFEPATH), this folder on the path for the plugin, unbuffered output, and no CPU
    emulation or interpretation of the kernels."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("TRITON_INTERPRET", "FASTGAN_CUDA_EMULATE", "FASTGAN_BACKEND")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))
    env["PYTHONSAFEPATH"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def run_command(argv: list[str], log, deadline: float, env: dict | None = None, cwd: Path = REPO,
                grace: float = GRACE_S) -> tuple:
    """Run ``argv`` with its output appended to ``log`` until ``deadline`` (time.monotonic()).
    Returns (exit status or None when it overran, seconds). An overrunning command gets SIGINT
    ``grace`` seconds before the deadline (pytest then writes its reports), then its whole
    process group SIGKILL at the deadline."""
    log.write(f"$ {' '.join(argv)}\n")
    log.flush()
    start = time.monotonic()
    try:
        process = subprocess.Popen(argv, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    except OSError as error:
        log.write(f"cannot start: {error}\n")
        return 127, 0.0
    returncode = None
    try:
        returncode = process.wait(timeout=max(0.1, deadline - grace - time.monotonic()))
    except subprocess.TimeoutExpired:
        log.write(f"\n[gpu_acceptance] time limit reached: SIGINT, SIGKILL in {grace:g} s\n")
        log.flush()
        _signal(process.pid, signal.SIGINT, group=False)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    _signal(process.pid, signal.SIGKILL, group=True)  # the step's leftovers (compile workers, ...)
    process.wait()
    seconds = time.monotonic() - start
    log.write(f"[gpu_acceptance] exit status {returncode if returncode is not None else 'none (time limit)'}, "
              f"{seconds:.1f} s\n\n")
    log.flush()
    return returncode, seconds


def _signal(pid: int, sig: int, group: bool) -> None:
    try:
        os.killpg(pid, sig) if group else os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def junit_counts(path: Path) -> dict | None:
    """tests / failures / errors / skipped and the skip reasons of a JUnit XML file."""
    try:
        root = ElementTree.parse(path).getroot()
    except (OSError, ElementTree.ParseError):
        return None
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0, "skip_reasons": {}, "failed": []}
    for case in root.iter("testcase"):
        counts["tests"] += 1
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        for kind, key in (("failure", "failures"), ("error", "errors")):
            if case.find(kind) is not None:
                counts[key] += 1
                counts["failed"].append(name)
        skipped = case.find("skipped")
        if skipped is not None:
            counts["skipped"] += 1
            reason = (skipped.get("message") or "").strip()
            counts["skip_reasons"][reason] = counts["skip_reasons"].get(reason, 0) + 1
    return counts


def judge_pytest(returncode, junit: Path, what: str) -> Outcome:
    """A pytest step passes when pytest exits 0, ran something, and skipped nothing for want of
    the GPU or a kernel backend (on a GPU machine such a skip means they were not tested)."""
    counts = junit_counts(junit)
    if counts is None:
        return Outcome("timed out" if returncode is None else "failed",
                       f"no JUnit report (pytest exit status {returncode})")
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    detail = f"{passed} passed, {counts['failures'] + counts['errors']} failed, {counts['skipped']} skipped {what}"
    not_on_gpu = {reason: n for reason, n in counts["skip_reasons"].items() if NOT_ON_THE_GPU.search(reason)}
    if counts["failed"]:
        detail += "; first failures: " + ", ".join(counts["failed"][:3])
    if not_on_gpu:
        detail += "; skipped without the GPU: " + "; ".join(f"{n} x {reason}" for reason, n in not_on_gpu.items())
    if returncode is None:
        return Outcome("timed out", detail)
    if returncode != 0 or counts["tests"] == 0 or not_on_gpu:
        return Outcome("failed", detail if counts["tests"] else f"no tests ran (pytest exit status {returncode})")
    return Outcome("passed", detail)


# --------------------------------------------------------------------------- the run


class Run:
    """One acceptance run: the plan, the folders, each step's outcome, and the summaries."""

    def __init__(self, args, steps: list[Step]):
        self.args = args
        self.steps = steps
        self.out: Path = args.out
        self.work: Path = args.work_dir
        self.logs = self.work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.started = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0)
        self.clock0 = time.monotonic()
        self.deadline = self.clock0 + args.time_limit - RESERVE_S
        self.results: dict[str, dict] = {}
        self.facts: dict = {"commit": resolve_commit(args.commit)}
        self.lock = threading.Lock()

    # paths
    def log_path(self, step: Step) -> Path:
        return self.logs / f"{step.name}.log"

    def junit_path(self, step: Step) -> Path:
        return self.logs / f"{step.name}.junit.xml"

    def bench_json_path(self, name: str) -> Path:
        return self.logs / f"{name}.json"

    @property
    def driver_binary(self) -> Path:
        return self.work / "kernel_driver"

    def passed(self, name: str) -> bool:
        return self.results.get(name, {}).get("status") == "passed"

    # running
    def execute(self) -> int:
        for stage, mode in STAGES:
            steps = [step for step in self.steps if step.stage == stage]
            if not steps:
                continue
            later = sum(stage_budget_s(self.steps, s) for s, _ in STAGES[[s for s, _ in STAGES].index(stage) + 1:])
            allowed = self.deadline - later - time.monotonic()
            if mode == "together":
                extra = max(0.0, allowed - stage_budget_s(self.steps, stage))
                threads = [threading.Thread(target=self._step, args=(step, step.budget_s + extra)) for step in steps]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
            else:
                for index, step in enumerate(steps):
                    after = sum(s.budget_s for s in steps[index + 1:])
                    self._step(step, self.deadline - later - after - time.monotonic())
        self.write_outputs(final=True)
        return 0 if all(self.passed(step.name) for step in self.steps) else 1

    def _step(self, step: Step, seconds: float) -> None:
        missing = [need for need in step.needs if not self.passed(need)]
        start = time.monotonic()
        self._record(step, "running", "", 0.0, seconds)
        if missing:
            outcome = Outcome("not run", f"needs {', '.join(missing)}, which did not pass")
        elif seconds < 1:
            outcome = Outcome("not run", "no time left in the call")
        else:
            try:
                outcome = step.run(self, step, start + seconds)
            except Exception as error:  # a bug in a step's own check must not stop the others
                outcome = Outcome("failed", f"{type(error).__name__}: {error}")
        self._record(step, outcome.status, outcome.detail, time.monotonic() - start, seconds)
        with self.lock:  # one whole line per step, also when steps finish together
            print(f"[gpu_acceptance] {step.name}: {outcome.status} in {time.monotonic() - start:.0f} s"
                  f"{' - ' + outcome.detail if outcome.detail else ''}", flush=True)
        self.write_outputs(final=False)

    def _record(self, step, status, detail, seconds, timeout_s) -> None:
        with self.lock:
            self.results[step.name] = {"step": step.name, "stage": step.stage, "status": status,
                                       "seconds": round(seconds, 1), "budget_s": step.budget_s,
                                       "timeout_s": round(timeout_s), "detail": detail,
                                       "log": f"logs/{step.name}.log"}

    def commands(self, step: Step, commands: list, deadline: float, env: dict | None = None) -> tuple:
        """Run ``commands`` (argv lists) in turn into the step's log; stop at the first failure."""
        returncode = 0
        with open(self.log_path(step), "a") as log:
            for argv in commands:
                returncode, _ = run_command([str(part) for part in argv], log, deadline, env=env)
                if returncode != 0:
                    break
        return returncode

    # outputs
    def write_outputs(self, final: bool) -> None:
        with self.lock:
            self.out.mkdir(parents=True, exist_ok=True)
            summary = self.summary(final)
            (self.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
            (self.out / "summary.md").write_text(summary_markdown(summary))
            pack_logs(self.work, self.out / "logs.tar.gz")

    def summary(self, final: bool) -> dict:
        steps = [self.results.get(step.name) or {"step": step.name, "stage": step.stage, "status": "waiting",
                                                 "seconds": 0.0, "budget_s": step.budget_s, "timeout_s": None,
                                                 "detail": "", "log": ""} for step in self.steps]
        failed = [s["step"] for s in steps if s["status"] != "passed"]
        if not final:
            result = "in progress"
        else:
            result = "PASSED" if not failed else f"FAILED ({len(failed)} of {len(steps)} steps did not pass: " \
                                                 f"{', '.join(failed)})"
        return {"result": result, "started_utc": self.started.isoformat(),
                "elapsed_s": round(time.monotonic() - self.clock0, 1), "time_limit_s": self.args.time_limit,
                "bench_cases": self.args.bench_cases, "argv": sys.argv, "work_dir": str(self.work), **self.facts,
                "steps": steps}


def resolve_commit(given: str | None) -> str:
    """--commit, else FASTGAN_COMMIT, else git (absent on a device copy of the tree)."""
    if given or os.environ.get("FASTGAN_COMMIT"):
        return given or os.environ["FASTGAN_COMMIT"]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha, dirty = "", ""
    return (sha + ("-dirty" if dirty else "")) if sha else "unknown (no git here: pass --commit)"


def pack_logs(work: Path, archive: Path) -> None:
    """Everything under the work folder but the driver binary, as one .tar.gz (written whole,
    then renamed, so a reader never sees half an archive)."""
    partial = archive.with_suffix(".partial")
    with tarfile.open(partial, "w:gz") as tar:
        for path in sorted(work.rglob("*")):
            if path.is_file() and path.name != "kernel_driver":
                tar.add(path, arcname=f"acceptance/{path.relative_to(work).as_posix()}")
    partial.replace(archive)


def summary_markdown(summary: dict) -> str:
    versions = summary.get("versions") or {}
    lines = [f"# fastgan GPU acceptance, {summary['started_utc']}", "",
             f"**Result: {summary['result']}** ({summary['elapsed_s']:.0f} s of {summary['time_limit_s']} s; "
             f"benchmark cases: {summary['bench_cases']})", "",
             f"- commit: {summary.get('commit')}"]
    for key, label in (("gpu", "GPU"), ("driver", "driver"), ("cuda_driver_api", "CUDA (driver)"),
                       ("cuda_runtime_torch", "CUDA runtime (torch)"), ("torch", "torch"), ("triton", "triton"),
                       ("python", "Python"), ("nvcc", "nvcc"), ("compute_sanitizer", "compute-sanitizer")):
        if versions.get(key):
            lines.append(f"- {label}: {versions[key]}")
    lines += ["", "| stage | step | status | seconds | budget s | detail |", "|---|---|---|---:|---:|---|"]
    for step in summary["steps"]:
        detail = str(step.get("detail") or "").replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {step['stage']} | {step['step']} | {step['status']} | {step['seconds']:.0f} | "
                     f"{step['budget_s']} | {detail} |")
    training = summary.get("training") or []
    if training:
        lines += ["", "## Training steps (bench/bench_training.py)", "",
                  "| case | provider | median ms a step | it/s | images/s |", "|---|---|---:|---:|---:|"]
        for row in training:
            images = f"{row['images_per_s']:.0f}" if row.get("images_per_s") else ""
            lines.append(f"| {row['group']} | {row['provider']} | {row['median_ms']:.3f} | {row['it_per_s']:.1f} | "
                         f"{images} |")
    lines += ["", "Files: `RESULTS.md`, `results/<device>.json` and `.png` (bench/report.py), `bench.json` (the "
              "merged pytest-benchmark JSON), `summary.json`, `logs.tar.gz` (`acceptance/logs/<step>.log`, JUnit "
              "XML, per-step benchmark JSON, versions).", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- the steps


def _install(run: Run, step: Step, deadline: float) -> Outcome:
    env = python_env({"FASTGAN_BUILD_CUDA": "1", "TORCH_CUDA_ARCH_LIST": run.args.arch_list,
                      "MAX_JOBS": str(os.cpu_count() or 1)})
    returncode = run.commands(step, step.commands[:1], deadline, env=env)
    if returncode != 0:
        return Outcome("timed out" if returncode is None else "failed", f"pip exit status {returncode}")
    info_path = run.logs / "fastgan-info.json"
    with open(run.log_path(step), "a") as log, open(info_path, "w") as info:
        log.write(f"$ {' '.join(step.commands[1])} > {info_path.name}\n")
        log.flush()
        try:
            subprocess.run(step.commands[1], cwd=REPO, env=python_env(), stdout=info, stderr=log,
                           timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            return Outcome("timed out", "`fastgan info --json` did not finish")
    try:
        info = json.loads(info_path.read_text())
    except (OSError, json.JSONDecodeError):
        return Outcome("failed", "`fastgan info --json` gave no JSON (its error is in the log)")
    run.facts["fastgan"] = {key: info.get(key) for key in ("fastgan", "cuda_extension", "device")}
    backends = info.get("backends") or {}
    unavailable = [f"{name}: {backends.get(name, {}).get('reason') or 'not listed'}" for name in ("cuda", "triton")
                   if not backends.get(name, {}).get("available")]
    archs = str((info.get("cuda_extension") or {}).get("cuda_archs"))
    if unavailable:
        return Outcome("failed", "installed, but " + "; ".join(unavailable))
    return Outcome("passed", f"fastgan {info.get('fastgan')}, extension built for {archs}, on {info.get('device')}")


VERSIONS_CODE = """
import json, platform, torch
out = {"python": platform.python_version(), "torch": torch.__version__, "cuda_runtime_torch": torch.version.cuda,
       "cudnn": torch.backends.cudnn.version()}
try:
    import triton
    out["triton"] = triton.__version__
except ImportError as error:
    out["triton"] = f"not installed ({error})"
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    out.update(gpu=p.name, capability=f"{p.major}.{p.minor}", multiprocessors=p.multi_processor_count,
               memory_gib=round(p.total_memory / 2**30, 1))
print(json.dumps(out))
"""


def _versions(run: Run, step: Step, deadline: float) -> Outcome:
    found: dict = {}
    with open(run.log_path(step), "a") as log:
        def capture(argv, env=None):
            log.write(f"$ {' '.join(argv)}\n")
            try:
                done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True,
                                      timeout=max(1.0, min(30.0, deadline - time.monotonic())))
            except (OSError, subprocess.SubprocessError) as error:
                log.write(f"{error}\n")
                return ""
            log.write(done.stdout + done.stderr + "\n")
            return done.stdout if done.returncode == 0 else ""

        text = capture([sys.executable, "-c", VERSIONS_CODE], env=python_env())
        if text.strip():
            found.update(json.loads(text.strip().splitlines()[-1]))
        smi = find_tool("nvidia-smi")
        if smi:
            query = capture([smi, "--query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem,"
                                  "power.limit,pstate", "--format=csv,noheader"])
            if query.strip():
                name, driver, *_ = [part.strip() for part in query.splitlines()[0].split(",")]
                found.setdefault("gpu", name)
                found["driver"] = driver
                found["nvidia_smi_query"] = query.strip()
            header = re.search(r"CUDA Version:\s*([\d.]+)", capture([smi]))
            if header:
                found["cuda_driver_api"] = header.group(1)
        for tool, key in (("nvcc", "nvcc"), ("compute-sanitizer", "compute_sanitizer")):
            path = find_tool(tool)
            lines = capture([path, "--version"]).strip().splitlines() if path else []
            found[key] = lines[-1].strip() if lines else "not found"
    (run.logs / "versions.json").write_text(json.dumps(found, indent=2) + "\n")
    run.facts["versions"] = found
    if not found.get("gpu"):
        return Outcome("failed", "no GPU seen (neither torch nor nvidia-smi)")
    return Outcome("passed", f"{found.get('gpu')}, driver {found.get('driver')}, torch {found.get('torch')}, "
                             f"triton {found.get('triton')}")


def driver_compile_command(output: Path, arch: str = "sm_90") -> list:
    """The nvcc command that builds the kernel driver with the kernels it calls."""
    nvcc = find_tool("nvcc") or "nvcc"
    return [nvcc, "-O2", "-std=c++17", f"-arch={arch}", "-lineinfo", "-Icsrc", DRIVER_SOURCE, *KERNEL_SOURCES,
            "-o", str(output)]


def _driver_build(run: Run, step: Step, deadline: float) -> Outcome:
    if not (REPO / DRIVER_SOURCE).is_file():
        return Outcome("skipped", f"{DRIVER_SOURCE} is not in the tree: no driver to build or sanitize")
    if find_tool("nvcc") is None:
        return Outcome("failed", "nvcc not found (PATH, CUDA_HOME, /usr/local/cuda)")
    returncode = run.commands(step, [driver_compile_command(run.driver_binary)], deadline)
    if returncode != 0:
        return Outcome("timed out" if returncode is None else "failed", f"nvcc exit status {returncode}")
    return Outcome("passed", "built for sm_90 with -lineinfo")


def _driver_run(run: Run, step: Step, deadline: float) -> Outcome:
    returncode = run.commands(step, [[run.driver_binary, *run.args.driver_args]], deadline)
    last = _last_line(run.log_path(step), r"\S")
    if returncode != 0:
        return Outcome("timed out" if returncode is None else "failed",
                       f"kernel driver exit status {returncode}{'; ' + last if last else ''}")
    return Outcome("passed", last or "exit status 0")


def sanitizer_command(tool: str, binary: Path, driver_args: list) -> list:
    extra = ["--leak-check", "full"] if tool == "memcheck" else []
    return [find_tool("compute-sanitizer") or "compute-sanitizer", "--tool", tool, *extra,
            "--error-exitcode", "1", binary, *driver_args]


def _sanitizer(tool: str):
    def run_tool(run: Run, step: Step, deadline: float) -> Outcome:
        if find_tool("compute-sanitizer") is None:
            return Outcome("failed", "compute-sanitizer not found (PATH, CUDA_HOME, /usr/local/cuda)")
        returncode = run.commands(step, [sanitizer_command(tool, run.driver_binary, run.args.driver_args)], deadline)
        summary = _last_line(run.log_path(step), r"ERROR SUMMARY|RACECHECK SUMMARY") or ""
        summary = summary.replace("=========", "").strip()
        if returncode != 0:
            return Outcome("timed out" if returncode is None else "failed",
                           f"exit status {returncode}{'; ' + summary if summary else ''}")
        return Outcome("passed", summary)

    return run_tool


def _last_line(path: Path, pattern: str) -> str | None:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines()
                 if re.search(pattern, line) and not line.startswith(("$ ", "[gpu_acceptance]"))]
    except OSError:
        return None
    return lines[-1].strip() if lines else None


def step_pytest_argv(run_args, step_name: str, logs: Path | None, *, junit: Path | None = None,
                   bench_json: Path | None = None) -> list:
    """The pytest command of one pytest step (logs=None: the shape shown in the plan)."""
    selection = SELECTIONS[step_name]
    argv = [sys.executable, "-m", "pytest", *selection.paths, "-p", "gpu_acceptance",
            f"--acceptance-select={step_name}", "-q", "-p", "no:cacheprovider"]
    if logs is not None:
        argv.append(f"--acceptance-report={logs / (step_name + '.selection.json')}")
    if junit is not None:
        argv.append(f"--junitxml={junit}")
    plugins = available_plugins()
    if step_name in BENCH_STEPS:
        argv += ["--benchmark-only", f"--benchmark-max-time={run_args.bench_max_time}",
                 "--benchmark-columns=min,median,iqr,rounds", "--benchmark-sort=name"]
        if bench_json is not None:
            argv.append(f"--benchmark-json={bench_json}")
        if run_args.bench_cases == "all":
            argv.append("--acceptance-everything")
        if "timeout" in plugins:
            argv.append("--timeout=120")
    else:
        argv.append("-rfEs")
        if "timeout" in plugins:
            argv.append("--timeout=120")
        if step_name == "kernel-tests" and "xdist" in plugins and run_args.workers > 1:
            argv += ["-n", str(run_args.workers)]
    return argv


def available_plugins() -> set:
    """The optional pytest plugins installed here that the steps use when they can."""
    return {name for name, module in (("xdist", "xdist"), ("timeout", "pytest_timeout"))
            if importlib.util.find_spec(module) is not None}


def _pytest_step(run: Run, step: Step, deadline: float) -> Outcome:
    junit = run.junit_path(step)
    bench_json = run.bench_json_path(step.name) if step.name in BENCH_STEPS else None
    argv = step_pytest_argv(run.args, step.name, run.logs, junit=junit, bench_json=bench_json)
    # Few compile threads per test process: the tests run in parallel with each other.
    env = python_env({"TORCHINDUCTOR_COMPILE_THREADS": "2"} if step.name == "kernel-tests" else None)
    returncode = run.commands(step, [argv], deadline, env=env)
    what = "tests" if bench_json is None else "benchmark cases"
    outcome = judge_pytest(returncode, junit, what)
    if bench_json is not None:
        try:
            count = len(json.loads(bench_json.read_text())["benchmarks"])
        except (OSError, ValueError, KeyError):
            count = 0
        outcome.detail += f"; {count} timed in {bench_json.name}"
        if count == 0 and outcome.status == "passed":
            outcome = Outcome("failed", outcome.detail)
    return outcome


def merge_benchmark_json(paths: list[Path], commit: str | None) -> dict | None:
    """One pytest-benchmark JSON from several runs' (their benchmarks concatenated; the first
    readable file's machine information), with ``commit`` as its commit. The commit this run
    was given wins over the one pytest-benchmark read: a device copy of the tree can carry a
    stale .git (on 2026-11-30 an H200 run of fa1ab7f was recorded as the session's first
    commit, de272e3, "dirty"). None when no file has a benchmark."""
    merged = None
    for path in paths:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
            continue
        if merged is None:
            merged = {**data, "benchmarks": []}
        merged["benchmarks"] += data["benchmarks"]
    if not merged or not merged["benchmarks"]:
        return None
    if commit and not commit.startswith("unknown"):
        sha, dirty = commit.removesuffix("-dirty"), commit.endswith("-dirty")
        merged["commit_info"] = {"id": sha, "dirty": dirty}
    return merged


def training_rows(merged: dict) -> list:
    """it/s (and images/s) of each training-step benchmark, for summary.md."""
    rows = []
    for bench in merged.get("benchmarks", []):
        extra = bench.get("extra_info") or {}
        median = (bench.get("stats") or {}).get("median")
        if "it_per_s" in extra and median:
            value = (bench.get("params") or {}).get("provider") or bench.get("param")
            per_step = median / extra.get("steps_per_call", 1)  # bench_training times several steps a call
            rows.append({"group": bench.get("group"), "provider": value, "median_ms": per_step * 1e3,
                         "it_per_s": extra["it_per_s"], "images_per_s": extra.get("images_per_s")})
    return sorted(rows, key=lambda row: (str(row["group"]), row["median_ms"]))


def _report(run: Run, step: Step, deadline: float) -> Outcome:
    sources = [run.bench_json_path(name) for name in BENCH_STEPS if run.bench_json_path(name).is_file()]
    merged = merge_benchmark_json(sources, run.facts.get("commit"))
    if merged is None:
        return Outcome("not run", "no benchmark step produced results")
    bench_json = run.out / "bench.json"
    bench_json.write_text(json.dumps(merged, indent=2) + "\n")
    run.facts["training"] = training_rows(merged)
    returncode = run.commands(step, [[sys.executable, HERE / "report.py", bench_json, "--out-dir", run.out]],
                              deadline, env=python_env())
    if returncode != 0:
        return Outcome("timed out" if returncode is None else "failed", f"report.py exit status {returncode}")
    partial = [name for name in BENCH_STEPS if not run.passed(name)]
    return Outcome("passed", f"{len(merged['benchmarks'])} benchmarks from {len(sources)} of {len(BENCH_STEPS)} "
                             f"bench steps{' (partial: ' + ', '.join(partial) + ')' if partial else ''}")


def build_steps(args) -> list[Step]:
    """The plan, in order, with each step's budget in seconds."""
    info = [sys.executable, "-m", "fastgan", "info", "--json"]
    pip = [sys.executable, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "--no-index", "-v", "-e", "."]
    driver = Path("<work>/kernel_driver")
    steps = [
        Step("install", "build", 110, "pip install -e . (FASTGAN_BUILD_CUDA=1, TORCH_CUDA_ARCH_LIST="
             f"{args.arch_list}); fastgan info must list cuda and triton", _install, commands=[pip, info]),
        Step("driver-build", "build", 110, "nvcc the kernel driver for sm_90", _driver_build,
             commands=[driver_compile_command(driver)]),
        Step("versions", "build", 30, "torch, triton, CUDA, driver, GPU, tools", _versions,
             commands=[[sys.executable, "-c", "<versions>"], ["nvidia-smi"], ["nvcc", "--version"]]),
        Step("kernel-tests", "check", 150, "tests marked cuda + every triton/cuda-parametrised test", _pytest_step,
             needs=("install",), commands=[step_pytest_argv(args, "kernel-tests", None)]),
        Step("trainer-graphs", "check", 90, "the trainer's CUDA-graph vs eager tests", _pytest_step,
             needs=("install",), commands=[step_pytest_argv(args, "trainer-graphs", None)]),
        Step("driver-run", "check", 40, "the kernel driver on the GPU", _driver_run, needs=("driver-build",),
             commands=[[driver, *args.driver_args]]),
    ]
    for tool, budget in zip(SANITIZER_TOOLS, (120, 150, 90, 90)):
        steps.append(Step(tool, "check", budget, f"compute-sanitizer --tool {tool} over the kernel driver",
                          _sanitizer(tool), needs=("driver-build",),
                          commands=[sanitizer_command(tool, driver, args.driver_args)]))
    for name, budget, summary in (("bench-losses", 90, "BCE, GAN BCE, Rényi at 256 and 2^26, fp32 + bf16"),
                                  ("bench-batch-norm", 70, "fused BatchNorm + LeakyReLU training fwd+bwd"),
                                  ("bench-training", 75, "toy MLP and DCGAN-64 bf16 GAN steps (it/s)")):
        steps.append(Step(name, "time", budget, summary, _pytest_step, needs=("install",),
                          commands=[step_pytest_argv(args, name, None)]))
    steps.append(Step("report", "time", 15, "bench.json -> bench/report.py -> RESULTS.md, results/", _report,
                      commands=[[sys.executable, "bench/report.py", "<out>/bench.json", "--out-dir", "<out>"]]))
    return steps


def select_steps(steps: list[Step], only: list[str], skip: list[str]) -> list[Step]:
    """The steps --only / --skip leave, with the steps they need."""
    names = [step.name for step in steps]
    for name in only + skip:
        if name not in names:
            raise UsageError(f"unknown step {name!r}; the steps are {', '.join(names)}")
    wanted = set(only or names) - set(skip)
    by_name = {step.name: step for step in steps}
    while True:
        needed = {need for name in wanted for need in by_name[name].needs} - wanted
        if not needed:
            break
        wanted |= needed
    return [step for step in steps if step.name in wanted]


def plan_text(steps: list[Step], args) -> str:
    lines = [f"fastgan GPU acceptance plan: {len(steps)} steps, at most {critical_path_s(steps)} s of "
             f"{args.time_limit} s (stage budgets + {RESERVE_S} s reserve)"]
    for stage, mode in STAGES:
        members = [step for step in steps if step.stage == stage]
        if not members:
            continue
        lines.append(f"  stage {stage} ({mode}, {stage_budget_s(steps, stage)} s):")
        for step in members:
            needs = f" [needs {', '.join(step.needs)}]" if step.needs else ""
            lines.append(f"    {step.name:<17}{step.budget_s:>4} s  {step.summary}{needs}")
            for command in step.commands:
                lines.append(f"        $ {' '.join(map(str, command))}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- dry run


def canned_benchmark_json() -> dict:
    """A small pytest-benchmark JSON in the shape the bench files write on a GPU, for checking
    report.py without one. Its figures are made up: the device says so."""
    def bench(group, provider_value, param, median_s, **extra):
        return {"group": group, "name": f"bench_case[{param}]", "fullname": f"bench/bench_case.py::bench_case[{param}]",
                "params": {"provider": provider_value}, "param": param,
                "stats": {"min": median_s * 0.95, "max": median_s * 1.2, "mean": median_s, "median": median_s,
                          "iqr": median_s * 0.05, "rounds": 100, "iterations": 1},
                "extra_info": {"device": "dry-run sample (made-up figures)", **extra}}

    group = f"bce_with_logits fwd+bwd float32 n={BANDWIDTH_N}"
    nbytes = 12 * BANDWIDTH_N
    return {
        "machine_info": {"python_version": "3.12.3", "machine": "x86_64"},
        "commit_info": {},
        "datetime": "2026-01-01T00:00:00+00:00",
        "version": "5.2.3",
        "benchmarks": [
            bench(group, "eager", "eager", 1.0e-3, compulsory_bytes=nbytes, gb_per_s=nbytes / 1.0e-3 / 1e9,
                  copy_gb_per_s=4300.0, launches=6, host_us=40.0),
            bench(group, "compile", "compile", 5.0e-4, compulsory_bytes=nbytes, gb_per_s=nbytes / 5.0e-4 / 1e9,
                  copy_gb_per_s=4300.0, launches=2, host_us=60.0),
            bench(group, "cuda", "fastgan-cuda", 2.5e-4, compulsory_bytes=nbytes, gb_per_s=nbytes / 2.5e-4 / 1e9,
                  copy_gb_per_s=4300.0, launches=2, host_us=20.0),
            bench("training step toy-mlp grid25 batch=512", "eager-loop", "eager-loop", 2.0e-3, it_per_s=500.0),
            bench("training step toy-mlp grid25 batch=512", "fastgan-graphs", "fastgan-graphs", 4.0e-4,
                  it_per_s=2500.0),
        ],
    }


def dry_run(args, steps: list[Step]) -> int:
    """Check what can be checked without a GPU; print the plan and a table of the checks."""
    checks: list[tuple[str, str, str]] = []

    def check(name, status, detail=""):
        checks.append((name, status, detail))
        print(f"[dry run] {name}: {status}{' - ' + detail if detail else ''}", flush=True)

    print(plan_text(steps, args), flush=True)
    path = critical_path_s(steps)
    check("budgets", "passed" if path <= args.time_limit else "failed",
          f"{path} s on the critical path, limit {args.time_limit} s")

    names = {step.name for step in steps}
    required = ["setup.py", "pyproject.toml", "bench/report.py", "bench/conftest.py", "bench/benchutil.py",
                "tests/conftest.py", TRAINER_TEST_FILE, *OP_TEST_FILES, *KERNEL_SOURCES]
    for name in names & set(SELECTIONS):
        required += [p for p in SELECTIONS[name].paths if p != "tests"]
    absent = sorted({p for p in required if not (REPO / p).exists()})
    check("files", "failed" if absent else "passed", ("missing: " + ", ".join(absent)) if absent
          else f"{len(set(required))} files present")

    driver_there = (REPO / DRIVER_SOURCE).is_file()
    if not driver_there:
        check("driver source", "skipped", f"{DRIVER_SOURCE} is not in the tree yet: on the GPU the driver and "
                                          "sanitizer steps will report skipped / not run")

    try:
        spec = importlib.util.spec_from_file_location("_fastgan_setup", REPO / "setup.py")
        setup_module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(setup_module)
        archs = setup_module.parse_arch_list(args.arch_list)
        home, where = setup_module.find_cuda_home()
        check("install settings", "passed", f"TORCH_CUDA_ARCH_LIST={args.arch_list} -> {archs}; "
                                            f"toolkit here: {home or 'none'} ({where})")
    except Exception as error:  # setup.py's own BuildError, SystemExit, ImportError ...
        check("install settings", "failed", f"{type(error).__name__}: {error}")

    pytest_steps = [name for name in SELECTIONS if name in names]
    if pytest_steps and not args.no_collect:
        _check_collection(args, pytest_steps, check)
    elif pytest_steps:
        check("collection", "skipped", "--no-collect")

    if "driver-build" in names:
        nvcc = find_tool("nvcc")
        if not driver_there:
            check("driver compile", "skipped", f"{DRIVER_SOURCE} is not in the tree yet")
        elif args.no_compile:
            check("driver compile", "skipped", "--no-compile")
        elif nvcc is None:
            check("driver compile", "skipped", "nvcc not found here (PATH, CUDA_HOME, /usr/local/cuda)")
        else:
            with tempfile.TemporaryDirectory(prefix="fastgan-driver-") as folder:
                log = io.StringIO()
                command = driver_compile_command(Path(folder) / "kernel_driver")
                start = time.monotonic()
                done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
                log.write(done.stdout + done.stderr)
                if done.returncode == 0:
                    check("driver compile", "passed", f"nvcc -arch=sm_90 in {time.monotonic() - start:.0f} s")
                else:
                    check("driver compile", "failed", f"nvcc exit status {done.returncode}: "
                                                      f"{' '.join(log.getvalue().split())[:400]}")

    if "report" in names:
        with tempfile.TemporaryDirectory(prefix="fastgan-report-") as folder:
            folder = Path(folder)
            sample = canned_benchmark_json()
            halves = [folder / "a.json", folder / "b.json"]
            halves[0].write_text(json.dumps({**sample, "benchmarks": sample["benchmarks"][:3]}))
            halves[1].write_text(json.dumps({**sample, "benchmarks": sample["benchmarks"][3:]}))
            merged = merge_benchmark_json(halves, "0123456789abcdef")
            (folder / "bench.json").write_text(json.dumps(merged))
            done = subprocess.run([sys.executable, str(HERE / "report.py"), str(folder / "bench.json"),
                                   "--out-dir", str(folder / "out")], capture_output=True, text=True,
                                  env=python_env())
            written = sorted(p.relative_to(folder / "out").as_posix() for p in (folder / "out").rglob("*")
                             if p.is_file())
            expected = {"RESULTS.md", "results/dry-run-sample-made-up-figures.json",
                        "results/dry-run-sample-made-up-figures.png"}
            rows = training_rows(merged)
            if done.returncode == 0 and expected <= set(written) and len(merged["benchmarks"]) == 5 and len(rows) == 2:
                check("report", "passed", "merged a canned sample and ran report.py on it: " + ", ".join(written))
            else:
                check("report", "failed", f"report.py exit status {done.returncode}, wrote {written}: "
                                          f"{done.stderr.strip()[-300:]}")

    for tool in ("nvcc", "compute-sanitizer", "nvidia-smi"):
        found = find_tool(tool)
        check(f"tool {tool}", "passed" if found else "skipped",
              found or "not on this machine (needed on the GPU machine)")
    plugins = available_plugins()
    xdist = "found" if "xdist" in plugins else "absent (the tests run in one process)"
    check("pytest plugins", "passed", f"pytest-xdist {xdist}, pytest-timeout "
                                      f"{'found' if 'timeout' in plugins else 'absent'}")

    failed = [name for name, status, _ in checks if status == "failed"]
    table = ["| check | status | detail |", "|---|---|---|"] + \
        [f"| {name} | {status} | {detail.replace('|', '/')} |" for name, status, detail in checks]
    verdict = "dry run PASSED" if not failed else f"dry run FAILED: {', '.join(failed)}"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "dry-run.md").write_text("# fastgan GPU acceptance: dry run\n\n```\n" + plan_text(steps, args) +
                                         "\n```\n\n" + "\n".join(table) + f"\n\n**{verdict}**\n")
    print("\n".join(table))
    print(verdict)
    return 1 if failed else 0


def _check_collection(args, pytest_steps: list[str], check) -> None:
    """Collect tests/ and bench/ once, with the benchmarks parametrised as on a GPU, and check
    that every rule of every pytest step finds its cases."""
    with tempfile.TemporaryDirectory(prefix="fastgan-collect-") as folder:
        report_path = Path(folder) / "selection.json"
        paths = sorted({p for name in pytest_steps for p in SELECTIONS[name].paths})
        paths = [p for p in paths if not any(p != q and p.startswith(q + "/") for q in paths)]
        argv = [sys.executable, "-m", "pytest", *paths, "--collect-only", "-q", "-p", "no:cacheprovider",
                "-p", "gpu_acceptance", f"--acceptance-select={','.join(pytest_steps)}",
                "--acceptance-gpu-shapes", f"--acceptance-report={report_path}"]
        if args.bench_cases == "all":
            argv.append("--acceptance-everything")
        done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, env=python_env())
        try:
            report = json.loads(report_path.read_text())
        except (OSError, ValueError):
            tail = " ".join((done.stdout + done.stderr).split())[-500:]
            check("collection", "failed", f"pytest --collect-only exit status {done.returncode}: {tail}")
            return
        for name in pytest_steps:
            problems = coverage_problems(name, report[name]["rules"])
            count = report[name]["selected"]
            if problems or count == 0:
                check(f"collect {name}", "failed", "; ".join(problems) or "selects nothing")
            else:
                check(f"collect {name}", "passed", f"{count} cases, every rule covered")


# --------------------------------------------------------------------------- command line


class UsageError(Exception):
    """A bad argument: reported in one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


def parse_args(argv):
    parser = _Parser(prog="bench/gpu_acceptance.py", description=__doc__.split("\n\n")[0],
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="the output folder (created; at most 7 files are written)")
    parser.add_argument("--dry-run", action="store_true", help="check the plan on this machine; no GPU needed")
    parser.add_argument("--time-limit", type=int, default=DEVICE_CALL_S,
                        help="seconds the whole run may take (default: %(default)s, one device call)")
    parser.add_argument("--work-dir", type=Path, help="where logs are written before packing (default: a new "
                                                      "temporary folder)")
    parser.add_argument("--commit", help="the fastgan commit to record (default: FASTGAN_COMMIT, else git)")
    parser.add_argument("--only", default="", help="comma-separated steps to run (with the steps they need)")
    parser.add_argument("--skip", default="", help="comma-separated steps to leave out")
    parser.add_argument("--bench-cases", choices=("must", "all"), default="must",
                        help="must: the cases the goals need (default); all: every benchmark case")
    parser.add_argument("--bench-max-time", type=float, default=0.1,
                        help="pytest-benchmark --benchmark-max-time per case (default: %(default)s s)")
    parser.add_argument("--workers", type=int, default=max(1, min(12, (os.cpu_count() or 1) - 4)),
                        help="pytest-xdist workers for kernel-tests when pytest-xdist is installed (default: "
                             "the CPUs less 4 for the steps beside it, at most 12: %(default)s here)")
    parser.add_argument("--arch-list", default="9.0", help="TORCH_CUDA_ARCH_LIST for the install "
                                                           "(default: %(default)s)")
    parser.add_argument("--driver-args", default="", help="arguments passed to the kernel driver (one string)")
    parser.add_argument("--no-compile", action="store_true", help="dry run: skip compiling the driver with nvcc")
    parser.add_argument("--no-collect", action="store_true", help="dry run: skip the pytest collection")
    args = parser.parse_args(argv)
    if args.out is None:
        raise UsageError("--out DIR is required: the folder that receives summary.md, RESULTS.md, results/ "
                         "and logs.tar.gz")
    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out {args.out} exists and is not a folder")
    if args.time_limit <= RESERVE_S:
        raise UsageError(f"--time-limit must be more than {RESERVE_S} s; got {args.time_limit}")
    if args.bench_max_time <= 0:
        raise UsageError(f"--bench-max-time must be positive; got {args.bench_max_time}")
    args.out = args.out.resolve()  # the steps run in the repository root
    args.work_dir = args.work_dir.resolve() if args.work_dir else None
    args.only = [name for name in args.only.split(",") if name]
    args.skip = [name for name in args.skip.split(",") if name]
    args.driver_args = args.driver_args.split()
    return args


def main(argv=None) -> int:
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
        steps = select_steps(build_steps(args), args.only, args.skip)
    except UsageError as error:
        print(f"gpu_acceptance: {error}", file=sys.stderr)
        return 2
    if args.dry_run:
        return dry_run(args, steps)
    path = critical_path_s(steps)
    if path > args.time_limit:
        print(f"gpu_acceptance: the step budgets need {path} s, more than --time-limit {args.time_limit} s",
              file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    args.work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="fastgan-acceptance-"))
    print(plan_text(steps, args), flush=True)
    print(f"[gpu_acceptance] output: {args.out}; logs: {args.work_dir}", flush=True)
    run = Run(args, steps)
    status = run.execute()
    print((args.out / "summary.md").read_text(), flush=True)
    files = [path for path in args.out.rglob("*") if path.is_file()]
    if len(files) > 8:
        print(f"[gpu_acceptance] note: {args.out} holds {len(files)} files (some from before this run); a device "
              "call brings back 8", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
