"""Page faults served by a proxy thread act in the faulting thread's
transaction (see the module docstring of zbigarray.storage._datamanager).

A fault taken inside a system call (``f.readinto(view)``) is served by a
proxy thread of the fault layer, which runs ``loadblk``, ``dirtied`` and
``spill`` for the thread that made the call; ``fault_proxy_thread()`` names
that thread inside such a callback.  Here a Python thread plays the proxy:
``fault_proxy_thread`` is replaced by one that names the served thread in
it (and says "not a proxy" everywhere else), and the thread calls the
callbacks, or writes to a view so that the fault layer calls them in it.

With a connection opened with the thread-local ``transaction.manager``, a
proxy thread would otherwise resolve it to a manager of its own: the handle
would join a transaction nobody commits, and so would the Connection when a
spill or a block restored after a rollback changes its first object (the
faulting thread's commit then fails, or leaves the block out).  A connection opened without a manager has a plain one,
which every thread resolves alike: the same tests check that nothing changes
there.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import transaction
import ZODB

import zbigarray.bigfile
from tests.storage.conftest import BLKSIZE
from zbigarray.bigarray.array_zodb import ZBigArray
from zbigarray.bigfile import RAM

PER = BLKSIZE // 8          # float64 per block
NBLK = 16
N = NBLK * PER


class Proxies:
    """Runs functions in threads that ``fault_proxy_thread()`` calls proxies."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self._serving: dict[int, int] = {}      # proxy's ident -> served native id
        monkeypatch.setattr(zbigarray.bigfile, "fault_proxy_thread",
                            lambda: self._serving.get(threading.get_ident()))

    def run(self, for_tid: int, fn: Callable[[], Any]) -> Any:
        """Run `fn` in a new thread, a proxy serving native thread `for_tid`;
        return its result, or raise its exception."""
        out: dict[str, Any] = {}

        def proxy() -> None:
            self._serving[threading.get_ident()] = for_tid
            try:
                out["result"] = fn()
            except BaseException as e:      # re-raised by the caller
                out["error"] = e
            finally:
                del self._serving[threading.get_ident()]

        t = threading.Thread(target=proxy)
        t.start()
        t.join(60)
        assert not t.is_alive(), "proxy thread hung"
        if "error" in out:
            raise out["error"]
        return out["result"]


class Parked:
    """A thread that runs `fn` (its result: `result`), then stays alive
    until released."""

    def __init__(self, fn: Callable[[], Any] = lambda: None) -> None:
        self._go = threading.Event()
        self._ready = threading.Event()
        self._fn = fn
        self.result: Any = None
        self._thread = threading.Thread(target=self._main)
        self._thread.start()
        assert self._ready.wait(60)

    def _main(self) -> None:
        try:
            self.result = self._fn()
        finally:
            self._ready.set()
            self._go.wait(60)

    @property
    def native_id(self) -> int:
        return self._thread.native_id

    def release(self) -> None:
        self._go.set()
        self._thread.join(60)


@pytest.fixture
def proxies(monkeypatch: pytest.MonkeyPatch) -> Proxies:
    return Proxies(monkeypatch)


@pytest.fixture(params=["thread-local", "plain"])
def conn(request: pytest.FixtureRequest, db: ZODB.DB) -> Iterator[Any]:
    """A connection of the main thread: opened with ``transaction.manager``
    itself (thread-local), or without a manager (ZODB then takes the
    thread's plain one)."""
    c = db.open(transaction.manager) if request.param == "thread-local" else db.open()
    yield c
    transaction.abort()
    c.close()


def _committed(db: ZODB.DB) -> np.ndarray:
    """The array as a fresh connection sees it."""
    tm = transaction.TransactionManager()
    c = db.open(tm)
    try:
        return np.array(c.root()["a"])
    finally:
        tm.abort()
        c.close()


def _read_in_own_transaction(a: ZBigArray) -> Any:
    """Use `a` (in a thread): return the thread's transaction."""
    float(a[0])
    return transaction.get()


def _new_array(conn: Any) -> ZBigArray:
    conn.root()["a"] = a = ZBigArray(N, np.float64, blksize=BLKSIZE)
    transaction.commit()
    return a


def test_dirtied_in_proxy_joins_the_faulting_threads_transaction(
        db: ZODB.DB, conn: Any, proxies: Proxies) -> None:
    a = _new_array(conn)
    transaction.begin()
    view = a[:]
    dm = a._fileh.file.dm
    transaction.commit()
    # The transaction after a commit begins implicitly and is announced to
    # nobody: the handle has not joined it.  A system call writes into the
    # view; its first write's dirtied() runs in the proxy.
    main = threading.get_native_id()

    def dirtied() -> Any:
        dm._file.dirtied()
        return transaction.get()        # the proxy thread's own

    proxy_txn = proxies.run(main, dirtied)
    txn = transaction.get()
    assert dm._txn is txn
    assert dm in txn._resources
    assert dm not in proxy_txn._resources
    view[3 * PER:5 * PER] = 7.0
    transaction.commit()
    expect = np.zeros(N)
    expect[3 * PER:5 * PER] = 7.0
    np.testing.assert_array_equal(_committed(db), expect)


