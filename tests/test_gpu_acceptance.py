"""bench/gpu_acceptance.py without a GPU: its dry run, its argument errors, the case selection
it hands pytest, the time limits it puts on each step, and the pieces of its report."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "bench" / "gpu_acceptance.py"

_spec = importlib.util.spec_from_file_location("gpu_acceptance_under_test", SCRIPT)
acceptance = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = acceptance  # dataclasses look their module up there
_spec.loader.exec_module(acceptance)


def _script(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=REPO,
                          timeout=timeout, env={**os.environ, **(env or {})})


# --------------------------------------------------------------------------- arguments


def test_missing_out_is_one_clear_line():
    result = _script("--dry-run")
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--out DIR is required" in lines[0]


@pytest.mark.parametrize("args, words", [
    (["--only", "nosuchstep"], ["unknown step 'nosuchstep'", "install"]),
    (["--skip", "bench"], ["unknown step 'bench'"]),
    (["--time-limit", "10"], ["--time-limit"]),
    (["--bench-max-time", "0"], ["--bench-max-time"]),
    (["--bench-cases", "some"], ["--bench-cases", "must", "all"]),
    (["--frobnicate"], ["--frobnicate"]),
])
def test_bad_arguments_are_one_line_naming_the_argument(tmp_path, capsys, args, words):
    assert acceptance.main(["--out", str(tmp_path / "out"), *args]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_acceptance: ")
    for word in words:
        assert word in lines[0]
    assert not (tmp_path / "out").exists()


def test_out_that_is_a_file_is_refused(tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.write_text("")
    assert acceptance.main(["--out", str(taken)]) == 2
    assert "exists and is not a folder" in capsys.readouterr().err


def test_a_run_whose_budgets_exceed_the_time_limit_does_not_start(tmp_path, capsys):
    assert acceptance.main(["--out", str(tmp_path / "out"), "--time-limit", "300"]) == 2
    assert "more than --time-limit 300 s" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_wrapper_passes_arguments_on():
    result = subprocess.run(["bash", str(REPO / "bench" / "gpu_acceptance.sh")], capture_output=True, text=True,
                            env={**os.environ, "PYTHON": sys.executable}, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [next(line for line in result.stderr.splitlines() if line)]
    assert "--out DIR is required" in result.stderr


# --------------------------------------------------------------------------- the plan


def _steps(*args):
    return acceptance.build_steps(acceptance.parse_args(["--out", "unused", *args]))


def test_relative_paths_are_resolved_before_the_steps_change_folder():
    args = acceptance.parse_args(["--out", "relative/out", "--work-dir", "relative/work"])
    assert args.out == Path("relative/out").resolve() and args.work_dir == Path("relative/work").resolve()


def test_plan_fits_one_device_call_and_covers_the_brief():
    steps = _steps()
    names = [step.name for step in steps]
    assert names == ["install", "driver-build", "versions", "kernel-tests", "trainer-graphs", "driver-run",
                     "memcheck", "racecheck", "synccheck", "initcheck", "bench-losses", "bench-batch-norm",
                     "bench-training", "report"]
    assert acceptance.critical_path_s(steps) <= 540
    by_name = {step.name: step for step in steps}
    pip = " ".join(map(str, by_name["install"].commands[0]))
    assert "pip install --no-build-isolation --no-deps" in pip and pip.endswith("-e .")
    driver = " ".join(map(str, by_name["driver-build"].commands[0]))
    assert "-O2 -std=c++17 -arch=sm_90 -lineinfo -Icsrc csrc/testing/kernel_driver.cu csrc/bce.cu csrc/renyi.cu " \
           "csrc/batch_norm.cu -o" in driver
    for tool in ("memcheck", "racecheck", "synccheck", "initcheck"):
        command = " ".join(map(str, by_name[tool].commands[0]))
        assert f"--tool {tool}" in command and "--error-exitcode 1" in command
    for name in acceptance.BENCH_STEPS:
        assert "--benchmark-only" in by_name[name].commands[0]
    # The timed stage runs alone and in turn; the other two run their steps together.
    assert dict(acceptance.STAGES) == {"build": "together", "check": "together", "time": "in turn"}
    assert {step.stage for step in steps if step.name.startswith("bench") or step.name == "report"} == {"time"}


def test_critical_path_adds_the_largest_budget_of_a_together_stage_and_every_budget_of_an_in_turn_one():
    def step(name, stage, budget):
        return acceptance.Step(name, stage, budget, "", lambda *a: None)

    steps = [step("a", "build", 50), step("b", "build", 70), step("c", "check", 20), step("d", "time", 30),
             step("e", "time", 40)]
    assert acceptance.critical_path_s(steps) == acceptance.RESERVE_S + 70 + 20 + 30 + 40


def test_only_adds_the_steps_a_step_needs():
    steps = acceptance.select_steps(_steps(), ["bench-training", "report"], [])
    assert [step.name for step in steps] == ["install", "bench-training", "report"]
    steps = acceptance.select_steps(_steps(), ["memcheck"], [])
    assert [step.name for step in steps] == ["driver-build", "memcheck"]
    steps = acceptance.select_steps(_steps(), [], ["racecheck", "initcheck"])
    assert "racecheck" not in [step.name for step in steps] and len(steps) == 12


# --------------------------------------------------------------------------- case selection


def _case(path, function="test_x", markers=(), **params):
    return acceptance.Case(path, function, params, frozenset(markers))


def test_kernel_tests_select_triton_and_cuda_tests_and_cuda_marked_ones():
    kernel, trainer = acceptance.SELECTIONS["kernel-tests"], acceptance.SELECTIONS["trainer-graphs"]
    assert kernel.selects(_case("tests/test_bce.py", backend="triton"))
    assert kernel.selects(_case("tests/test_renyi.py", kernel_backend="cuda", markers=["cuda"]))
    assert not kernel.selects(_case("tests/test_bce.py", backend="torch"))
    assert not kernel.selects(_case("tests/test_bce.py"))
    assert kernel.selects(_case("tests/test_data.py", markers=["cuda"]))
    graphs = _case("tests/test_trainer.py", "test_cuda_graphs_match_eager_after_20_steps", markers=["cuda"])
    assert trainer.selects(graphs) and not kernel.selects(graphs)
    assert not trainer.selects(_case("tests/test_trainer.py", "test_resume_equals_uninterrupted"))
    assert not kernel.selects(_case("bench/bench_bce.py", "bench_bce_with_logits", provider="triton"))


def test_bench_selection_keeps_the_must_have_cases():
    losses = acceptance.SELECTIONS["bench-losses"]
    bce = dict(path="bench/bench_bce.py", function="bench_bce_with_logits")
    assert losses.selects(_case(**bce, provider="compile", n=2**26, backward=True))
    assert losses.selects(_case(**bce, provider="cuda", n=256, backward=False))
    assert not losses.selects(_case(**bce, provider="compile", n=256, backward=False))
    assert not losses.selects(_case(**bce, provider="cuda", n=1024, backward=True))
    assert not losses.selects(_case(**bce, provider="torch", n=2**26, backward=True))
    assert losses.selects(_case(**bce, provider="torch", n=1024, backward=True), everything=True)
    assert not losses.selects(_case("bench/bench_batch_norm.py", "bench_batch_norm_leaky_relu"), everything=True)
    training = acceptance.SELECTIONS["bench-training"]
    dcgan = dict(path="bench/bench_training.py", function="bench_dcgan64_step")
    assert training.selects(_case(**dcgan, provider="fastgan-graphs"))
    assert not training.selects(_case(**dcgan, provider="compile"))


def test_coverage_names_the_rule_that_found_nothing_and_the_values_missing():
    import torch

    losses = acceptance.SELECTIONS["bench-losses"]
    cases = [_case("bench/bench_bce.py", "bench_bce_with_logits", provider=provider, n=256, backward=True,
                   dtype=torch.float32) for provider in ("eager", "compile", "triton")]
    problems = acceptance.coverage_problems("bench-losses", acceptance.coverage(losses, cases))
    assert "bench-losses: 'BCE fwd+bwd, latency size, every provider' has no case with dtype bfloat16" in problems
    assert "bench-losses: 'BCE fwd+bwd, latency size, every provider' has no case with provider fastgan-cuda" \
        in problems
    assert "bench-losses: no collected case matches 'Rényi fwd+bwd, bandwidth size'" in problems
    assert not any("BCE host overhead" in line and "has no case" in line for line in problems)


# --------------------------------------------------------------------------- running steps


def test_an_overrunning_command_is_interrupted_and_its_process_group_killed(tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    code = textwrap.dedent(f"""
        import signal, subprocess, sys, time
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # ignores the polite request
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        open({str(pid_file)!r}, "w").write(str(child.pid))
        time.sleep(60)
    """)
    start = time.monotonic()
    with open(tmp_path / "log", "w") as log:
        returncode, seconds = acceptance.run_command([sys.executable, "-c", code], log, time.monotonic() + 3.0,
                                                     grace=1.0)
    assert returncode is None
    assert time.monotonic() - start < 10
    text = (tmp_path / "log").read_text()
    assert "time limit reached: SIGINT, SIGKILL in 1 s" in text and "exit status none (time limit)" in text
    grandchild = int(pid_file.read_text())
    for _ in range(50):
        try:
            os.kill(grandchild, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"the step's grandchild {grandchild} outlived its time limit")


def test_a_command_that_finishes_reports_its_exit_status(tmp_path):
    with open(tmp_path / "log", "w") as log:
        returncode, _ = acceptance.run_command([sys.executable, "-c", "print('hello'); raise SystemExit(3)"], log,
                                               time.monotonic() + 60)
    assert returncode == 3
    assert "hello" in (tmp_path / "log").read_text()


BENCH_FILE = """
import os, signal, time

