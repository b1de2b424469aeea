"""Run a function in K processes joined by a gloo process group, from inside a test.

``run_distributed(fn, world_size, *args)`` spawns ``world_size`` fresh Python processes
(``spawn`` start method: no inherited state), initialises ``torch.distributed`` with the gloo
backend and a file rendezvous in a temporary directory, calls ``fn(rank, world_size, *args)``
in each, and returns the per-rank return values as a list ordered by rank. A worker that
raises fails the test with its traceback; the whole run is bounded by ``timeout`` seconds
(a hung collective is killed, not waited for). ``fn`` must be a top-level function of a
test module (the worker loads that file by path: pytest's importlib mode gives test modules
names no other process can import), and its arguments and result picklable.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import pickle
import tempfile
import time
import traceback

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

DEFAULT_TIMEOUT_S = 120.0


def _load_function(path: str, name: str):
    spec = importlib.util.spec_from_file_location(f"_fastgan_distributed_worker_{os.getpid()}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, name)


def _worker(rank: int, world_size: int, rendezvous: str, results_dir: str, source: tuple, args) -> None:
    # One thread per process: K processes on a 2-core machine must not oversubscribe.
    torch.set_num_threads(1)
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before the worker first imports triton
    outcome: tuple
    try:
        dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world_size)
        try:
            outcome = ("ok", _load_function(*source)(rank, world_size, *args))
            dist.barrier()  # nobody tears the group down while a peer still talks to it
        finally:
            dist.destroy_process_group()
    except BaseException:  # reported to the parent, which fails the test
        outcome = ("error", traceback.format_exc())
    with open(os.path.join(results_dir, f"rank{rank}.pkl"), "wb") as file:
        pickle.dump(outcome, file)


def _joined(context) -> bool:
    """``context.join`` for one second; a worker killed by a signal (no result file) counts as
    finished, so its peers are stopped and the missing result is reported by rank."""
    try:
        return context.join(timeout=1.0)
    except mp.ProcessExitedException:
        return True


def _failed_ranks(directory: str, world_size: int) -> list:
    failed = []
    for rank in range(world_size):
        path = os.path.join(directory, f"rank{rank}.pkl")
        if os.path.exists(path):
            try:
                with open(path, "rb") as file:
                    status, value = pickle.load(file)
            except (EOFError, pickle.UnpicklingError):  # still being written
                continue
            if status != "ok":
                failed.append((rank, value))
    return failed


def run_distributed(fn, world_size: int, *args, timeout: float = DEFAULT_TIMEOUT_S) -> list:
    """``[fn(0, world_size, *args), ..., fn(world_size - 1, world_size, *args)]``, each run
    in its own process of a gloo group; raises ``RuntimeError`` naming the failing rank."""
    with tempfile.TemporaryDirectory(prefix="fastgan-dist-") as directory:
        rendezvous = os.path.join(directory, "rendezvous")
        context = mp.start_processes(
            _worker, args=(world_size, rendezvous, directory, (inspect.getfile(fn), fn.__name__), args),
            nprocs=world_size, join=False,
            start_method="spawn",
        )
        deadline = time.monotonic() + timeout
        try:
            while not _joined(context):
                # A rank that failed leaves its peers blocked in a collective: stop waiting.
                if time.monotonic() > deadline or _failed_ranks(directory, world_size):
                    break
        finally:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
        failed = _failed_ranks(directory, world_size)
        if failed:
            raise RuntimeError("\n".join(f"rank {rank} of {fn.__name__} failed:\n{message}" for rank, message in failed))
        results = []
        for rank in range(world_size):
            path = os.path.join(directory, f"rank{rank}.pkl")
            if not os.path.exists(path):
                code = context.processes[rank].exitcode
                raise RuntimeError(f"rank {rank} of {fn.__name__} gave no result within {timeout:.0f} s "
                                   f"(exit code {code}: negative is the signal that killed it; None: hung and killed)")
            with open(path, "rb") as file:
                status, value = pickle.load(file)
            results.append(value)
        return results
