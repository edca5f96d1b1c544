"""Readahead: a scan that walks a file forward asks a storage that prefetches
asynchronously (ZEO) for the next blocks' records before it loads them
(``Connection.prefetch``); random access asks for nothing; the RAM capacity
and the thread-safety rules hold with it on, over a real ZEO server; scans
through RelStorage (no block readahead) keep their snapshot too."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest
import transaction
import ZODB

from tests.common import run_in_child
from tests.storage.conftest import BLKSIZE, empty_relstorage, start_zeo, stop_zeo
from zbigarray.bigarray.array_zodb import ZBigArray
from zbigarray.bigfile import RAM
from zbigarray.storage import _readahead, open_db
from zbigarray.storage._readahead import RAM_SHARE
from zbigarray.storage.file_zodb import ZBigFile

NBLK = 40
PER = BLKSIZE // 8


class _Recording:
    """A storage (wrapping MappingStorage) that logs loads and prefetches
    in order: ``('load', oid)``, ``('ask', oid)``."""

    def __init__(self) -> None:
        from ZODB.MappingStorage import MappingStorage

        self._base = MappingStorage()
        self.log: list[tuple[str, bytes]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._base, name)

    def loadBefore(self, oid: bytes, tid: bytes) -> Any:
        self.log.append(("load", oid))
        return self._base.loadBefore(oid, tid)

    def prefetch(self, oids: Any, tid: bytes) -> None:
        self.log.extend(("ask", oid) for oid in oids)

    def asked(self) -> list[bytes]:
        return [oid for what, oid in self.log if what == "ask"]


@pytest.fixture
def recorded(zblk_fmt: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A database over a :class:`_Recording` storage holding a ZBigFile of
    `NBLK` non-zero blocks, and the oids of its block objects.  Readahead
    counts the storage as one that prefetches asynchronously, like ZEO."""
    monkeypatch.setattr(_readahead, "ASYNC_PREFETCH", (_Recording,))
    storage = _Recording()
    db = ZODB.DB(storage)
    conn = db.open()
    conn.root()["f"] = zfile = ZBigFile(BLKSIZE)
    for blk in range(NBLK):
        zfile.storeblkdata(blk, memoryview(np.full(PER, blk + 1.0).tobytes()))
    transaction.commit()
    oids = [zfile.blktab[blk]._p_oid for blk in range(NBLK)]
    conn.cacheMinimize()            # block objects ghosts: read from the storage
    conn.close()
    yield db, storage, oids
    transaction.abort()
    db.close()


def _touch(db: ZODB.DB, order: list[int], ram_blocks: int = 64) -> None:
    """Read blocks in `order` through a fresh handle, checking each."""
    conn = db.open()
    fileh = conn.root()["f"].fileh_open(ram=RAM(ram_blocks * BLKSIZE))
    vma = fileh.mmap(0, NBLK)
    mem = np.frombuffer(vma, np.float64)
    for blk in order:
        assert mem[blk * PER] == blk + 1.0
    del mem
    vma.close()
    fileh.close()
    conn.close()


def test_a_forward_scan_asks_for_each_block_once_before_loading_it(recorded: Any) -> None:
    db, storage, oids = recorded
    storage.log.clear()
    _touch(db, list(range(NBLK)))
    blocks = set(oids)
    log = [(what, oid) for what, oid in storage.log if oid in blocks]   # not ZBlk1's chunks
    asked = [oid for what, oid in log if what == "ask"]
    # From the second block of the run on, every later block was asked for
    # once, in batches, each before its load.
    assert sorted(asked) == sorted(oids[2:])
    assert len(asked) == len(set(asked))
    batches = sum(1 for i, (what, _) in enumerate(log)
                  if what == "ask" and (i == 0 or log[i - 1][0] != "ask"))
    assert batches <= NBLK // 2
    for oid in oids[2:]:
        assert log.index(("ask", oid)) < log.index(("load", oid))


def test_random_and_backward_access_ask_for_nothing(recorded: Any, zblk_fmt: str) -> None:
    db, storage, oids = recorded
    rng = np.random.default_rng(5)
    while True:
        order = [int(b) for b in rng.permutation(NBLK)]
        if all(b + 1 != c for b, c in zip(order, order[1:])):
            break
    storage.log.clear()
    _touch(db, order)
    _touch(db, list(reversed(range(NBLK))))
    assert not set(storage.asked()) & set(oids)


def test_a_ram_of_few_blocks_turns_readahead_off(recorded: Any) -> None:
    db, storage, oids = recorded
    storage.log.clear()
    _touch(db, list(range(NBLK)), ram_blocks=2 * RAM_SHARE - 1)
    assert not set(storage.asked()) & set(oids)
    _touch(db, list(range(NBLK)), ram_blocks=2 * RAM_SHARE)
    assert set(storage.asked()) & set(oids)


def test_a_zblk1_block_asks_for_all_its_chunks_first(recorded: Any, zblk_fmt: str) -> None:
    if zblk_fmt != "ZBlk1":
        pytest.skip("ZBlk0 blocks have no chunks")
    db, storage, _ = recorded
    conn = db.open()
    zblk = conn.root()["f"].blktab[7]
    chunks = [z._p_oid for z in zblk.chunktab.values()]
    conn.cacheMinimize()
    conn.close()
    storage.log.clear()
    _touch(db, [7])
    assert set(storage.asked()) == set(chunks)
    for oid in chunks:
        assert storage.log.index(("ask", oid)) < storage.log.index(("load", oid))