def bench_first(benchmark):
    benchmark(time.sleep, 0.001)

def bench_second_is_interrupted(benchmark):
    calls = []

    def interrupted():
        calls.append(1)
        if len(calls) == 2:  # the first timed round, after one calibration call: no timing recorded yet
            os.kill(os.getpid(), signal.SIGINT)  # the step's time limit, as the runner sends it
        time.sleep(0.01)

    benchmark(interrupted)
"""


def test_interrupted_benchmarks_keep_the_cases_that_finished(tmp_path):
    (tmp_path / "bench_interrupt.py").write_text(BENCH_FILE)
    output = tmp_path / "out.json"
    argv = [sys.executable, "-m", "pytest", "bench_interrupt.py", "-q", "-p", "no:cacheprovider",
            "-p", "gpu_acceptance", "-o", "python_functions=bench_*", "-o", "python_files=bench_*.py",
            f"--benchmark-json={output}"]
    result = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=120,
                            env=acceptance.python_env())
    assert result.returncode != 0 and "KeyboardInterrupt" in result.stdout
    names = [bench["name"] for bench in json.loads(output.read_text())["benchmarks"]]
    assert names == ["bench_first"], result.stdout[-2000:] + result.stderr[-2000:]


def test_the_plugin_drops_benchmarks_without_timings_before_pytest_benchmark_saves():
    class Bench:
        def __init__(self, rounds):
            self.rounds = rounds

        def __bool__(self):  # as pytest-benchmark's own records: false until a round is timed
            return self.rounds > 0

    timed, empty = Bench(3), Bench(0)
    session = type("Session", (), {})()
    session.config = type("Config", (), {})()
    session.config._benchmarksession = type("BenchmarkSession", (), {"benchmarks": [timed, empty]})()
    wrapper = acceptance.pytest_sessionfinish(session, 2)
    next(wrapper)  # the part before pytest-benchmark's own wrapper writes the JSON
    assert session.config._benchmarksession.benchmarks == [timed]


def _junit(tmp_path, cases):
    path = tmp_path / "junit.xml"
    path.write_text(f"<testsuites><testsuite>{''.join(cases)}</testsuite></testsuites>")
    return path


def test_pytest_steps_fail_on_failures_and_on_skips_for_want_of_the_gpu(tmp_path):
    ok = '<testcase classname="tests.test_bce" name="test_a[cuda]"/>'
    other_skip = '<testcase classname="t" name="b"><skipped message="needs two GPUs"/></testcase>'
    no_gpu = '<testcase classname="t" name="c"><skipped message="cuda backend unavailable: not built"/></testcase>'
    failure = '<testcase classname="t" name="d"><failure message="assert 1 == 2"/></testcase>'
    outcome = acceptance.judge_pytest(0, _junit(tmp_path, [ok, other_skip]), "tests")
    assert outcome.status == "passed" and outcome.detail.startswith("1 passed, 0 failed, 1 skipped")
    outcome = acceptance.judge_pytest(0, _junit(tmp_path, [ok, no_gpu]), "tests")
    assert outcome.status == "failed" and "skipped without the GPU: 1 x cuda backend unavailable" in outcome.detail
    outcome = acceptance.judge_pytest(1, _junit(tmp_path, [ok, failure]), "tests")
    assert outcome.status == "failed" and "first failures: t::d" in outcome.detail
    assert acceptance.judge_pytest(None, _junit(tmp_path, [ok]), "tests").status == "timed out"
    assert acceptance.judge_pytest(None, tmp_path / "absent.xml", "tests").status == "timed out"
    assert acceptance.judge_pytest(5, _junit(tmp_path, []), "tests").status == "failed"


def test_merged_benchmark_json_concatenates_and_records_the_given_commit(tmp_path):
    sample = acceptance.canned_benchmark_json()
    first, second, broken = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    stale = {"id": "de272e3", "dirty": True, "branch": "main"}  # what a device copy's old .git said
    first.write_text(json.dumps({**sample, "commit_info": stale, "benchmarks": sample["benchmarks"][:2]}))
    second.write_text(json.dumps({**sample, "benchmarks": sample["benchmarks"][2:]}))
    broken.write_text("{not json")
    merged = acceptance.merge_benchmark_json([first, broken, tmp_path / "absent.json", second], "abc123-dirty")
    assert [b["name"] for b in merged["benchmarks"]] == [b["name"] for b in sample["benchmarks"]]
    assert merged["commit_info"] == {"id": "abc123", "dirty": True}
    assert acceptance.merge_benchmark_json([broken], "abc") is None
    rows = acceptance.training_rows(merged)
    assert [(row["provider"], row["it_per_s"]) for row in rows] == [("fastgan-graphs", 2500.0), ("eager-loop", 500.0)]


# --------------------------------------------------------------------------- the dry run


def test_dry_run_checks_the_plan(tmp_path):
    result = _script("--out", str(tmp_path / "out"), "--dry-run", "--no-compile")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    for step in ("install", "driver-build", "kernel-tests", "trainer-graphs", "memcheck", "racecheck",
                 "bench-losses", "bench-batch-norm", "bench-training", "report"):
        assert f"    {step} " in out
    for check in ("budgets: passed", "files: passed", "install settings: passed", "collect kernel-tests: passed",
                  "collect trainer-graphs: passed", "collect bench-losses: passed", "collect bench-batch-norm: passed",
                  "collect bench-training: passed", "report: passed", "driver compile: skipped"):
        assert f"[dry run] {check}" in out
    assert out.rstrip().endswith("dry run PASSED")
    assert "dry run PASSED" in (tmp_path / "out" / "dry-run.md").read_text()


def test_dry_run_fails_when_the_budgets_exceed_the_time_limit(tmp_path):
    result = _script("--out", str(tmp_path), "--dry-run", "--no-compile", "--no-collect", "--time-limit", "300")
    assert result.returncode == 1
    needed = acceptance.critical_path_s(_steps())
    assert f"[dry run] budgets: failed - {needed} s on the critical path, limit 300 s" in result.stdout
    assert result.stdout.rstrip().endswith("dry run FAILED: budgets")
