"""Faults that end the process loudly, in a child interpreter.

With ``$ZBIGARRAY_FAULT_ABORT`` set, and in threads that have no Python
thread state, a failed loadblk or a RAM full of dirty pages prints what
failed and aborts, as the kernel kills a program whose mmapped file cannot
be read (elsewhere they raise: test_fault_errors.py).  Faults that are not
ours crash as they would without zbigarray.  Every child runs under a
timeout: a hang fails.
"""

from __future__ import annotations

import re
import signal
import subprocess
import textwrap
from pathlib import Path

import pytest

from tests.common import run_python
from zbigarray.bigfile import FAULT_ABORT_ENV

pytestmark = pytest.mark.subprocess

FAIL_STOP = {FAULT_ABORT_ENV: "1"}

FAILING_FILE = textwrap.dedent("""
    import sys, threading
    import numpy as np
    from zbigarray.bigfile import BigFile

    class Failing(BigFile):
        def loadblk(self, blk, buf):
            if blk == 3:
                raise RuntimeError("cannot read block three")
            buf[:] = b"\\x01" * len(buf)

    f = Failing(4096)
    fileh = f.fileh_open()
    vma = fileh.mmap(0, 8)
    a = np.frombuffer(vma, np.uint8)
    print(repr(f), flush=True)
    assert a[0] == 1
""")

ACCESSES = {
    "python": "print(bytes(memoryview(vma)[3 * 4096:3 * 4096 + 4]))",
    "numpy-nogil": "print(a.sum())",
    "thread": """
t = threading.Thread(target=lambda: print(a[3 * 4096 + 1:].sum()))
t.start()
t.join()
""",
}


@pytest.mark.parametrize("access", sorted(ACCESSES))
def test_loadblk_error_aborts_with_traceback_and_block(access: str) -> None:
    r = run_python(FAILING_FILE + ACCESSES[access] + "\nprint('continued')\n", env=FAIL_STOP)
    assert r.returncode == -signal.SIGABRT, r.stderr
    file_repr = r.stdout.splitlines()[0]
    assert "continued" not in r.stdout
    assert "Traceback" in r.stderr
    assert "RuntimeError: cannot read block three" in r.stderr
    assert "loadblk(blk=3)" in r.stderr
    assert file_repr in r.stderr


def test_loadblk_error_before_first_success_aborts() -> None:
    """Even when the very first load of the process fails (nothing set up yet)."""
    r = run_python("""
        from zbigarray.bigfile import BigFile
        class Broken(BigFile):
            def loadblk(self, blk, buf):
                raise ValueError("nope")
        fileh = Broken(4096).fileh_open()
        memoryview(fileh.mmap(7, 1))[0] = 1
        print("continued")
    """, env=FAIL_STOP)
    assert r.returncode == -signal.SIGABRT, r.stderr
    assert "continued" not in r.stdout
    assert "ValueError: nope" in r.stderr
    assert "loadblk(blk=7)" in r.stderr


def test_ram_full_of_dirty_pages_aborts_with_a_message() -> None:
    r = run_python("""
        from zbigarray.bigfile import BigFile, RAM
        class Zeros(BigFile):
            def loadblk(self, blk, buf):
                buf[:] = bytes(len(buf))
        fileh = Zeros(4096).fileh_open(ram=RAM(4 * 4096))
        m = memoryview(fileh.mmap(0, 16))
        for blk in range(16):
            m[blk * 4096] = 1
            print("dirtied", blk, flush=True)
        print("continued")
    """, env=FAIL_STOP)
    assert r.returncode == -signal.SIGABRT, r.stderr
    assert "continued" not in r.stdout
    assert "dirtied 3" in r.stdout and "dirtied 4" not in r.stdout
    assert re.search(r"RAM|capacity", r.stderr, re.IGNORECASE), r.stderr


# A C thread with no Python thread state touching memory: built at test time,
# as no Python API makes a thread without one.
C_TOUCHER = """
#include <pthread.h>
static void *touch(void *p) { return (void *)(long)*(volatile unsigned char *)p; }
long touch_in_c_thread(unsigned char *p)
{
    pthread_t t;
    void *r;
    if (pthread_create(&t, 0, touch, p) != 0 || pthread_join(t, &r) != 0)
        return -1;
    return (long)r;
}
"""


