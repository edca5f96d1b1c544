"""Invalidation and isolation between two connections of one process."""

from __future__ import annotations

import time

import numpy as np
import pytest
import transaction

from tests.storage.conftest import BLKSIZE, empty_relstorage
from zbigarray.bigarray.array_zodb import ZBigArray
from zbigarray.bigfile import RAM
from zbigarray.storage import open_db

PER_BLK = BLKSIZE // 8          # float64 per block
NBLK = 8


@pytest.fixture(params=["fs-cache", "fs-tinycache", "zeo-tinycache",
                        pytest.param("pg-cache", marks=pytest.mark.relstorage),
                        pytest.param("pg-tinycache", marks=pytest.mark.relstorage)])
def two(request: pytest.FixtureRequest, tmp_path, zblk_fmt: str):
    """(writer array, reader array, reader's manager).

    ``fs``: two connections of one FileStorage DB.  ``zeo``: two ZEO clients
    (two DBs) of a real server, so that invalidations travel through it.
    ``pg``: two RelStorage clients (two DBs) of a real PostgreSQL server;
    each connection polls the database for changes at its boundaries.
    ``tinycache``: a ZODB cache of 1 object, block objects are evicted
    between transactions (and, on RelStorage, no storage cache of
    pickles either: every object load is a query).
    """
    where, cache = request.param.split("-")
    kw = {"cache_size": 1} if cache == "tinycache" else {}
    if where == "fs":
        db = db2 = open_db(str(tmp_path / "inv.fs"), **kw)
    elif where == "zeo":
        addr = request.getfixturevalue("zeo_server_shared")
        db = open_db(f"zeo://{addr}", **kw)
        db2 = open_db(f"zeo://{addr}", **kw)
    else:
        uri = empty_relstorage(request.getfixturevalue("postgres_server"))
        if cache == "tinycache":
            uri += "&cache_local_mb=0"
        db = open_db(uri, **kw)
        db2 = open_db(uri, **kw)
    key = request.node.name
    root = db.open().root()
    root[key] = a = ZBigArray(NBLK * PER_BLK, np.float64, blksize=BLKSIZE)
    a[:2 * PER_BLK] = 1.0           # blocks 0, 1 exist; the others are holes
    transaction.commit()
    tm = transaction.TransactionManager()
    conn2 = db2.open(tm)

    def begin() -> None:
        """The reader's next transaction boundary, once the writer's last
        commit has reached it (a ZEO client hears of commits
        asynchronously; its sync() does not ask the server; RelStorage
        asks the database, no wait)."""
        tid = db.lastTransaction()
        deadline = time.monotonic() + 10
        while db2.lastTransaction() < tid:
            assert time.monotonic() < deadline, "ZEO invalidations did not arrive"
            time.sleep(0.005)
        tm.begin()

    begin()
    b = conn2.root()[key]
    np.testing.assert_array_equal(np.asarray(b)[:2 * PER_BLK], 1.0)   # cache all pages
    yield a, b, begin
    tm.abort()
    transaction.abort()
    db.close()
    db2.close()


def _sees(b, begin, idx, value) -> None:
    begin()
    assert b[idx] == value


def test_changed_block(two) -> None:
    a, b, begin = two
    a[3] = 5.0
    transaction.commit()
    assert b[3] == 1.0              # same transaction: old snapshot
    _sees(b, begin, 3, 5.0)


def test_block_that_was_a_hole(two) -> None:
    a, b, begin = two
    assert b[5 * PER_BLK] == 0.0
    a[5 * PER_BLK] = 7.0
    transaction.commit()
    assert b[5 * PER_BLK] == 0.0
    _sees(b, begin, 5 * PER_BLK, 7.0)


def test_block_object_replaced_by_other_format(two, monkeypatch: pytest.MonkeyPatch,
                                               zblk_fmt: str) -> None:
    a, b, begin = two
    other = "ZBlk1" if zblk_fmt == "ZBlk0" else "ZBlk0"
    monkeypatch.setenv("ZBIGARRAY_ZBLK_FMT", other)
    old = a.zfile.blktab[1]
    a[PER_BLK + 2] = 6.0
    transaction.commit()
    assert type(a.zfile.blktab[1]).__name__ == other and a.zfile.blktab[1] is not old
    _sees(b, begin, PER_BLK + 2, 6.0)