def test_writes_spilled_in_proxy_are_committed_by_the_faulting_thread(
        db: ZODB.DB, conn: Any, proxies: Proxies) -> None:
    _new_array(conn)
    zfile = conn.root()["a"].zfile
    # A handle over a RAM of 4 blocks: writing 16 blocks spills.
    fileh = zfile.fileh_open(ram=RAM(4 * BLKSIZE))
    try:
        view = np.ndarray(N, np.float64, buffer=fileh.mmap(0, NBLK))
        transaction.commit()            # the next transaction: nothing joined yet
        main = threading.get_native_id()

        def write() -> None:
            # Faults in this thread: loadblk, dirtied and spill run here, as
            # in a proxy serving the main thread (f.readinto(view)).
            view[:] = np.arange(N, dtype=np.float64)

        proxies.run(main, write)
        assert fileh.file.stored, "no spill: the test would prove nothing"
        transaction.commit()
        np.testing.assert_array_equal(_committed(db), np.arange(N, dtype=np.float64))
    finally:
        transaction.abort()
        fileh.close()


def test_block_restored_in_proxy_after_a_rollback_is_committed(
        db: ZODB.DB, conn: Any, proxies: Proxies) -> None:
    a = _new_array(conn)
    view = a[:]
    view[:PER] = 1.0
    sp = transaction.savepoint()
    view[:PER] = 2.0
    sp.rollback()
    # Block 0 is restored at its next load, into its block object: the
    # first object the transaction changes, so the Connection joins then.
    assert 0 in a._fileh.file.uncommitted.overlay
    assert proxies.run(threading.get_native_id(), lambda: float(view[0])) == 1.0
    transaction.commit()
    expect = np.zeros(N)
    expect[:PER] = 1.0
    np.testing.assert_array_equal(_committed(db), expect)


def test_proxy_for_another_user_thread_joins_that_threads_transaction(
        db: ZODB.DB, proxies: Proxies) -> None:
    c = db.open(transaction.manager)
    try:
        a = _new_array(c)
        dm = a._fileh.file.dm
        # Thread B reads the array (in its own transaction of the
        # thread-local manager), then stays alive; the main thread uses
        # the array after it.
        b = Parked(lambda: _read_in_own_transaction(a))
        try:
            float(a[1])
            assert dm._txn is transaction.get()
            proxies.run(b.native_id, dm._file.dirtied)
            assert dm._txn is b.result
            assert dm in b.result._resources
        finally:
            b.release()
    finally:
        transaction.abort()
        c.close()


def test_proxy_for_a_thread_that_never_used_the_array_takes_the_latest_one(
        db: ZODB.DB, proxies: Proxies) -> None:
    """The view was handed to a thread that never touched the array API:
    its system calls act in the transaction of the thread that used the
    array last."""
    c = db.open(transaction.manager)
    try:
        a = _new_array(c)
        dm = a._fileh.file.dm
        b = Parked(lambda: _read_in_own_transaction(a))
        other = Parked()            # never touches the array
        try:
            transaction.commit()
            float(a[1])             # the main thread is the latest user
            txn = transaction.get()
            transaction.commit()    # the next transaction: not joined yet
            assert dm._txn is None
            proxies.run(other.native_id, dm._file.dirtied)
            assert dm._txn is transaction.get() and dm._txn is not txn
            assert dm in dm._txn._resources
        finally:
            b.release()
            other.release()
    finally:
        transaction.abort()
        c.close()


def test_threads_that_ended_are_forgotten(db: ZODB.DB, proxies: Proxies) -> None:
    c = db.open(transaction.manager)
    try:
        a = _new_array(c)
        dm = a._fileh.file.dm

        def use() -> int:
            float(a[0])
            transaction.abort()
            return threading.get_native_id()

        t_ids = []
        for _ in range(3):
            b = Parked(use)
            t_ids.append(b.result)
            b.release()
        registered = dict(dm._threads._by_thread)
        assert set(registered) == {threading.get_native_id()}
        # A proxy for an ended thread takes the main thread's transaction.
        transaction.commit()
        proxies.run(t_ids[0], dm._file.dirtied)
        assert dm._txn is transaction.get()
    finally:
        transaction.abort()
        c.close()


def test_plain_manager_keeps_no_registry(db: ZODB.DB) -> None:
    c = db.open()
    try:
        a = _new_array(c)
        assert a._fileh.file.dm._threads is None
    finally:
        transaction.abort()
        c.close()