def test_loadblk_error_in_a_thread_without_python_aborts(tmp_path: Path) -> None:
    """Nothing to raise into: the report, then abort, as the default policy."""
    src = tmp_path / "toucher.c"
    src.write_text(C_TOUCHER)
    lib = tmp_path / "toucher.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-pthread", "-o", str(lib), str(src)],
                   check=True)
    r = run_python(FAILING_FILE + f"""
import ctypes
toucher = ctypes.CDLL({str(lib)!r})
toucher.touch_in_c_thread.argtypes = [ctypes.c_void_p]
print("ok block", toucher.touch_in_c_thread(vma.addr_start + 4096), flush=True)
toucher.touch_in_c_thread(vma.addr_start + 3 * 4096)
print("continued")
""")
    assert r.returncode == -signal.SIGABRT, r.stderr
    assert "ok block 1" in r.stdout and "continued" not in r.stdout
    assert "RuntimeError: cannot read block three" in r.stderr
    assert "loadblk(blk=3)" in r.stderr


SEGV_OUTSIDE = """
    import ctypes
    {setup}
    from zbigarray.bigfile import BigFile
    class Ones(BigFile):
        def loadblk(self, blk, buf):
            buf[:] = b"\\x01" * len(buf)
    fileh = Ones(4096).fileh_open()
    m = memoryview(fileh.mmap(0, 4))
    assert m[0] == 1
    {after_mmap}
    print("mapped", flush=True)
    def crash_here():
        ctypes.string_at(8, 1)  # address 0 would read as a NULL "no data"
    crash_here()
    print("continued")
"""


def test_foreign_segfault_still_kills() -> None:
    r = run_python(SEGV_OUTSIDE.format(setup="", after_mmap=""))
    assert r.returncode == -signal.SIGSEGV, r.stderr
    assert r.stdout.splitlines() == ["mapped"]


def test_foreign_segfault_with_faulthandler_enabled_first() -> None:
    """faulthandler installed before us still reports a segfault that is not ours."""
    r = run_python(SEGV_OUTSIDE.format(setup="import faulthandler; faulthandler.enable()",
                                       after_mmap=""))
    assert r.returncode == -signal.SIGSEGV, r.stderr
    assert r.stdout.splitlines() == ["mapped"]
    assert "Fatal Python error: Segmentation fault" in r.stderr
    assert "crash_here" in r.stderr


def test_foreign_segfault_with_faulthandler_enabled_later() -> None:
    """faulthandler installed over us: a later mmap puts us back on top, both work."""
    after = """
    import faulthandler; faulthandler.enable()
    m2 = memoryview(fileh.mmap(10, 4))
    assert m2[4096 * 3] == 1
    """
    r = run_python(SEGV_OUTSIDE.format(setup="", after_mmap=after))
    assert r.returncode == -signal.SIGSEGV, r.stderr
    assert r.stdout.splitlines() == ["mapped"]
    assert "Fatal Python error: Segmentation fault" in r.stderr
    assert "crash_here" in r.stderr


def test_touching_a_closed_mapping_crashes() -> None:
    """After close the addresses are not ours any more: a touch is a plain segfault."""
    r = run_python("""
        import ctypes
        from zbigarray.bigfile import BigFile
        class Ones(BigFile):
            def loadblk(self, blk, buf):
                buf[:] = b"\\x01" * len(buf)
        fileh = Ones(4096).fileh_open()
        vma = fileh.mmap(0, 4)
        addr = vma.addr_start
        assert ctypes.string_at(addr, 1) == b"\\x01"
        vma.close()
        print("closed", flush=True)
        ctypes.string_at(addr + 4096, 1)
        print("continued")
    """)
    assert r.returncode == -signal.SIGSEGV, r.stderr
    assert r.stdout.splitlines() == ["closed"]


def test_segfault_inside_loadblk_crashes() -> None:
    """A bad pointer in loadblk (a fault inside our handler) crashes, never hangs."""
    r = run_python("""
        import ctypes
        from zbigarray.bigfile import BigFile
        class Bad(BigFile):
            def loadblk(self, blk, buf):
                ctypes.string_at(8, 1)  # address 0 would read as a NULL "no data"
        fileh = Bad(4096).fileh_open()
        m = memoryview(fileh.mmap(0, 1))
        print("mapped", flush=True)
        m[0]
        print("continued")
    """)
    assert r.returncode in (-signal.SIGSEGV, -signal.SIGABRT), r.stderr
    assert r.stdout.splitlines() == ["mapped"]