def test_block_became_a_hole(two) -> None:
    a, b, begin = two
    a[PER_BLK:2 * PER_BLK] = 0.0
    transaction.commit()
    assert 1 not in a.zfile.blktab
    _sees(b, begin, PER_BLK + 1, 0.0)


def test_many_new_blocks_split_buckets(two) -> None:
    a, b, begin = two
    n = 300                                      # LOBTree buckets hold 60 entries
    np.asarray(b)                                # cache every page, holes too
    a.append(np.arange(n * PER_BLK, dtype=np.float64))
    a[0] = 9.0
    transaction.commit()
    assert len(a.zfile.blktab) == 2 + n
    begin()
    assert b.shape == a.shape
    got = np.asarray(b)
    assert got[0] == 9.0 and (got[1:2 * PER_BLK] == 1.0).all()
    np.testing.assert_array_equal(got[NBLK * PER_BLK:], np.arange(n * PER_BLK))
    a[NBLK * PER_BLK + 123 * PER_BLK] = -1.0     # a block deep in the new buckets
    transaction.commit()
    _sees(b, begin, NBLK * PER_BLK + 123 * PER_BLK, -1.0)


def test_isolation_inside_one_transaction(two) -> None:
    a, b, begin = two
    begin()
    before = np.array(b)
    for i in range(3):
        a[i * PER_BLK + 1] = 10.0 + i              # changed blocks, and a hole
        a[5 * PER_BLK + i] = 20.0 + i
        transaction.commit()
        np.testing.assert_array_equal(np.asarray(b), before)
    begin()
    assert b[2 * PER_BLK + 1] == 12.0 and b[5 * PER_BLK + 2] == 22.0


def test_append_keeps_cached_pages_of_unchanged_blocks(two) -> None:
    a, b, begin = two
    fileh = b._fileh
    fileh.file.fault_around = 0     # count loads exactly: no reading ahead
    np.asarray(b).sum()                          # every page cached
    loads = fileh.stats()["nloadblk"]
    a.append(np.ones(3 * PER_BLK))
    transaction.commit()
    begin()
    np.asarray(b[:NBLK * PER_BLK]).sum()          # the old part: still cached
    assert fileh.stats()["nloadblk"] == loads
    a.resize((NBLK * PER_BLK,))
    transaction.commit()
    begin()
    np.asarray(b).sum()
    assert b.shape == (NBLK * PER_BLK,)
    assert fileh.stats()["nloadblk"] == loads


def test_changed_block_reloads_only_that_block(two) -> None:
    a, b, begin = two
    fileh = b._fileh
    np.asarray(b).sum()                          # every page cached
    loads = fileh.stats()["nloadblk"]
    a[PER_BLK] = 3.0
    transaction.commit()
    begin()
    assert b[PER_BLK] == 3.0
    np.asarray(b).sum()
    assert fileh.stats()["nloadblk"] == loads + 1


def test_records_stay_bounded_when_reading_more_than_ram(tmp_path) -> None:
    """A scan bigger than RAM keeps about 2x RAM's pages of records, and the
    handle still sees every change afterwards."""
    db = open_db(str(tmp_path / "scan.fs"))
    try:
        root = db.open().root()
        nblk = 300
        root["a"] = a = ZBigArray(nblk * PER_BLK, np.float64, blksize=BLKSIZE)
        a[:] = np.arange(nblk * PER_BLK, dtype=np.float64)
        transaction.commit()
        tm = transaction.TransactionManager()
        conn2 = db.open(tm)
        zfile = conn2.root()["a"].zfile
        fileh = zfile.fileh_open(ram=RAM(8 * BLKSIZE))
        view = np.ndarray(nblk * PER_BLK, np.float64, buffer=fileh.mmap(0, nblk))
        for _ in range(2):
            assert view.sum() == a[:].sum()
        deps = fileh.file.deps
        assert len(deps) <= 64          # at least 64 kept: see fileh_open
        a[3] = -1.0                     # blocks read long ago
        a[nblk * PER_BLK - 1] = -2.0    # and just now
        transaction.commit()
        tm.begin()
        assert view[3] == -1.0 and view[-1] == -2.0
        assert view.sum() == a[:].sum()
        fileh.close()
        tm.abort()
    finally:
        transaction.abort()
        db.close()
