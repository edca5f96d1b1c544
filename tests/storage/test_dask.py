"""Dask over a shared database (zbigarray.dask, zbigarray.storage.snapshot,
zbigarray.storage._write_relay): tasks carry a small reference, workers in
other processes read the array at the snapshot the dask array was made at,
whatever is committed meanwhile, and results are written back by the client
-- with zbigarray.dask.store, or with dask's own da.store, whose writes on
the workers the client relays into its transaction.  A real ZEO server, a
real PostgreSQL (RelStorage) and a dask.distributed LocalCluster of
processes.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import transaction

from tests.common import run_python
from zbigarray import ZBigArray, open_db

dask = pytest.importorskip("dask", reason="dask is optional; the [test] extra installs it")
da = pytest.importorskip("dask.array", reason="dask is optional; the [test] extra installs it")
zdask = pytest.importorskip("zbigarray.dask")

pytestmark = pytest.mark.subprocess

MiB = 1 << 20
GiB = 1 << 30
BLK = 64 * 1024


def _fresh(db: object, key: str, data: np.ndarray, blksize: int = BLK) -> ZBigArray:
    """Store `data` as root[key] in a new connection of `db`; committed."""
    tm = transaction.TransactionManager()
    conn = db.open(transaction_manager=tm)  # type: ignore[attr-defined]
    conn.root()[key] = A = ZBigArray(data.shape, data.dtype, blksize=blksize)
    conn.add(A)
    A[...] = data
    tm.commit()
    return A


def _overwrite(db: object, key: str, value: float) -> None:
    """Another client (a connection with its own transactions) commits
    A[...] = value."""
    tm = transaction.TransactionManager()
    conn = db.open(transaction_manager=tm)  # type: ignore[attr-defined]
    conn.root()[key][...] = value
    tm.commit()
    conn.close()


@pytest.fixture(scope="module")
def cluster() -> Iterator[object]:
    """A LocalCluster of 2 worker processes (1 thread each) on 127.0.0.1, and
    a client of it, for the module.  Its dashboard on any free port: the
    default one may be another suite's (and its warning is an error here)."""
    distributed = pytest.importorskip(
        "distributed", reason="dask.distributed is optional; the [test] extra installs it")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=":0",
                                  worker_class=distributed.Nanny) as lc, \
            distributed.Client(lc, set_as_default=False) as client:
        yield client


# ------------------------------------------------------------ the reference


