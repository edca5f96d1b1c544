"""Several threads using one connection's arrays at once.

Page faults happen in whichever thread touches the memory, so the threads of
one program (NumPy's, dask's, the user's) read and write one connection's
arrays at once.  Each scenario runs in a child process under a timeout (a
deadlock fails the test with the child's stacks) over a storage whose loads
take as long as a server round trip: a load releases the GIL, as a network
read does, which is when unserialized uses of one connection go wrong (a
ghost read half-loaded: AttributeError, or a BTree bucket read empty: a
block of zeros).  The RAM holds a few blocks, so every round loads again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import transaction
import ZODB
from ZODB.Connection import Connection
from ZODB.FileStorage import FileStorage

from tests.common import run_in_child
from tests.storage.conftest import BLKSIZE
from zbigarray.bigarray.array_zodb import ZBigArray
from zbigarray.bigfile import ram_default

pytestmark = pytest.mark.subprocess

PER = BLKSIZE // 8              # float64 per block
NBLK = 32
N = NBLK * PER
RAM_BLOCKS = 4
NTHREAD = 8
ROUNDS = 20
LATENCY = 0.0005                # seconds per load: a round trip on a LAN
TIMEOUT = 60                    # per child; each takes a few seconds


class _SlowLoads:
    """A storage whose loads take `LATENCY` (wraps a FileStorage).

    ZODB's MVCC reads call ``loadBefore``; sleeping there releases the GIL,
    so other threads run in the middle of a load, as with ZEO or RelStorage.
    """

    def __init__(self, base: FileStorage) -> None:
        self._base = base

    def __getattr__(self, name: str) -> Any:
        return getattr(self._base, name)

    def loadBefore(self, oid: bytes, tid: bytes) -> Any:
        time.sleep(LATENCY)
        return self._base.loadBefore(oid, tid)


def _open(path: str) -> ZODB.DB:
    return ZODB.DB(_SlowLoads(FileStorage(path)))


def _setup(path: str) -> tuple[ZODB.DB, Connection, ZBigArray, np.ndarray]:
    """An array of `NBLK` blocks holding 0, 1, 2, ... (exact float sums),
    committed; then the RAM shrunk to `RAM_BLOCKS` blocks."""
    db = _open(path)
    conn = db.open()
    conn.root()["A"] = a = ZBigArray(N, np.float64, blksize=BLKSIZE)
    want = np.arange(N, dtype=np.float64)
    a[:] = want
    transaction.commit()
    ram_default().capacity = RAM_BLOCKS * BLKSIZE
    return db, conn, a, want


def _parts() -> list[tuple[int, int]]:
    """One range per thread, not aligned to blocks: neighbours share one."""
    return [(k * N // NTHREAD + 3, (k + 1) * N // NTHREAD + 3 if k < NTHREAD - 1 else N)
            for k in range(NTHREAD)]


def _in_threads(work: Callable[[int], Any]) -> list[Any]:
    """``work(k)`` in `NTHREAD` threads started together; their results."""
    start = threading.Barrier(NTHREAD)
    results: list[Any] = [None] * NTHREAD
    errors: list[BaseException] = []

    def run(k: int) -> None:
        try:
            start.wait(TIMEOUT)
            results[k] = work(k)
        except BaseException as e:      # reported by the calling thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(NTHREAD)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def sums_on_ghost(path: str, how: str) -> None:
    """Rounds of `NTHREAD` threads summing their part of the array, which
    the connection made a ghost (with its file) just before."""
    db, conn, a, want = _setup(path)
    zfile = a.zfile
    parts = _parts()
    expected = [float(want[lo:hi].sum()) for lo, hi in parts]
    for r in range(ROUNDS):
        views = [a[lo:hi] for lo, hi in parts] if how == "views" else None
        conn.cacheMinimize()
        assert a._p_status == "ghost" and zfile._p_status == "ghost"

        def work(k: int) -> float:
            lo, hi = parts[k]
            if how == "index":
                return float(a[lo:hi].sum())
            if how == "asarray":
                return float(np.asarray(a)[lo:hi].sum())
            assert views is not None        # how == "views": made by the main thread
            return float(views[k].sum())

        got = _in_threads(work)
        assert got == expected, (r, got, expected)
    db.close()


@pytest.mark.parametrize("how", ["index", "asarray", "views"])
def test_threads_read_exact_sums_from_a_ghost(tmp_path: Path, how: str) -> None:
    run_in_child(sums_on_ghost, str(tmp_path / "data.fs"), how, timeout=TIMEOUT)


def dask_sums(path: str) -> None:
    """``dask.array.from_array(A).sum()`` on the threaded scheduler, the
    array ghosted before each compute."""
    import dask.array as da

    db, conn, a, want = _setup(path)
    for r in range(ROUNDS):
        conn.cacheMinimize()
        got = da.from_array(a, chunks=3 * PER // 2).sum().compute(
            scheduler="threads", num_workers=NTHREAD)
        assert float(got) == float(want.sum()), (r, float(got))
    db.close()


def test_dask_threaded_sums_are_exact(tmp_path: Path) -> None:
    pytest.importorskip("dask.array")
    run_in_child(dask_sums, str(tmp_path / "data.fs"), timeout=TIMEOUT)


def writes_in_one_commit(path: str) -> None:
    """Threads write interleaved elements (each block by every thread) of
    one connection's array: through ``A[...] = x`` on an array no thread has
    used yet, then through views made by the main thread; one commit each
    time, checked through another connection."""
    db = _open(path)
    db.open().root()["A"] = ZBigArray(N, np.float64, blksize=BLKSIZE)
    transaction.commit()
    a = db.open().root()["A"]       # another connection: nothing opened there yet
    assert a._p_status == "ghost"

    def by_index(k: int) -> None:
        a[k::NTHREAD] = k + 1

    _in_threads(by_index)
    transaction.commit()
    expected = np.tile(np.arange(1, NTHREAD + 1, dtype=np.float64), N // NTHREAD)
    check = db.open(transaction.TransactionManager())
    np.testing.assert_array_equal(np.asarray(check.root()["A"]), expected)

    views = [a[k::NTHREAD] for k in range(NTHREAD)]

    def through_view(k: int) -> None:
        views[k] += 10 * (k + 1)

    _in_threads(through_view)
    transaction.commit()
    check.transaction_manager.begin()
    np.testing.assert_array_equal(np.asarray(check.root()["A"]), 11 * expected)
    db.close()


def test_threads_writes_land_in_the_connections_commit(tmp_path: Path) -> None:
    run_in_child(writes_in_one_commit, str(tmp_path / "data.fs"), timeout=TIMEOUT)
