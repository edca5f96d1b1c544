"""Dask over a shared database (zbigarray.dask, zbigarray.storage.snapshot):
tasks carry a small reference, workers in other processes read the array at
the snapshot the dask array was made at, whatever is committed meanwhile, and
results are written back by the client.  A real ZEO server, a real
PostgreSQL (RelStorage) and a dask.distributed LocalCluster of processes.
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
        # da.store would run the writes on the workers, into read-only
        # snapshots: refused, naming the way that works.
        with pytest.raises(TypeError, match="zbigarray.dask.store"):
            da.store(x, out, lock=False)
    out._p_jar.transaction_manager.commit()
    _check = run_python(f"""
        import numpy as np
        from zbigarray import open_db
        out = open_db({uri!r}).open().root()["out"]
        assert np.array_equal(out[:], np.arange({n}, dtype=np.float64) + 1), out[:5]
    """)
    assert _check.returncode == 0, _check.stderr
    db.close()
