"""System calls on a ZBigArray whose pages were never touched, on FileStorage.

Writing from a view (numpy.save, tofile, file.write, os.write, sendall,
h5py) moves exactly the committed bytes; reading into one (readinto,
os.readv, recv_into) dirties its pages, and a commit stores them -- the
faults were served by proxy threads of the core, whose callbacks act in the
transaction of the thread that made the system call.  Every test reads a
database reopened from its file: no page of the array is in RAM.  The
operations themselves are those of tests/bigfile/test_syscalls.py.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import transaction
import ZODB

from tests.bigfile.test_syscalls import READS_INTO, SLICES, WRITES_FROM, join, needs_uffd
from tests.bigfile.test_syscalls import uffd_on  # noqa: F401  (needs_uffd's condition names it)
from tests.storage.conftest import BLKSIZE
from zbigarray import ZBigArray, open_db
from zbigarray.bigfile import RAM

COLS = 64                                   # float64: rows of 512 bytes
NBLK = 8
ROWS = NBLK * BLKSIZE // (8 * COLS)
ROW_SLICES = {
    "whole": SLICES["whole"],
    "rows": slice(3, -5),                   # starts and ends inside blocks
}

pytestmark = needs_uffd


@pytest.fixture
def committed(db: ZODB.DB, tmp_path: Path) -> np.ndarray:
    """root["A"]: a (ROWS, COLS) float64 ZBigArray of random values,
    committed to the `db` fixture's FileStorage, which is then closed.
    Returns the values."""
    values = np.random.default_rng(17).standard_normal((ROWS, COLS))
    conn = db.open()
    conn.root()["A"] = A = ZBigArray((ROWS, COLS), np.float64, blksize=BLKSIZE)
    A[:] = values
    transaction.commit()
    conn.close()
    db.close()
    return values


@contextmanager
def reopened(tmp_path: Path) -> Iterator[tuple[ZODB.DB, ZBigArray]]:
    """The database of `committed`, opened anew (nothing cached), and its
    array in a connection of this thread."""
    db = open_db(str(tmp_path / "data.fs"))
    try:
        conn = db.open()
        yield db, conn.root()["A"]
    finally:
        transaction.abort()
        db.close()


def untouched(A: ZBigArray, where: slice) -> np.ndarray:
    view = A[where]
    assert A._fileh.stats()["npages"] == 0
    return view


@pytest.mark.parametrize("where", sorted(ROW_SLICES))
@pytest.mark.parametrize("how", sorted(WRITES_FROM))
def test_writing_from_untouched_view_moves_exactly_its_bytes(
        committed: np.ndarray, how: str, where: str, tmp_path: Path) -> None:
    with reopened(tmp_path) as (_, A):
        view = untouched(A, ROW_SLICES[where])
        got = WRITES_FROM[how](view, tmp_path)
        assert got == committed[ROW_SLICES[where]].tobytes()
        assert not A._fileh.isdirty()
        assert A._fileh.stats()["npages"] == NBLK


def expected_after(committed: np.ndarray, where: slice, src: bytes) -> np.ndarray:
    want = committed.copy()
    want[where] = np.frombuffer(src, np.float64).reshape(want[where].shape)
    return want


@pytest.mark.parametrize("how", sorted(READS_INTO))
def test_reading_into_untouched_view_is_committed(
        committed: np.ndarray, zblk_fmt: str, how: str, tmp_path: Path) -> None:
    where = ROW_SLICES["rows"]
    src = np.random.default_rng(23).standard_normal(committed[where].size).tobytes()
    with reopened(tmp_path) as (_, A):
        view = untouched(A, where)
        READS_INTO[how](view, src, tmp_path)
        assert view.tobytes() == src
        assert A._fileh.isdirty() and A._fileh.stats()["ndirty"] == NBLK
        transaction.commit()
        assert not A._fileh.isdirty()
    want = expected_after(committed, where, src)
    with reopened(tmp_path) as (_, A):
        assert A[:].tobytes() == want.tobytes()


def test_reading_into_a_view_in_another_thread_commits_in_its_transaction(
        committed: np.ndarray, tmp_path: Path) -> None:
    """The thread making the system call has its own connection (and
    thread-local transaction); the main thread uses the array too.  The
    proxies' loadblk/dirtied act for the calling thread: its commit stores
    the data, and the main thread's transaction is not joined."""
    src = np.random.default_rng(29).standard_normal(committed.size).tobytes()
    with reopened(tmp_path) as (db, A):
        assert A[0, 0] == committed[0, 0]           # main uses the array
        main_txn = transaction.get()
        main_resources = list(main_txn._resources)
        errors: list[BaseException] = []
        reader_dms: list[object] = []

        def reader() -> None:
            try:
                conn = db.open()
                try:
                    B = conn.root()["A"]
                    reader_dms.append(B._fileh.file.dm)
                    READS_INTO["readinto"](untouched(B, slice(None)), src, tmp_path)
                    assert B._fileh.isdirty()
                    transaction.commit()
                finally:
                    transaction.abort()
                    conn.close()
            except BaseException as e:
                errors.append(e)

        t = threading.Thread(target=reader, name="reader")
        t.start()
        join(t)
        assert not errors, errors
        assert not A._fileh.isdirty()
        assert transaction.get() is main_txn
        assert main_txn._resources == main_resources, (main_resources, main_txn._resources)
        assert reader_dms and reader_dms[0] not in main_txn._resources
        transaction.abort()                          # see the reader's commit
        assert A[:].tobytes() == src
    with reopened(tmp_path) as (_, A):
        assert A[:].tobytes() == src


def test_reading_into_a_view_bigger_than_ram_spills_and_commits(
        committed: np.ndarray, tmp_path: Path) -> None:
    """readinto of 8 blocks through a RAM of 2: dirty pages are spilled by
    the proxies during the call, into the caller's transaction, and its
    commit stores all of them."""
    src = np.random.default_rng(31).standard_normal(committed.size).tobytes()
    with reopened(tmp_path) as (_, A):
        fileh = A.zfile.fileh_open(ram=RAM(2 * BLKSIZE))
        try:
            view = np.ndarray(committed.shape, np.float64, buffer=fileh.mmap(0, NBLK))
            assert fileh.stats()["npages"] == 0
            READS_INTO["readinto"](view, src, tmp_path)
            assert fileh.file.stored, "nothing spilled: the test would prove nothing"
            transaction.commit()
            del view
        finally:
            transaction.abort()
            fileh.close()
    with reopened(tmp_path) as (_, A):
        assert A[:].tobytes() == src
