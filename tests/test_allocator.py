"""fastgan._allocator: `fastgan train` keeps freed large blocks in its heap (glibc), and the
switch turns it off. Checked in child processes (the setting is process-wide) by what glibc
reports: after a 16 MiB block is freed, the heap still holds it as free memory."""

import os
import subprocess
import sys

import pytest

CHILD = """
import ctypes, sys
from fastgan._allocator import keep_freed_memory
kept = keep_freed_memory()
libc = ctypes.CDLL(None)

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]

libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
block = libc.malloc(16 << 20)
ctypes.memset(block, 1, 16 << 20)
libc.free(block)
print(int(kept), libc.mallinfo2().fordblks >= 16 << 20)
"""


def child(environment):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {name: value for name, value in os.environ.items()  # glibc's own malloc, as it comes
           if not name.startswith("MALLOC_") and name not in ("GLIBC_TUNABLES", "LD_PRELOAD")}
    env.update(PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""), **environment)
    return subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True).stdout.split()


glibc = pytest.mark.skipif(not sys.platform.startswith("linux") or not hasattr(__import__("ctypes").CDLL(None),
                                                                                "mallinfo2"),
                           reason="glibc >= 2.33 (mallinfo2) on Linux only")


@glibc
def test_a_freed_large_block_stays_in_the_heap():
    assert child({"FASTGAN_KEEP_FREED_MEMORY": "1"}) == ["1", "True"]


@glibc
def test_the_switch_leaves_glibc_as_it_is():
    assert child({"FASTGAN_KEEP_FREED_MEMORY": "0"}) == ["0", "False"]  # glibc unmaps the block on free


@glibc
@pytest.mark.parametrize("setting", [{"MALLOC_TRIM_THRESHOLD_": "131072"}, {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=131072"},
                                     {"LD_PRELOAD": "/nonexistent/libjemalloc.so.2"}])
def test_the_users_own_allocator_settings_are_left_alone(setting):
    assert child(setting)[0] == "0"


def test_train_sets_it(monkeypatch, tmp_path):
    from fastgan import _allocator, cli

    calls = []
    monkeypatch.setattr(_allocator, "keep_freed_memory", lambda: calls.append(1) or True)
    assert cli.main(["train", "--steps", "1", "--quiet", "--out", str(tmp_path / "run"), "--log-every", "1"]) == 0
    assert calls == [1]