def test_pickled_array_is_a_small_reference_to_its_snapshot(tmp_path: Path) -> None:
    db = open_db(str(tmp_path / "a.fs"))
    A = _fresh(db, "A", np.arange(100_000, dtype=np.float64))
    data = pickle.dumps(A)
    assert len(data) < 1024
    # Another process reads it, at that snapshot, even after a later commit.
    A[...] = -1
    A._p_jar.transaction_manager.commit()
    r = run_python(f"""
        import pickle, numpy as np
        B = pickle.loads({data!r})
        assert B._p_jar.isReadOnly()
        assert np.array_equal(B[:], np.arange(100_000, dtype=np.float64)), B[:10]
        try:
            B[0] = 7
        except TypeError as e:
            assert "zbigarray.dask.store" in str(e), e
        else:
            raise AssertionError("a snapshot accepted a write")
        print("ok")
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[-1] == "ok"
    db.close()


def test_threads_opening_one_snapshot_at_once_share_the_array(tmp_path: Path) -> None:
    # Threads of a worker (or of the threaded scheduler) reading their first
    # chunks at once: one connection, one object, no error.
    import threading

    db = open_db(str(tmp_path / "a.fs"))
    A = _fresh(db, "A", np.arange(1000, dtype=np.float64))
    for _ in range(5):
        A._p_jar.transaction_manager.begin()
        A[0] = A[0] + 1         # a new snapshot each round
        A._p_jar.transaction_manager.commit()
        data = pickle.dumps(A)
        got: list[object] = []
        barrier = threading.Barrier(8)

        def load() -> None:
            barrier.wait()
            got.append(pickle.loads(data))

        threads = [threading.Thread(target=load) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(got) == 8 and all(g is got[0] for g in got)
    db.close()


def test_database_closed_and_opened_again_serves_the_same_snapshot(tmp_path: Path) -> None:
    # The process's cache must not hand out a connection of a closed database.
    uri = str(tmp_path / "a.fs")
    db = open_db(uri)
    A = _fresh(db, "A", np.arange(1000, dtype=np.float64))
    x = A.to_dask(chunks=250)
    assert x.sum().compute(scheduler="sync") == 499500
    db.close()
    db = open_db(uri)
    A = db.open().root()["A"]
    y = A.to_dask(chunks=250)           # the same snapshot: nothing committed since
    assert y.sum().compute(scheduler="sync") == 499500
    db.close()


def test_graph_of_a_1gib_array_pickles_small(tmp_path: Path) -> None:
    db = open_db(str(tmp_path / "a.fs"))
    tm = transaction.TransactionManager()
    conn = db.open(transaction_manager=tm)
    conn.root()["A"] = A = ZBigArray((GiB // 8,), np.float64)     # holes: free to make
    tm.commit()
    x = A.to_dask()
    # Whole blocks along the major axis, about dask's chunk size.
    assert all(c % (A.zfile.blksize // 8) == 0 for c in x.chunks[0][:-1])
    assert len(pickle.dumps(dict(x.__dask_graph__()))) < MiB
    assert x[:1000].sum().compute(scheduler="sync") == 0
    db.close()


def test_default_chunks_are_whole_blocks_of_the_major_axis(tmp_path: Path) -> None:
    db = open_db(str(tmp_path / "a.fs"))
    A = _fresh(db, "C", np.zeros((10_000, 32), np.float32))    # 128-byte rows
    with dask.config.set({"array.chunk-size": "256KiB"}):
        assert zdask.default_chunks(A) == (256 * 1024 // 128, 32)
    tm = transaction.TransactionManager()
    conn = db.open(transaction_manager=tm)
    conn.root()["G"] = G = ZBigArray((32, 1000), np.float32, order="F", blksize=BLK)
    tm.commit()
    with dask.config.set({"array.chunk-size": "10KiB"}):      # below a block: one block
        assert zdask.default_chunks(G) == (32, BLK // 128)
    db.close()


def test_refuses_what_other_processes_cannot_read(tmp_path: Path) -> None:
    mem = open_db("memory://")
    A = _fresh(mem, "A", np.zeros(10))
    with pytest.raises(ValueError, match="memory"):
        pickle.dumps(A)
    with pytest.raises(TypeError, match="not stored"):
        pickle.dumps(ZBigArray(10, np.float64))
    db = open_db(str(tmp_path / "a.fs"))
    B = _fresh(db, "B", np.zeros(10))
    B[3] = 1        # not committed: the snapshot would not have it
    with pytest.raises(ValueError, match="not committed"):
        B.to_dask()
    B._p_jar.transaction_manager.commit()
    assert B.to_dask().sum().compute(scheduler="sync") == 1
    mem.close()
    db.close()


def test_threaded_scheduler_reads_the_snapshot_and_store_writes_back(tmp_path: Path) -> None:
    uri = str(tmp_path / "a.fs")
    db = open_db(uri)
    n = 200_000
    A = _fresh(db, "A", np.arange(n, dtype=np.float64))
    tm = A._p_jar.transaction_manager
    x = A.to_dask(chunks=50_000)
    A[...] = 0
    tm.commit()                 # after the snapshot: x does not see it
    assert x.sum().compute(scheduler="threads") == n * (n - 1) / 2
    out = _fresh(db, "out", np.zeros(n))
    zdask.store(x * 2, out, in_flight=2)
    assert np.array_equal(out[:], 2 * np.arange(n, dtype=np.float64))
    out._p_jar.transaction_manager.abort()      # the commit is the caller's
    assert not out[:].any()
    db.close()


# -------------------------------------------------------------- a cluster


def _sum_and_isolation(client: object, uri: str, key: str) -> None:
    db = open_db(uri)
    n = 300_000
    A = _fresh(db, key, np.arange(n, dtype=np.float64))
    x = A.to_dask(chunks=60_000)
    _overwrite(db, key, -5.0)           # another client commits meanwhile
    total = client.compute(x.sum()).result()  # type: ignore[attr-defined]
    assert total == n * (n - 1) / 2
    # The workers keep their connection between tasks: a second computation
    # of the same snapshot opens nothing new.
    from zbigarray.storage import snapshot

    def nconn() -> int:
        return len(snapshot._connections)

    first = client.run(nconn)  # type: ignore[attr-defined]
    assert client.compute((x * 1).max()).result() == n - 1  # type: ignore[attr-defined]
    assert client.run(nconn) == first  # type: ignore[attr-defined]
    # A new dask array of the same array sees the other client's commit.
    A._p_jar.transaction_manager.begin()
    assert client.compute(A.to_dask(chunks=60_000).sum()).result() == -5.0 * n  # type: ignore
    # dask's own store, into the array itself: written here, from the old
    # snapshot, into this transaction.
    with client.as_current():  # type: ignore[attr-defined]
        da.store(x + 1, A)
    assert np.array_equal(A[:], np.arange(n, dtype=np.float64) + 1)
    A._p_jar.transaction_manager.abort()
    db.close()


def test_cluster_over_zeo_reads_one_snapshot(zeo_server: str, cluster: object) -> None:
    _sum_and_isolation(cluster, f"zeo://{zeo_server}", "zeo")


def test_cluster_over_a_shared_filestorage_path(tmp_path: Path, cluster: object) -> None:
    _sum_and_isolation(cluster, str(tmp_path / "shared.fs"), "fs")


def test_cluster_over_relstorage(postgres_server: str, cluster: object) -> None:
    from tests.storage.conftest import empty_relstorage

    _sum_and_isolation(cluster, empty_relstorage(postgres_server), "rel")


def test_cluster_results_are_stored_by_the_client(zeo_server: str, cluster: object) -> None:
    from distributed import Client

    uri = f"zeo://{zeo_server}"
    db = open_db(uri)
    n = 120_000
    A = _fresh(db, "A", np.arange(n, dtype=np.float64))
    out = _fresh(db, "out", np.zeros(n))
    x = A.to_dask(chunks=10_000) + 1
    client = cluster
    assert isinstance(client, Client)
    with client.as_current():
        zdask.store(x, out, in_flight=3)
    out._p_jar.transaction_manager.commit()
    _check = run_python(f"""
        import numpy as np
        from zbigarray import open_db
        out = open_db({uri!r}).open().root()["out"]
        assert np.array_equal(out[:], np.arange({n}, dtype=np.float64) + 1), out[:5]
    """)
    assert _check.returncode == 0, _check.stderr
    db.close()


# ------------------------------------------ da.store on a cluster: the relay


@pytest.fixture
def hang_guard() -> Iterator[None]:
    """Ends the test process, with every thread's traceback, if the test
    hangs (a relay that never answers would block da.store for ever)."""
    import faulthandler

    faulthandler.dump_traceback_later(120, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


def _committed(db: object, key: str) -> np.ndarray:
    """root[key] as a new connection sees it: what is committed."""
    conn = db.open(transaction_manager=transaction.TransactionManager())  # type: ignore
    try:
        return np.array(conn.root()[key][:])
    finally:
        conn.close()


def _relay_threads() -> list[object]:
    import threading

    return [t for t in threading.enumerate() if t.name.startswith("zbigarray-write-relay")]


def test_da_store_on_the_cluster_writes_into_the_callers_transaction(
        zeo_server_shared: str, cluster: object, hang_guard: None) -> None:
    db = open_db(f"zeo://{zeo_server_shared}")
    n = 150_000
    base = np.arange(n, dtype=np.float64)
    A = _fresh(db, "relay-A", base)
    out = _fresh(db, "relay-out", np.zeros(n))
    tm = out._p_jar.transaction_manager
    x = A.to_dask(chunks=20_000)
    client = cluster
    with client.as_current():  # type: ignore[attr-defined]
        for lock in (True, False):
            da.store(np.sqrt(x) * 3 + lock, out, lock=lock)
            assert np.array_equal(out[:], np.sqrt(base) * 3 + lock)
            # Nobody else sees it before the caller commits; abort drops it.
            assert not _committed(db, "relay-out").any()
            tm.abort()
            assert not out[:].any()
        # Built now, computed later: the writes join the transaction the
        # computation runs in.
        stored = da.store(x[::-1] - 1, out, compute=False)
        tm.abort()
        stored.compute()
        assert np.array_equal(out[:], base[::-1] - 1)
        tm.abort()
        client.compute(da.store(-x, out, compute=False)).result(timeout=60)  # type: ignore
        assert np.array_equal(out[:], -base)
        tm.commit()
    assert np.array_equal(_committed(db, "relay-out"), -base)
    db.close()


def test_da_store_into_an_array_new_in_this_transaction(
        zeo_server_shared: str, cluster: object, hang_guard: None) -> None:
    # The workers never open the destination: it need not be committed.
    db = open_db(f"zeo://{zeo_server_shared}")
    A = _fresh(db, "new-A", np.arange(1000, dtype=np.float64))
    tm = transaction.TransactionManager()
    conn = db.open(transaction_manager=tm)
    conn.root()["new-out"] = out = ZBigArray((1000,), np.float64)
    conn.add(out)
    with cluster.as_current():  # type: ignore[attr-defined]
        da.store(A.to_dask(chunks=300) * 2, out)
    tm.commit()
    assert np.array_equal(_committed(db, "new-out"), 2 * np.arange(1000, dtype=np.float64))
    db.close()


def test_da_store_with_a_thread_local_transaction_manager(
        zeo_server_shared: str, cluster: object, hang_guard: None) -> None:
    # The connection follows transaction.manager: the writes are those of
    # this thread's transaction, not of the relay thread's own.
    db = open_db(f"zeo://{zeo_server_shared}")
    n = 40_000
    A = _fresh(db, "tl-A", np.arange(n, dtype=np.float64))
    _fresh(db, "tl-out", np.zeros(n))
    conn = db.open(transaction.manager)
    out = conn.root()["tl-out"]
    x = A.to_dask(chunks=10_000)
    with cluster.as_current():  # type: ignore[attr-defined]
        da.store(x * 2, out)
        transaction.abort()
        assert not out[:].any()
        da.store(x * 2, out)
        transaction.commit()
    assert np.array_equal(_committed(db, "tl-out"), 2 * np.arange(n, dtype=np.float64))
    conn.close()
    db.close()


def test_da_store_holds_a_bounded_number_of_chunks(
        zeo_server_shared: str, cluster: object, hang_guard: None,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The relay writes one chunk at a time, and a worker's task waits until
    # its chunk is written: the cluster holds at most one per worker thread,
    # plus one whose release (asynchronous, through the scheduler) is on
    # its way while the thread computes the next.
    import threading

    from zbigarray.storage import _write_relay

    client = cluster
    nthreads = sum(client.nthreads().values())  # type: ignore[attr-defined]
    held = {"relay": 0, "relay_max": 0, "cluster_max": 0}
    count_lock = threading.Lock()
    write = _write_relay.WriteRelay._write

    def requests_on_the_cluster(dask_worker: object) -> int:
        return sum(str(k).startswith("zbigarray-write-relay")
                   for k in dask_worker.data)  # type: ignore[attr-defined]

    def counting_write(self: object, *args: object) -> None:
        with count_lock:
            held["relay"] += 1
            held["relay_max"] = max(held["relay_max"], held["relay"])
        try:
            on_cluster = sum(client.run(requests_on_the_cluster).values())  # type: ignore
            held["cluster_max"] = max(held["cluster_max"], on_cluster)
            write(self, *args)  # type: ignore[arg-type]
        finally:
            with count_lock:
                held["relay"] -= 1

    monkeypatch.setattr(_write_relay.WriteRelay, "_write", counting_write)
    db = open_db(f"zeo://{zeo_server_shared}")
    n = 64 * 5_000
    A = _fresh(db, "bound-A", np.arange(n, dtype=np.float64))
    out = _fresh(db, "bound-out", np.zeros(n))
    with client.as_current():  # type: ignore[attr-defined]
        da.store(A.to_dask(chunks=5_000) + 1, out, lock=False)
    assert np.array_equal(out[:], np.arange(n, dtype=np.float64) + 1)
    assert held["relay_max"] == 1
    assert 1 <= held["cluster_max"] <= 2 * nthreads
    assert sum(client.run(requests_on_the_cluster).values()) == 0  # type: ignore
    out._p_jar.transaction_manager.abort()
    db.close()


def test_da_store_raises_what_the_client_write_raised(
        zeo_server_shared: str, cluster: object, hang_guard: None) -> None:
    db = open_db(f"zeo://{zeo_server_shared}")
    out = _fresh(db, "err-out", np.zeros(1000))
    tm = out._p_jar.transaction_manager
    too_long = da.ones(1005, chunks=250)          # the last chunk falls outside
    with cluster.as_current():  # type: ignore[attr-defined]
        with pytest.raises(ValueError, match="broadcast"):
            da.store(too_long, out, lock=False)
    tm.abort()
    assert not out[:].any()
    db.close()


def test_writes_for_an_ended_transaction_are_refused(
        zeo_server_shared: str, cluster: object, hang_guard: None) -> None:
    # Tasks of a failed da.store may still be running when the caller
    # aborts: their writes must not land in the next transaction.
    db = open_db(f"zeo://{zeo_server_shared}")
    out = _fresh(db, "late-out", np.zeros(100))
    tm = out._p_jar.transaction_manager
    client = cluster
    with client.as_current():  # type: ignore[attr-defined]
        data = pickle.dumps(out)

        def write(data: bytes) -> None:
            pickle.loads(data)[:10] = 1

        tm.abort()
        late = client.submit(write, data, pure=False)  # type: ignore[attr-defined]
        with pytest.raises(RuntimeError, match="ended"):
            late.result(timeout=60)
        assert not out[:].any()
        client.submit(write, pickle.dumps(out), pure=False).result(timeout=60)  # type: ignore
    assert out[:10].all() and not out[10:].any()
    tm.abort()
    db.close()


def test_not_relayed_writes_still_raise_type_error(
        zeo_server_shared: str, cluster: object) -> None:
    from zbigarray.storage._connlock import connection_lock

    db = open_db(f"zeo://{zeo_server_shared}")
    out = _fresh(db, "norelay-out", np.zeros(10))
    with cluster.as_current():  # type: ignore[attr-defined]
        relayed = pickle.loads(pickle.dumps(out))
        # Unpickled outside the client's workers: nobody to relay to.
        with pytest.raises(TypeError, match="not a dask.distributed worker"):
            relayed[0] = 1
        assert relayed.shape == (10,)       # reads: the snapshot's
        # Pickled by a thread holding the connection's lock: a relayed
        # write would wait for that thread, which waits for the write.
        with connection_lock(out._p_jar):
            plain = pickle.loads(pickle.dumps(out))
    assert isinstance(plain, ZBigArray) and plain._p_jar.isReadOnly()
    with pytest.raises(TypeError, match="read-only"):
        plain[0] = 1
    db.close()


def test_relay_stops_with_its_connection(zeo_server_shared: str, cluster: object) -> None:
    import time

    db = open_db(f"zeo://{zeo_server_shared}")
    out = _fresh(db, "stop-out", np.zeros(10))
    with cluster.as_current():  # type: ignore[attr-defined]
        pickle.dumps(out)
    mine = [t for t in _relay_threads() if t.is_alive()]
    assert mine
    db.close()
    deadline = time.monotonic() + 10
    while any(t.is_alive() for t in mine) and time.monotonic() < deadline:  # type: ignore
        time.sleep(0.1)
    assert not any(t.is_alive() for t in mine)  # type: ignore[attr-defined]
