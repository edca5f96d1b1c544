"""System calls on pages of a mapping that were never touched.

The kernel takes page faults inside ``write(fd, view)``, ``read(fd, view)``,
``send``, ``recv`` -- and inside what calls them: ``numpy.save``,
``ndarray.tofile``, h5py.  With userfaultfd (`userfaultfd_status`) those
faults are served like the CPU's: the call moves exactly the bytes of the
file, and pages the kernel wrote into are dirty and written out.  NumPy (or
the bytes the backend holds) is the oracle: bytes are compared exactly.

Backends: a Python `BigFile` subclass (`MemFile`, pattern-filled),
`BigFile_File` with and without the zero-copy path.  ZBigArray on ZODB is in
tests/storage/test_syscalls_zodb.py.

Scenarios whose failure mode is a crash or a hang (a loadblk that fails
inside a system call, a system call made holding the GIL, threads, the
fallback without userfaultfd, an unprivileged process) run in a child
interpreter under a timeout.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.common import PAGESIZE, MemFile, fill_pattern, pattern, run_python
from zbigarray.bigfile import (
    RAM,
    USERFAULTFD_ENV,
    WRITEOUT_MARKSTORED,
    WRITEOUT_STORE,
    BigFile,
    BigFileH,
    PageFaultError,
    UserfaultfdWarning,
    fault_proxy_thread,
    prefault,
    userfaultfd_status,
)
from zbigarray.bigfile.file_file import BigFile_File

BLK = 4 * PAGESIZE
NBLK = 8
SIZE = NBLK * BLK
BOTH = WRITEOUT_STORE | WRITEOUT_MARKSTORED
TIMEOUT = 30
"""Seconds a child scenario, or a thread of a test, may take at most."""

# ------------------------------------------------------------------ helpers

def uffd_on() -> bool:
    """Whether this process serves faults inside system calls (decided at its
    first mmap, which this makes if none was made yet)."""
    if userfaultfd_status().reason == "not started yet":
        with warnings.catch_warnings():
            # Told by the test of the refusal, in a child; here only skip.
            warnings.simplefilter("ignore", UserfaultfdWarning)
            MemFile(PAGESIZE).fileh_open().mmap(0, 1)
    return userfaultfd_status().enabled


needs_uffd = pytest.mark.skipif(
    "not uffd_on()",    # evaluated in this module's namespace, when the test runs
    reason="the kernel refuses userfaultfd to this process (see userfaultfd_status)")


def wait_for_page_fault_error(seconds: float = 5.0) -> None:
    """Run the interpreter for up to `seconds`: a PageFaultError pending for
    this thread is raised here (at an interpreter check)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.005)


def failing_call(call: Callable[[], int], nbytes: int) -> tuple[int | None, PageFaultError]:
    """Run `call`, a system call moving `nbytes`, which must fail: raise
    OSError(EFAULT) or return a short count, and a PageFaultError follows --
    inside the call, or at an interpreter check soon after.

    Returns the count (None if the call raised) and the PageFaultError.
    """
    n: int | None = None
    try:
        try:
            n = call()
        except OSError as e:
            assert e.errno == errno.EFAULT, f"expected EFAULT, got {e!r}"
        else:
            assert n < nbytes, f"the call moved all {nbytes} bytes: nothing failed"
        wait_for_page_fault_error()
    except PageFaultError as e:
        return n, e
    raise AssertionError(f"no PageFaultError after the failed call (returned {n})")


def fresh_view(file: BigFile, ram: RAM | None = None, pgoffset: int = 0,
               nblk: int = NBLK) -> tuple[BigFileH, np.ndarray]:
    """A new handle (nothing loaded) and a uint8 view of a new mapping of it."""
    fileh = file.fileh_open() if ram is None else file.fileh_open(ram=ram)
    view = np.frombuffer(fileh.mmap(pgoffset, nblk), np.uint8)
    assert fileh.stats()["npages"] == 0
    return fileh, view


def pattern_bytes(nblk: int, blksize: int = BLK) -> bytes:
    """What a pattern-filled MemFile of `nblk` blocks holds."""
    return b"".join(pattern(b, blksize).tobytes() for b in range(nblk))


def socketpair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    a.settimeout(TIMEOUT)
    b.settimeout(TIMEOUT)
    return a, b


def join(t: threading.Thread) -> None:
    t.join(TIMEOUT)
    assert not t.is_alive(), f"{t.name} still running after {TIMEOUT} s"