def test_storages_that_prefetch_in_the_caller_are_not_asked_ahead(
        recorded: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """RelStorage's prefetch loads in the calling thread into a cache that
    keeps no big record: asking ahead for blocks would load them twice."""
    db, storage, oids = recorded
    monkeypatch.setattr(_readahead, "ASYNC_PREFETCH", ())
    storage.log.clear()
    _touch(db, list(range(NBLK)))
    assert not set(storage.asked()) & set(oids)


def test_no_readahead_in_savepoint_storage_and_back_after(recorded: Any) -> None:
    """After a savepoint the connection reads through ZODB's TmpStore, which
    cannot prefetch (and ``Connection.prefetch`` would turn itself off for
    good): nothing is asked then, and the next transaction asks again."""
    db, storage, oids = recorded
    conn = db.open()
    zfile = conn.root()["f"]
    fileh = zfile.fileh_open(ram=RAM(64 * BLKSIZE))
    vma = fileh.mmap(0, NBLK)
    mem = np.frombuffer(vma, np.float64)
    conn.root()["x"] = 1
    transaction.savepoint()
    storage.log.clear()
    assert [mem[b * PER] for b in range(NBLK // 2)] == [b + 1.0 for b in range(NBLK // 2)]
    assert storage.asked() == []
    transaction.abort()
    assert [mem[b * PER] for b in range(NBLK // 2, NBLK)] == \
        [b + 1.0 for b in range(NBLK // 2, NBLK)]
    assert set(storage.asked()) & set(oids[NBLK // 2:])
    del mem
    vma.close()
    fileh.close()
    conn.close()


# ------------------------------------------------------------ real servers

def _fill(uri: str, n: int) -> np.ndarray:
    db = open_db(uri)
    try:
        db.open().root()["A"] = a = ZBigArray(n, np.float64, blksize=BLKSIZE)
        want = np.arange(n, dtype=np.float64)
        a[:] = want
        transaction.commit()
    finally:
        db.close()
    return want


def _scan_snapshot(uri: str, want: np.ndarray) -> None:
    """Scan in slices while another client rewrites every block halfway:
    the scan sums its own snapshot, the next transaction the new one; the
    RAM never holds more than its capacity."""
    db = open_db(uri)
    tm = transaction.TransactionManager()
    try:
        a = db.open(tm).root()["A"]
        tm.begin()
        ram = a._fileh.ram
        nblk = len(want) // PER
        half = nblk // 2
        s = 0.0
        for b in range(half):
            s += float(a[b * PER:(b + 1) * PER].sum())
            assert ram.stats()["used"] <= ram.capacity
        other = db.open()
        other.root()["A"][:] = -want
        transaction.commit()
        other.close()
        for b in range(half, nblk):
            s += float(a[b * PER:(b + 1) * PER].sum())
            assert ram.stats()["used"] <= ram.capacity
        assert s == float(want.sum())
        last = db.lastTransaction()
        tm.begin()
        while a._p_jar._storage.lastTransaction() < last:   # ZEO: the invalidation in flight
            tm.begin()
        assert float(np.asarray(a).sum()) == -float(want.sum())
    finally:
        tm.abort()
        db.close()


@pytest.mark.zeo
def test_zeo_scan_reads_its_snapshot_with_readahead(zeo_server: str, zblk_fmt: str) -> None:
    uri = f"zeo://{zeo_server}"
    _scan_snapshot(uri, _fill(uri, 64 * PER))


@pytest.mark.relstorage
def test_relstorage_scan_reads_its_snapshot(postgres_server: str, zblk_fmt: str) -> None:
    """No readahead of blocks here, but ZBlk1's chunks are prefetched."""
    uri = empty_relstorage(postgres_server)
    _scan_snapshot(uri, _fill(uri, 64 * PER))


def threads_scan_through_zeo(tmpdir: str) -> None:
    """8 threads scan one connection's array at once, each forward from its
    own start, 10 rounds with ``cacheMinimize`` between: exact sums."""
    from pathlib import Path

    from zbigarray.bigfile import ram_default

    server, addr = start_zeo(Path(tmpdir) / "zeo.fs")
    try:
        uri = f"zeo://{addr}"
        nblk = 48
        want = _fill(uri, nblk * PER)
        ram_default().capacity = 16 * BLKSIZE           # readahead on: 4 blocks ahead
        db = open_db(uri)
        conn = db.open()
        a = conn.root()["A"]
        errors: list[BaseException] = []

        def scan(start: int) -> None:
            try:
                for k in range(nblk):
                    b = (start + k) % nblk
                    got = float(a[b * PER:(b + 1) * PER].sum())
                    assert got == float(want[b * PER:(b + 1) * PER].sum()), b
            except BaseException as e:      # noqa: BLE001 - reported below
                errors.append(e)

        for _ in range(10):
            threads = [threading.Thread(target=scan, args=(6 * i,)) for i in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert not errors, errors
            conn.cacheMinimize()
        db.close()
    finally:
        stop_zeo(server)


@pytest.mark.zeo
@pytest.mark.subprocess
def test_threads_scanning_through_zeo_with_readahead(tmp_path: Any) -> None:
    run_in_child(threads_scan_through_zeo, str(tmp_path), timeout=120)
