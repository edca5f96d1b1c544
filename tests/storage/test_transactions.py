"""ZBigArray under transactions: commit, abort, failed commit, savepoints,
conflicts, transaction managers, close and re-open."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import transaction
from ZODB.POSException import ConflictError, ConnectionStateError

from tests.storage.conftest import BLKSIZE
from zbigarray.bigarray.array_zodb import ZBigArray

N = 4 * BLKSIZE // 8    # float64 elements: four blocks


def _new(db, name: str = "a") -> ZBigArray:
    root = db.open().root()
    root[name] = a = ZBigArray(N, np.float64, blksize=BLKSIZE)
    transaction.commit()
    return a


def _committed(db, name: str = "a") -> np.ndarray:
    """The array as a fresh connection sees it."""
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    try:
        return np.array(conn.root()[name])
    finally:
        tm.abort()
        conn.close()


def test_new_array_usable_before_first_commit(db, zblk_fmt: str) -> None:
    root = db.open().root()
    root["A"] = A = ZBigArray((10, 1000), np.int32, blksize=BLKSIZE)
    A[:] = 1
    A.append(np.full((2, 1000), 5))
    transaction.commit()
    got = _committed(db, "A")
    assert got.shape == (12, 1000)
    assert (got[:10] == 1).all() and (got[10:] == 5).all()
    A[3, 3] = 9                       # and it goes on working after the commit
    transaction.commit()
    assert _committed(db, "A")[3, 3] == 9


def test_commit_stores_exactly_the_dirty_blocks(db, zblk_fmt: str) -> None:
    a = _new(db)
    a[:] = 1.0
    transaction.commit()
    fileh = a._fileh
    before = fileh.stats()["nstoreblk"]
    a[BLKSIZE // 8 + 3] = 2.0          # block 1 only
    transaction.commit()
    assert fileh.stats()["nstoreblk"] - before == 1
    assert not fileh.isdirty()
    expect = np.ones(N)
    expect[BLKSIZE // 8 + 3] = 2.0
    np.testing.assert_array_equal(_committed(db), expect)


def test_abort_discards(db) -> None:
    a = _new(db)
    a[:] = 3.0
    transaction.commit()
    a[:10] = 4.0
    a.append([5.0])
    transaction.abort()
    assert a.shape == (N,)
    assert (np.asarray(a) == 3.0).all()
    assert not a._fileh.isdirty()


class _FailingDM:
    """A data manager whose vote fails: the whole commit must fail."""

    transaction_manager = None

    def abort(self, txn): pass
    def tpc_begin(self, txn): pass
    def commit(self, txn): pass
    def tpc_vote(self, txn): raise RuntimeError("vote failed")
    def tpc_finish(self, txn): pass
    def tpc_abort(self, txn): pass
    def sortKey(self): return "~zzz"


def test_failed_commit_discards_and_stores_nothing(db, zblk_fmt: str) -> None:
    a = _new(db)
    a[:] = 1.0
    transaction.commit()
    a[5] = 2.0
    transaction.get().join(_FailingDM())
    with pytest.raises(RuntimeError, match="vote failed"):
        transaction.commit()
    transaction.abort()
    assert a[5] == 1.0
    assert _committed(db)[5] == 1.0
    a[5] = 2.0                  # the same change again: now it must be stored
    transaction.commit()
    assert _committed(db)[5] == 2.0


def test_explicit_transaction_managers(db) -> None:
    tm = transaction.TransactionManager(explicit=True)
    conn = db.open(tm)
    with tm:
        conn.root()["a"] = a = ZBigArray(N, np.float64, blksize=BLKSIZE)
        conn.add(a)                 # before writing: follow conn's manager
        a[:] = 1.0
    with tm:
        a[7] = 8.0
    tm.begin()
    a[8] = 9.0
    tm.abort()
    conn.close()
    got = _committed(db)
    assert got[7] == 8.0 and got[8] == 1.0


def test_close_and_reopen_in_another_thread(db) -> None:
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    conn.root()["a"] = a = ZBigArray(N, np.float64, blksize=BLKSIZE)
    conn.add(a)
    a[:] = 1.0
    tm.commit()
    conn.close()
    errors: list[BaseException] = []

    def other() -> None:
        try:
            c = db.open()                         # the pooled connection, this thread's tm
            assert c is conn
            b = c.root()["a"]
            assert b is a
            b[2] = 6.0
            transaction.commit()
            b[3] = 7.0
            transaction.abort()
            c.close()
        except BaseException as e:            # reported below
            errors.append(e)

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert not errors, errors
    got = _committed(db)
    assert got[2] == 6.0 and got[3] == 1.0


def test_savepoint_without_changes_rolls_back_later_ones(db) -> None:
    a = _new(db)
    a[:] = 1.0
    transaction.commit()
    np.asarray(a)                                 # join, nothing dirty
    sp = transaction.savepoint()
    a[4] = 2.0
    sp.rollback()
    assert a[4] == 1.0
    transaction.commit()
    assert _committed(db)[4] == 1.0


def test_savepoint_with_changes_rolls_back_to_them(db) -> None:
    a = _new(db)
    a[4] = 2.0
    sp = transaction.savepoint()
    a[4] = 3.0
    a[5] = 3.0
    sp.rollback()
    assert a[4] == 2.0 and a[5] == 0.0
    transaction.commit()
    got = _committed(db)
    assert got[4] == 2.0 and got[5] == 0.0



def test_savepoint_after_an_unannounced_write_through_a_kept_view_keeps_it(db) -> None:
    # After commit() the next transaction begins implicitly, unannounced; the
    # write goes through a view only: the page fault joins the transaction.
    a = _new(db)
    a[:] = 1.0
    v = a[0:10]
    transaction.commit()
    v[0] = 42.0
    sp = transaction.savepoint()
    v[0] = 43.0
    sp.rollback()
    assert v[0] == 42.0
    transaction.commit()
    assert _committed(db)[0] == 42.0


@pytest.mark.parametrize("end", ["commit", "abort"])
def test_savepoint_before_an_unannounced_write_rolls_it_back(db, end: str) -> None:
    a = _new(db)
    a[:] = 1.0
    v = a[0:10]
    transaction.commit()
    if end == "abort":
        a[1] = 5.0
        transaction.abort()
    sp = transaction.savepoint()
    v[0] = 42.0
    sp.rollback()
    assert v[0] == 1.0 and a[0] == 1.0
    v[2] = 7.0                                  # after the rollback: kept
    transaction.commit()
    got = _committed(db)
    assert got[0] == 1.0 and got[1] == 1.0 and got[2] == 7.0



def test_savepoint_of_another_managers_implicit_transaction_sees_its_handles(db) -> None:
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    conn.root()["a"] = a = ZBigArray(N, np.float64, blksize=BLKSIZE)
    conn.add(a)
    a[:] = 1.0
    v = a[0:10]
    tm.commit()
    sp = tm.get().savepoint()
    v[0] = 42.0
    sp.rollback()
    assert a[0] == 1.0
    v[0] = 43.0
    sp = tm.savepoint()
    v[0] = 44.0
    sp.rollback()
    assert v[0] == 43.0
    tm.abort()
    conn.close()
    assert _committed(db)[0] == 1.0


def _two(db) -> tuple[ZBigArray, ZBigArray, transaction.TransactionManager]:
    a = _new(db)
    a[:] = 1.0
    transaction.commit()
    tm2 = transaction.TransactionManager()
    b = db.open(tm2).root()["a"]
    np.asarray(b)
    return a, b, tm2


def test_same_block_conflicts(db) -> None:
    a, b, tm2 = _two(db)
    a[1] = 2.0
    b[2] = 3.0
    transaction.commit()
    with pytest.raises(ConflictError):
        tm2.commit()
    tm2.abort()
    assert b[1] == 2.0 and b[2] == 1.0


def test_different_blocks_both_commit(db, zblk_fmt: str) -> None:
    a, b, tm2 = _two(db)
    a[1] = 2.0
    b[BLKSIZE // 8 * 2] = 3.0
    transaction.commit()
    tm2.commit()
    got = _committed(db)
    assert got[1] == 2.0 and got[BLKSIZE // 8 * 2] == 3.0


def test_new_array_written_under_another_manager_is_a_clear_error(db) -> None:
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    conn.root()["a"] = a = ZBigArray(N, np.float64, blksize=BLKSIZE)
    a[:] = 1.0                       # no connection yet: follows transaction.manager
    with pytest.raises(ValueError, match="conn.add"):
        tm.commit()
    tm.abort()
    transaction.abort()


def test_access_through_a_closed_connection_is_a_clear_error(db) -> None:
    conn = db.open()
    conn.root()["a"] = a = ZBigArray(N, np.float64, blksize=BLKSIZE)
    transaction.commit()
    conn.close()
    with pytest.raises(ConnectionStateError, match="closed"):
        a[0]


def test_two_handles_of_one_file_in_one_connection_stay_coherent(db) -> None:
    a = _new(db)
    a[:] = 1.0
    transaction.commit()
    other = a.zfile.fileh_open()
    view = np.ndarray(N, np.float64, buffer=other.mmap(0, 4))
    assert view[7] == 1.0                    # cached in the second handle
    a[7] = 2.0
    transaction.commit()
    assert view[7] == 2.0
    other.close()


def test_new_blocks_read_their_pages_when_pickled(db) -> None:
    """Between the store and the pickling, a new ZBlk0 holds no copy of its
    page but reads as its page; a store again (a spill) makes it hold a
    copy; a failed commit after the store leaves nothing behind."""
    from zbigarray.storage.file_zodb import ZBlk0

    a = _new(db)
    seen: list[tuple[bool, bytes]] = []

    def after_store() -> None:
        zblk = a.zfile.blktab[1]
        seen.append((zblk._v_later is not None, zblk.data))
        buf = np.full(BLKSIZE // 8, 7.0).view(np.uint8)
        assert zblk.setblkdata(memoryview(buf))
        seen.append((zblk._v_later is not None, zblk.data))

    with _fmt_zblk0():
        a[BLKSIZE // 8:2 * BLKSIZE // 8] = 3.0
        transaction.get().addBeforeCommitHook(after_store)   # runs after the store
        transaction.commit()
    want3 = np.full(BLKSIZE // 8, 3.0).tobytes()
    want7 = np.full(BLKSIZE // 8, 7.0).tobytes()
    assert seen == [(True, want3), (False, want7)]
    assert isinstance(a.zfile.blktab[1], ZBlk0)
    got = _committed(db)
    assert (got[BLKSIZE // 8:2 * BLKSIZE // 8] == 7.0).all()   # the copy, as set

    with _fmt_zblk0():
        a[2 * BLKSIZE // 8:3 * BLKSIZE // 8] = 4.0
        transaction.get().join(_FailingDM())
        with pytest.raises(RuntimeError, match="vote failed"):
            transaction.commit()
        transaction.abort()
    assert (a[2 * BLKSIZE // 8:3 * BLKSIZE // 8] == 0).all()
    assert (_committed(db)[2 * BLKSIZE // 8:3 * BLKSIZE // 8] == 0).all()


def test_handle_closed_during_the_commit_fails_it(db) -> None:
    """A new block's page gone before ZODB pickles it (the handle closed by
    a hook): the commit fails, naming the block, rather than store
    anything else; the database keeps what it had."""
    a = _new(db)
    with _fmt_zblk0():
        a[BLKSIZE // 8] = 5.0
        transaction.get().addBeforeCommitHook(lambda: a._fileh.close())
        with pytest.raises(RuntimeError, match="block 1 .*page is gone"):
            transaction.commit()
        transaction.abort()
    assert (_committed(db) == 0).all()


def _fmt_zblk0():
    from unittest import mock

    return mock.patch.dict("os.environ", {"ZBIGARRAY_ZBLK_FMT": "ZBlk0"})