def run_scenario(func: Callable[..., Any], *args: Any, env: Mapping[str, str] | None = None,
                 timeout: float = 60) -> list[str]:
    """Run module-level `func(*args)` in a child interpreter (stacks dumped
    on a hang); return its stdout lines.  It must exit 0."""
    code = (f"import faulthandler\n"
            f"faulthandler.dump_traceback_later({max(timeout - 5, 1)}, exit=True)\n"
            f"from {func.__module__} import {func.__name__}\n"
            f"{func.__name__}(*{args!r})\n")
    r = run_python(code, env=env, timeout=timeout)
    assert r.returncode == 0, \
        f"{func.__name__}{args!r} failed (returncode {r.returncode}):\n{r.stdout}\n{r.stderr}"
    return r.stdout.splitlines()


# ----------------------------------------------------------------- backends

@dataclass
class Backend:
    file: BigFile
    content: bytes                  # what the file holds before the test
    stored: Callable[[], bytes]     # what it holds now (after writeout)
    loads_through_loadblk: bool     # clean pages come from loadblk (not zero-copy)


@pytest.fixture(params=["pyfile", "file-zero-copy", "file-copy"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "pyfile":
        mf = MemFile(BLK, fill=fill_pattern)
        yield Backend(mf, pattern_bytes(NBLK),
                      lambda: b"".join(mf.content(b) for b in range(NBLK)), True)
        return
    path = tmp_path / "file"
    content = np.random.default_rng(7).integers(0, 256, SIZE, np.uint8).tobytes()
    path.write_bytes(content)
    with BigFile_File(str(path), BLK, zero_copy=request.param == "file-zero-copy") as ff:
        yield Backend(ff, content, path.read_bytes, request.param == "file-copy")


SLICES = {
    "whole": slice(None),
    # starts in the middle of block 0, ends in the middle of block 7's page
    "unaligned": slice(BLK // 2 + 3, -(PAGESIZE + 5)),
}


# ------------------------------------------ writing from a view: the file moves

def via_np_save(view: np.ndarray, tmp: Path) -> bytes:
    path = tmp / "a.npy"
    np.save(path, view)
    back = np.load(path)
    assert back.dtype == view.dtype and back.shape == view.shape
    return back.tobytes()


def via_tofile(view: np.ndarray, tmp: Path) -> bytes:
    path = tmp / "a.bin"
    view.tofile(path)
    return path.read_bytes()


def via_file_write(view: np.ndarray, tmp: Path) -> bytes:
    path = tmp / "a.bin"
    with open(path, "wb") as f:
        assert f.write(view) == view.nbytes
    return path.read_bytes()


def via_os_write(view: np.ndarray, tmp: Path) -> bytes:
    path = tmp / "a.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        assert os.write(fd, view) == view.nbytes
    finally:
        os.close(fd)
    return path.read_bytes()


def via_sendall(view: np.ndarray, tmp: Path) -> bytes:
    tx, rx = socketpair()
    received = bytearray()

    def reader() -> None:
        while chunk := rx.recv(1 << 16):
            received.extend(chunk)

    t = threading.Thread(target=reader, name="reader")
    try:
        t.start()
        tx.sendall(view)
        tx.shutdown(socket.SHUT_WR)
        join(t)
    finally:
        tx.close()
        rx.close()
    return bytes(received)


def via_h5py(view: np.ndarray, tmp: Path) -> bytes:
    h5py = pytest.importorskip("h5py", reason="h5py is not installed (the test extra has it)")
    path = tmp / "a.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("a", data=view)
    with h5py.File(path, "r") as f:
        back = f["a"][...]
    assert back.dtype == view.dtype and back.shape == view.shape
    return back.tobytes()


WRITES_FROM: dict[str, Callable[[np.ndarray, Path], bytes]] = {
    "np.save": via_np_save,
    "tofile": via_tofile,
    "file.write": via_file_write,
    "os.write": via_os_write,
    "sendall": via_sendall,
    "h5py": via_h5py,
}


@needs_uffd
@pytest.mark.parametrize("where", sorted(SLICES))
@pytest.mark.parametrize("how", sorted(WRITES_FROM))
def test_writing_from_untouched_view_moves_exactly_its_bytes(
        backend: Backend, how: str, where: str, tmp_path: Path) -> None:
    fileh, a = fresh_view(backend.file)
    view = a[SLICES[where]]
    got = WRITES_FROM[how](view, tmp_path)
    assert got == backend.content[SLICES[where]]
    st = fileh.stats()
    assert st["ndirty"] == 0 and not fileh.isdirty()
    assert st["npages"] == NBLK
    if backend.loads_through_loadblk:
        assert st["nloadblk"] == NBLK       # each block once
    else:
        assert st["nloadblk"] == 0          # mapped from the page cache
    if isinstance(backend.file, MemFile):
        assert set(backend.file.loads.values()) == {1}


# -------------------------------------------- reading into a view: it gets dirty

def into_readinto(view: np.ndarray, src: bytes, tmp: Path) -> None:
    path = tmp / "src.bin"
    path.write_bytes(src)
    with open(path, "rb") as f:
        assert f.readinto(view) == len(src)


def into_readv(view: np.ndarray, src: bytes, tmp: Path) -> None:
    path = tmp / "src.bin"
    path.write_bytes(src)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert os.readv(fd, [view]) == len(src)
    finally:
        os.close(fd)


def into_recv_into(view: np.ndarray, src: bytes, tmp: Path) -> None:
    tx, rx = socketpair()

    def writer() -> None:
        tx.sendall(src)
        tx.shutdown(socket.SHUT_WR)

    t = threading.Thread(target=writer, name="writer")
    mv = memoryview(view).cast("B")     # n-d views too
    got = 0
    try:
        t.start()
        while got < len(src):
            n = rx.recv_into(mv[got:])
            assert n > 0, f"EOF after {got} of {len(src)} bytes"
            got += n
        join(t)
    finally:
        mv.release()
        tx.close()
        rx.close()


READS_INTO: dict[str, Callable[[np.ndarray, bytes, Path], None]] = {
    "readinto": into_readinto,
    "os.readv": into_readv,
    "recv_into": into_recv_into,
}


@needs_uffd
@pytest.mark.parametrize("where", sorted(SLICES))
@pytest.mark.parametrize("how", sorted(READS_INTO))
def test_reading_into_untouched_view_dirties_and_writes_out(
        backend: Backend, how: str, where: str, tmp_path: Path) -> None:
    fileh, a = fresh_view(backend.file)
    view = a[SLICES[where]]
    lo, hi, _ = SLICES[where].indices(SIZE)
    src = np.random.default_rng(11).integers(0, 256, hi - lo, np.uint8).tobytes()
    READS_INTO[how](view, src, tmp_path)
    want = backend.content[:lo] + src + backend.content[hi:]
    assert a.tobytes() == want
    assert fileh.isdirty()
    st = fileh.stats()
    assert st["ndirty"] == NBLK and st["npages"] == NBLK
    assert backend.stored() == backend.content      # nothing stored yet
    fileh.dirty_writeout(BOTH)
    assert not fileh.isdirty() and fileh.stats()["nstoreblk"] == NBLK
    assert backend.stored() == want
    if isinstance(backend.file, MemFile):
        assert sorted(blk for blk, _ in backend.file.stored) == list(range(NBLK))
    # and a new handle reads what was written out
    _, b = fresh_view(backend.file)
    assert b.tobytes() == want


# --------------------------------------------------- who serves those faults

class Recording(MemFile):
    """MemFile that records, per load: (blk, native thread id, fault_proxy_thread())."""

    def __init__(self, blksize: int) -> None:
        super().__init__(blksize, fill=fill_pattern)
        self.calls: list[tuple[int, int, int | None]] = []

    def loadblk(self, blk: int, buf: memoryview) -> None:
        self.calls.append((blk, threading.get_native_id(), fault_proxy_thread()))
        super().loadblk(blk, buf)


@needs_uffd
def test_loadblk_inside_a_system_call_is_told_the_calling_thread(tmp_path: Path) -> None:
    """A fault inside a system call is served by a proxy thread of the core;
    fault_proxy_thread() names the thread that made the call.  A fault of
    the CPU is served in the faulting thread, and names none."""
    f = Recording(BLK)
    me = threading.get_native_id()
    assert fault_proxy_thread() is None
    _, a = fresh_view(f)
    assert via_os_write(a, tmp_path) == pattern_bytes(NBLK)
    assert sorted(blk for blk, _, _ in f.calls) == list(range(NBLK))
    assert all(proxy == me for _, _, proxy in f.calls), f.calls
    assert all(tid != me for _, tid, _ in f.calls), f.calls
    f.calls.clear()
    _, b = fresh_view(f)
    assert b.tobytes() == pattern_bytes(NBLK)
    assert f.calls == [(blk, me, None) for blk in range(NBLK)]
    assert fault_proxy_thread() is None


# --------------------------------------------------------- RAM smaller than the view

@needs_uffd
@pytest.mark.parametrize("kind", ["pyfile", "file-copy"])
def test_write_of_view_bigger_than_ram(kind: str, tmp_path: Path) -> None:
    """A 64-block os.write through a RAM of 4 blocks: pages are loaded and
    reclaimed during the call; every byte is right."""
    nblk = 64
    if kind == "pyfile":
        file: BigFile = MemFile(BLK, fill=fill_pattern)
        want = pattern_bytes(nblk)
    else:
        want = np.random.default_rng(3).integers(0, 256, nblk * BLK, np.uint8).tobytes()
        (tmp_path / "file").write_bytes(want)
        file = BigFile_File(str(tmp_path / "file"), BLK, zero_copy=False)
    ram = RAM(4 * BLK)
    fileh, a = fresh_view(file, ram=ram, nblk=nblk)
    assert via_os_write(a, tmp_path) == want
    st = ram.stats()
    assert st["used"] <= 4 * BLK
    assert st["nreclaimed"] + st["nrecycled"] >= nblk - 4
    assert fileh.stats()["nloadblk"] >= nblk
    if isinstance(file, BigFile_File):
        file.close()


# ------------------------------------------- pages loaded read-only before the call

@needs_uffd
def test_readinto_pages_read_before_efault_for_now(tmp_path: Path) -> None:
    """LIMITATION, not a contract: pages the CPU read are mapped read-only
    (the dirty tracking), and the kernel cannot write-enable them, so
    readinto into them fails with EFAULT today.  If that is lifted, the call
    must then simply work; either way nothing hangs, crashes, or puts wrong
    bytes."""
    f = MemFile(BLK, fill=fill_pattern)
    fileh, a = fresh_view(f)
    assert a.tobytes() == pattern_bytes(NBLK)       # read by the CPU: read-only
    src = bytes(range(256)) * (SIZE // 256)
    try:
        try:
            into_readinto(a, src, tmp_path)
        except OSError as e:
            assert e.errno == errno.EFAULT, e       # the limitation today
        else:
            assert a.tobytes() == src and fileh.isdirty()  # lifted
        wait_for_page_fault_error(0.2)
    except PageFaultError:
        pass


@needs_uffd
def test_prefault_write_makes_readinto_into_pages_read_before_work(tmp_path: Path) -> None:
    f = MemFile(BLK, fill=fill_pattern)
    fileh, a = fresh_view(f)
    assert a.tobytes() == pattern_bytes(NBLK)
    prefault(a, write=True)
    assert fileh.stats()["ndirty"] == NBLK
    assert a.tobytes() == pattern_bytes(NBLK)       # values unchanged
    src = bytes(range(256)) * (SIZE // 256)
    into_readinto(a, src, tmp_path)
    assert a.tobytes() == src
    fileh.dirty_writeout(BOTH)
    assert b"".join(f.content(b) for b in range(NBLK)) == src


# =========================================================== child scenarios

class Flaky(MemFile):
    """Pattern-filled; loading a block of `broken` raises OSError(EIO)."""

    def __init__(self, blksize: int) -> None:
        super().__init__(blksize, fill=fill_pattern)
        self.broken: set[int] = set()

    def loadblk(self, blk: int, buf: memoryview) -> None:
        if blk in self.broken:
            raise OSError(errno.EIO, f"disk gone at block {blk}")
        super().loadblk(blk, buf)


def scenario_loadblk_fails_in_syscall(op: str) -> None:
    """Block 3 fails to load inside os.write from the view / os.preadv into
    it: the call fails (EFAULT or short), a PageFaultError naming the file
    and block follows, the process goes on; with a working loadblk the same
    call then moves the right bytes."""
    warnings.simplefilter("error")
    assert uffd_on(), userfaultfd_status()
    f = Flaky(BLK)
    f.broken = {3}
    fileh, a = fresh_view(f)
    want = pattern_bytes(NBLK)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "data")
        src = np.random.default_rng(5).integers(0, 256, SIZE, np.uint8).tobytes()
        with open(path, "wb") as out:
            out.write(src if op == "os.preadv" else b"")
        fd = os.open(path, os.O_RDWR)
        if op == "os.write":
            call = lambda: os.write(fd, a)                      # noqa: E731
        else:
            call = lambda: os.preadv(fd, [a], 0)                # noqa: E731
        n, e = failing_call(call, SIZE)
        msg = str(e)
        assert "block 3" in msg and repr(f) in msg, msg
        assert isinstance(e.__cause__, OSError) and e.__cause__.errno == errno.EIO, \
            repr(e.__cause__)
        assert 3 not in f.loads, f.loads
        assert n is None or n <= 3 * BLK, n         # nothing past the failed block
        if op == "os.write":
            got = os.pread(fd, SIZE, 0)
            assert got == want[:len(got)] and (n is None or len(got) == n), (n, len(got))
        else:
            assert fileh.fault_failed
            assert a[:(n or 0)].tobytes() == src[:(n or 0)]
            fileh.dirty_discard()                   # drop what the failed call wrote
        print("failed", n, flush=True)

        f.broken = set()
        if op == "os.write":
            os.ftruncate(fd, 0)
            assert os.pwrite(fd, a, 0) == SIZE
            assert os.pread(fd, SIZE + 1, 0) == want
        else:
            assert os.preadv(fd, [a], 0) == SIZE
            assert a.tobytes() == src
            fileh.dirty_writeout(BOTH)
            assert b"".join(f.content(b) for b in range(NBLK)) == src
        os.close(fd)
        assert f.loads[3] == 1
    print("retried ok", flush=True)


@pytest.mark.subprocess
@needs_uffd
@pytest.mark.parametrize("op", ["os.write", "os.preadv"])
def test_loadblk_failing_inside_a_system_call(op: str) -> None:
    lines = run_scenario(scenario_loadblk_fails_in_syscall, op)
    assert lines[-1] == "retried ok", lines


def scenario_syscall_holding_the_gil() -> None:
    """write(2) called with the GIL held (ctypes.PyDLL) on untouched pages of
    a Python file: its loadblk cannot run.  After about a second the call
    fails with EFAULT, a PageFaultError mentioning the GIL follows, and the
    same write made the normal way (GIL released) works."""
    warnings.simplefilter("error")
    f = MemFile(BLK, fill=fill_pattern)
    fileh, a = fresh_view(f, nblk=2)
    write = ctypes.PyDLL(None, use_errno=True).write
    write.restype = ctypes.c_ssize_t
    write.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t]
    with tempfile.TemporaryFile() as tmp:
        fd = tmp.fileno()
        t0 = time.monotonic()

        def call() -> int:
            n = write(fd, a.ctypes.data, a.nbytes)
            if n < 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err))
            return n

        n, e = failing_call(call, a.nbytes)
        elapsed = time.monotonic() - t0
        assert "GIL" in str(e), str(e)
        assert "block 0" in str(e) and repr(f) in str(e), str(e)
        assert elapsed < 10, elapsed
        print("failed", n, round(elapsed, 1), flush=True)
        os.ftruncate(fd, 0)
        assert os.pwrite(fd, a, 0) == a.nbytes
        assert os.pread(fd, a.nbytes + 1, 0) == pattern_bytes(2)
    print("then ok", flush=True)


@pytest.mark.subprocess
@needs_uffd
def test_system_call_holding_the_gil_fails_instead_of_hanging() -> None:
    lines = run_scenario(scenario_syscall_holding_the_gil, timeout=30)
    assert lines[-1] == "then ok", lines
    assert lines[0].startswith("failed ")
    assert float(lines[0].split()[-1]) >= 0.5, lines    # the ~1 s wait for the GIL


def scenario_threads(seed: int, fault_around: int | None) -> None:
    """4 threads os.write overlapping random ranges of one mapping (each to
    its own file) while a fifth sums it; every byte and sum is right and
    each block is loaded once.  Several rounds, each on a new handle.
    `fault_around` 0: every page faults on its own (more faults, more races)."""
    warnings.simplefilter("error")
    nblk, blk = 256, PAGESIZE
    want = pattern_bytes(nblk, blk)
    want_sum = int(np.frombuffer(want, np.uint64).sum())
    rng = np.random.default_rng(seed)
    for rnd in range(6):
        f = MemFile(blk, fill=fill_pattern)
        if fault_around is not None:
            f.fault_around = fault_around
        fileh, a = fresh_view(f, nblk=nblk)
        words = a.view(np.uint64)
        ranges = [sorted(rng.integers(0, nblk * blk, 2)) for _ in range(4 * 12)]
        errors: list[str] = []
        done = threading.Event()
        start = threading.Barrier(5)
        sums: list[int] = []

        def writer(i: int) -> None:
            try:
                with tempfile.TemporaryFile() as out:
                    start.wait(TIMEOUT)
                    for lo, hi in ranges[i::4]:
                        hi = max(hi, lo + 1)
                        os.ftruncate(out.fileno(), 0)
                        n = os.pwrite(out.fileno(), a[lo:hi], 0)
                        got = os.pread(out.fileno(), n + 1, 0)
                        if n != hi - lo or got != want[lo:hi]:
                            d = next((k for k in range(min(n, len(got)))
                                      if got[k] != want[lo + k]), None)
                            errors.append(f"writer {i}: [{lo}, {hi}) wrote {n}, first "
                                          f"wrong byte at {None if d is None else lo + d}")
            except BaseException as e:
                errors.append(f"writer {i}: {e!r}")

        def summer() -> None:
            try:
                start.wait(TIMEOUT)
                while True:
                    last = done.is_set()
                    sums.append(int(words.sum()))
                    if last:
                        return
            except BaseException as e:
                errors.append(f"summer: {e!r}")

        # Daemons: a thread stuck in the kernel must not keep the child alive.
        ts = [threading.Thread(target=writer, args=(i,), daemon=True) for i in range(4)]
        ts.append(threading.Thread(target=summer, daemon=True))
        for t in ts:
            t.start()
        deadline = time.monotonic() + 10
        for t in ts[:4]:
            t.join(max(0.0, deadline - time.monotonic()))
        done.set()
        ts[4].join(max(1.0, deadline - time.monotonic()))
        stuck = [t.name for t in ts if t.is_alive()]
        assert not stuck, f"round {rnd}: {stuck} stuck for 10 s (in the kernel?)"
        assert not errors, f"round {rnd}: {errors}"
        assert sums and all(s == want_sum for s in sums), (rnd, len(sums), want_sum)
        assert a.tobytes() == want
        assert set(f.loads) == set(range(nblk)) and set(f.loads.values()) == {1}, \
            (rnd, {b: n for b, n in f.loads.items() if n != 1})
        print("round", rnd, "ok", len(sums), flush=True)


@pytest.mark.subprocess
@needs_uffd
@pytest.mark.parametrize("fault_around", [None, 0], ids=["fault-around", "no-fault-around"])
def test_threads_writing_overlapping_ranges_while_another_sums(fault_around: int | None) -> None:
    lines = run_scenario(scenario_threads, 1234, fault_around)
    assert [line.split()[:3] for line in lines] == [["round", str(r), "ok"] for r in range(6)]


def scenario_fallback(with_prefault: bool) -> None:
    """$ZBIGARRAY_USERFAULTFD=0: off, no warning; os.write on untouched
    pages fails with EFAULT; pages loaded first work."""
    warnings.simplefilter("error")              # a UserfaultfdWarning would raise
    f = MemFile(BLK, fill=fill_pattern)
    fileh, a = fresh_view(f)
    status = userfaultfd_status()
    assert not status.enabled and USERFAULTFD_ENV in (status.reason or ""), status
    with tempfile.TemporaryFile() as tmp:
        fd = tmp.fileno()
        try:
            n = os.write(fd, a)
            raise AssertionError(f"os.write on untouched pages wrote {n} bytes")
        except OSError as e:
            assert e.errno == errno.EFAULT, e
        print("efault", flush=True)
        if with_prefault:
            prefault(a)
            assert fileh.stats()["npages"] == NBLK
        else:
            a.sum()                             # loaded by the CPU
        assert os.pwrite(fd, a, 0) == SIZE
        assert os.pread(fd, SIZE + 1, 0) == pattern_bytes(NBLK)
    print("then ok", flush=True)


@pytest.mark.subprocess
def test_fallback_without_userfaultfd_gives_efault() -> None:
    lines = run_scenario(scenario_fallback, False, env={USERFAULTFD_ENV: "0"}, timeout=30)
    assert lines == ["efault", "then ok"]


@pytest.mark.subprocess
def test_fallback_prefault_makes_the_call_work() -> None:
    lines = run_scenario(scenario_fallback, True, env={USERFAULTFD_ENV: "0"}, timeout=30)
    assert lines == ["efault", "then ok"]


UNPRIVILEGED = 65534


def scenario_unprivileged() -> None:
    """Drop root before the first mmap (everything is imported already: the
    interpreter's own files may be out of reach of the unprivileged user),
    then map twice with every warning recorded."""
    os.setgroups([])
    os.setgid(UNPRIVILEGED)
    os.setuid(UNPRIVILEGED)
    assert os.geteuid() == UNPRIVILEGED
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        f = MemFile(BLK, fill=fill_pattern)
        fileh, a = fresh_view(f)
        fresh_view(f)                           # a second mmap: no second warning
    status = userfaultfd_status()
    if status.enabled:
        print("allowed", flush=True)
        return
    assert status.reason and "refuses" in status.reason, status
    ws = [w for w in caught if issubclass(w.category, UserfaultfdWarning)]
    assert len(ws) == 1 and len(caught) == 1, [str(w.message) for w in caught]
    msg = str(ws[0].message)
    assert status.reason in msg and "prefault" in msg and USERFAULTFD_ENV in msg, msg
    r, w = os.pipe()
    try:
        os.write(w, a[:PAGESIZE])
        raise AssertionError("os.write on an untouched page worked without userfaultfd")
    except OSError as e:
        assert e.errno == errno.EFAULT, e
    a[:PAGESIZE].sum()
    assert os.write(w, a[:PAGESIZE]) == PAGESIZE
    assert os.read(r, PAGESIZE) == pattern_bytes(1)[:PAGESIZE]
    print("refused", flush=True)


@pytest.mark.subprocess
def test_kernel_refusal_warns_once_and_says_why() -> None:
    """The real refusal: a process of an unprivileged user, where
    vm.unprivileged_userfaultfd is 0 and /dev/userfaultfd is not open to it.

    The child starts as root and drops to uid 65534 itself before its first
    mmap: an exec as that user (preexec_fn) needs the interpreter and its
    site-packages readable by it, which a Python under /root is not."""
    if os.geteuid() != 0:
        pytest.skip("needs root, to run a child as unprivileged user 65534")
    try:
        with open("/proc/sys/vm/unprivileged_userfaultfd") as sysctl:
            unprivileged = sysctl.read().strip()
    except OSError:
        pytest.skip("no /proc/sys/vm/unprivileged_userfaultfd: a kernel before 5.2 "
                    "gives every user a userfaultfd, nothing is refused")
    if unprivileged != "0":
        pytest.skip(f"vm.unprivileged_userfaultfd={unprivileged}: unprivileged users "
                    "get a userfaultfd, nothing is refused")
    lines = run_scenario(scenario_unprivileged, timeout=30)
    if lines == ["allowed"]:
        pytest.skip(f"user {UNPRIVILEGED} may open /dev/userfaultfd here: nothing is refused")
    assert lines == ["refused"]


class SlowFile(MemFile):
    """A pattern-filled MemFile whose loadblk takes `delay` seconds (GIL
    released meanwhile, as a network read would)."""

    def __init__(self, blksize: int, delay: float) -> None:
        super().__init__(blksize, fill=fill_pattern)
        self.delay = delay

    def loadblk(self, blk: int, buf: memoryview) -> None:
        time.sleep(self.delay)
        super().loadblk(blk, buf)


@needs_uffd
def test_a_slow_load_inside_a_system_call_is_waited_for(tmp_path: Path) -> None:
    """The one-second limit is for getting the GIL (held by a caller that
    waits for the page), not for the load: a backend slower than that (a
    database far away, a reconnecting ZEO client) still serves the call."""
    f = SlowFile(BLK, 1.3)
    f.fault_around = 0
    fileh, view = fresh_view(f, nblk=2)
    with fileh, open(tmp_path / "out", "wb") as out:
        assert out.write(view) == 2 * BLK
    assert (tmp_path / "out").read_bytes() == pattern_bytes(2)


def test_prefault_refuses_what_it_cannot_touch() -> None:
    with pytest.raises(TypeError):
        prefault(object())
    with pytest.raises(TypeError):
        prefault([1, 2, 3])
    ro = np.zeros(10)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        prefault(ro, write=True)
    prefault(ro)                            # reading is fine
    prefault(np.zeros(0), write=True)       # nothing to touch
    strided = np.arange(100_000.0)[::-7]    # negative strides: every page in range
    prefault(strided, write=True)
    assert strided[0] == 99_999.0 and strided[-1] == 4.0   # values unchanged
