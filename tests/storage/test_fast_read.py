"""Block data read from records below the object layer (``_records``) is
exactly what the object path reads, in every case of issue 4: the
connection's MVCC snapshot, blocks changed in the current transaction
(spilled into ZODB's savepoint storage), invalidation, ZBlk0 and ZBlk1 mixed
in one file, holes and trailing zeros."""

from __future__ import annotations

import os
import pickle
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

import numpy as np
import pytest
import transaction
import ZODB
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ZODB.Connection import Connection, TransactionMetaData
from ZODB.FileStorage import FileStorage

from zbigarray.bigfile import RAM, loadblk_buf_zeroed
from zbigarray.storage import _records
from zbigarray.storage.file_zodb import ZBLK1_CHUNKSIZE, ZBigFile, ZBlk0, ZData

BLK = 4 * ZBLK1_CHUNKSIZE
NCHUNK = BLK // ZBLK1_CHUNKSIZE
DATA = b"\x01\x02\x03zbigarray"


# ------------------------------------------------------------ record parsing

def _record(cls: type, state: Any, protocol: int) -> bytes:
    return _records.classmeta(cls) + pickle.dumps(state, protocol=protocol)


@pytest.mark.parametrize("protocol", [3, 4, 5])
@pytest.mark.parametrize("data", [b"", DATA, bytes(range(256)) * 1024],
                         ids=["empty", "short", "256KiB"])
def test_bytes_state_is_the_pickled_bytes(protocol: int, data: bytes) -> None:
    """Every way a pickle protocol from 3 on writes one ``bytes`` (short,
    long, in a frame or not, any memo opcode)."""
    view = _records.bytes_state(_record(ZBlk0, data, protocol), _records.classmeta(ZBlk0))
    assert view is not None and bytes(view) == data


def test_bytes_state_of_zodbs_own_record() -> None:
    from ZODB.serialize import ObjectWriter

    record = ObjectWriter().serialize(ZData(DATA))
    view = _records.bytes_state(record, _records.classmeta(ZData))
    assert view is not None and bytes(view) == DATA


@pytest.mark.parametrize("record", [
    pytest.param(_record(ZBlk0, DATA, 2), id="protocol-2"),          # not BINBYTES
    pytest.param(_record(ZBlk0, DATA.decode("latin-1"), 3), id="str"),
    pytest.param(_record(ZBlk0, (DATA,), 3), id="tuple"),
    pytest.param(_record(ZData, DATA, 3), id="other-class"),
    pytest.param(_record(ZBlk0, DATA, 3)[:-1], id="truncated"),
    pytest.param(_record(ZBlk0, DATA, 3) + b".", id="trailing"),
    pytest.param(_records.classmeta(ZBlk0), id="no-state"),
])
def test_bytes_state_refuses_other_records(record: bytes) -> None:
    """Anything else is left to the unpickler (None)."""
    assert _records.bytes_state(record, _records.classmeta(ZBlk0)) is None


# ------------------------------------------------------------ fast == object path

@contextmanager
def _fmt(name: str) -> Iterator[None]:
    saved = os.environ.get("ZBIGARRAY_ZBLK_FMT")
    os.environ["ZBIGARRAY_ZBLK_FMT"] = name
    try:
        yield
    finally:
        if saved is None:
            del os.environ["ZBIGARRAY_ZBLK_FMT"]
        else:
            os.environ["ZBIGARRAY_ZBLK_FMT"] = saved


def _content(spec: tuple[int, int, int]) -> bytes:
    """A block: `n` random non-zero bytes, zeros after them, and the chunks
    of bit mask `zmask` zeroed (ZBlk1 leaves them out)."""
    n, seed, zmask = spec
    b = np.zeros(BLK, np.uint8)
    b[:n] = np.random.default_rng(seed).integers(1, 256, n, dtype=np.uint8)
    for c in range(NCHUNK):
        if zmask >> c & 1:
            b[c * ZBLK1_CHUNKSIZE:(c + 1) * ZBLK1_CHUNKSIZE] = 0
    return b.tobytes()


contents = st.tuples(st.sampled_from([0, 1, 100, ZBLK1_CHUNKSIZE, BLK - 1, BLK]),
                     st.integers(0, 2**16), st.integers(0, 2**NCHUNK - 1))
NBLK = 5
blocks = st.lists(st.integers(0, NBLK - 1), max_size=2 * NBLK)


def _store(zfile: ZBigFile, blks: dict[int, tuple[bytes, str]]) -> None:
    for blk, (data, fmt) in blks.items():
        with _fmt(fmt):
            zfile.storeblkdata(blk, memoryview(data))


def _scenario(db: ZODB.DB, initial: dict[int, tuple[bytes, str]],
              changed: dict[int, tuple[bytes, str]], order1: list[int], order2: list[int],
              written: dict[int, bytes]) -> list[tuple[int, bytes]]:
    """What a reader sees, block by block: a snapshot read before and after
    another connection commits `changed`, the reader's own (spilled) writes
    `written`, and the new snapshot after its abort."""
    tw, tr = transaction.TransactionManager(), transaction.TransactionManager()
    cw = db.open(tw)
    cw.root()["f"] = zw = ZBigFile(BLK)
    _store(zw, initial)
    tw.commit()
    cr = db.open(tr)
    tr.begin()
    fileh = cr.root()["f"].fileh_open(ram=RAM(2 * BLK))     # 2 pages: reloads, spills
    vma = fileh.mmap(0, NBLK)
    mem = np.frombuffer(vma, np.uint8)
    seen: list[tuple[int, bytes]] = []

    def read(order: list[int]) -> None:
        for blk in order:
            seen.append((blk, mem[blk * BLK:(blk + 1) * BLK].tobytes()))

    read(order1)
    _store(zw, changed)
    tw.commit()
    read(order2 + list(range(NBLK)))            # still the first snapshot
    with _fmt("ZBlk0"):
        for blk, data in written.items():
            mem[blk * BLK:(blk + 1) * BLK] = np.frombuffer(data, np.uint8)
        read(list(range(NBLK)))                 # spilled blocks from the savepoint storage
    tr.abort()
    tr.begin()
    read(order1 + list(range(NBLK)))            # the new snapshot
    del mem
    vma.close()
    fileh.close()
    cr.close()
    cw.close()
    return seen


def _expected(initial: dict[int, tuple[bytes, str]], changed: dict[int, tuple[bytes, str]],
              order1: list[int], order2: list[int],
              written: dict[int, bytes]) -> list[tuple[int, bytes]]:
    zero = bytes(BLK)
    first = {b: d for b, (d, _) in initial.items()}
    second = {**first, **{b: d for b, (d, _) in changed.items()}}
    mine = {**first, **written}
    every = list(range(NBLK))
    return ([(b, first.get(b, zero)) for b in order1 + order2 + every]
            + [(b, mine.get(b, zero)) for b in every]
            + [(b, second.get(b, zero)) for b in order1 + every])


def _open(kind: str, tmp: str) -> ZODB.DB:
    return ZODB.DB(None if kind == "memory" else FileStorage(os.path.join(tmp, "d.fs")))


fmts = st.sampled_from(["ZBlk0", "ZBlk1"])
block_map = st.dictionaries(st.integers(0, NBLK - 1), st.tuples(contents, fmts), max_size=NBLK)


@pytest.mark.parametrize("kind", ["memory", "file"])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(initial=block_map, changed=block_map, order1=blocks, order2=blocks,
       written=st.dictionaries(st.integers(0, NBLK - 1), contents, max_size=4))
def test_fast_path_reads_what_the_object_path_reads(kind: str, initial: Any, changed: Any,
                                                    order1: list[int], order2: list[int],
                                                    written: Any) -> None:
    """The same scenario read through records and through objects: both
    see what the model says, and records were really read."""
    initial = {b: (_content(c), f) for b, (c, f) in initial.items()}
    changed = {b: (_content(c), f) for b, (c, f) in changed.items()}
    written = {b: _content(c) for b, c in written.items()}
    want = _expected(initial, changed, order1, order2, written)
    hits: list[str] = []
    real_of, real_into = _records.bytes_state_of, _records.bytes_state_into

    def counted_of(obj: Any) -> Any:
        view = real_of(obj)
        if view is not None:
            hits.append("of")
        return view

    def counted_into(obj: Any, buf: memoryview) -> Any:
        n = real_into(obj, buf)
        if n is not None:
            hits.append("into")
        return n

    with tempfile.TemporaryDirectory() as tmp, \
            mock.patch.object(_records, "bytes_state_of", counted_of), \
            mock.patch.object(_records, "bytes_state_into", counted_into):
        db = _open(kind, tmp)
        try:
            fast = _scenario(db, initial, changed, order1, order2, written)
        finally:
            db.close()
    with tempfile.TemporaryDirectory() as tmp, \
            mock.patch.object(_records, "bytes_state_of", lambda obj: None), \
            mock.patch.object(_records, "bytes_state_into", lambda obj, buf: None):
        db = _open(kind, tmp)
        try:
            slow = _scenario(db, initial, changed, order1, order2, written)
        finally:
            db.close()
    assert fast == want, [i for i, (f, w) in enumerate(zip(fast, want)) if f != w]
    assert slow == want, [i for i, (f, w) in enumerate(zip(slow, want)) if f != w]
    if any(any(d) for d, f in initial.values() if f == "ZBlk0"):
        # FileStorage's ZBlk0 blocks are read by preadv, others from records.
        assert ("into" if kind == "file" else "of") in hits
    if any(any(d) for d, _ in initial.values()):
        assert hits


# ------------------------------------------------------------ what takes the object path

FIRST = _content((BLK, 1, 0))


@pytest.fixture
def one_block() -> Iterator[tuple[Connection, ZBigFile, Any]]:
    """A connection to an in-memory database, its ZBigFile of one committed
    block `FIRST`, and that block's object."""
    db = ZODB.DB(None)
    conn = db.open()
    conn.root()["f"] = zfile = ZBigFile(BLK)
    zfile.storeblkdata(0, memoryview(FIRST))
    transaction.commit()
    yield conn, zfile, zfile.blktab[0]
    transaction.abort()
    db.close()


def test_objects_with_state_in_memory_are_read_through_the_object(one_block: Any) -> None:
    """A block object changed in this transaction (not through pages) is
    read with its change, and one loaded already costs no record read."""
    _, zfile, zblk = one_block
    zblk.data = DATA                         # changed, not stored
    buf = bytearray(BLK)
    assert _records.bytes_state_of(zblk) is None
    zfile.loadblkdata(0, memoryview(buf), [], [])
    assert bytes(buf) == DATA + bytes(BLK - len(DATA))
    transaction.abort()
    zblk._p_activate()                       # loaded, unchanged
    assert zblk._p_status == "saved" and _records.bytes_state_of(zblk) is None
    zblk._p_deactivate()
    view = _records.bytes_state_of(zblk)     # a ghost again: its record
    assert view is not None and bytes(view) == FIRST
    assert zblk._p_status == "ghost"


def test_savepoint_storage_is_read_for_ghosts_changed_in_this_transaction(
        one_block: Any) -> None:
    """After a savepoint the connection's storage is ZODB's TmpStore: a block
    object changed, saved there and ghosted is read back with the change."""
    _, _, zblk = one_block
    zblk.data = DATA
    transaction.savepoint()
    zblk._p_deactivate()
    assert zblk._p_status == "ghost"
    view = _records.bytes_state_of(zblk)
    assert view is not None and bytes(view) == DATA


def test_objects_outside_an_open_connection_take_the_object_path(one_block: Any) -> None:
    conn, _, zblk = one_block
    assert _records.bytes_state_of(ZBlk0(DATA)) is None
    zblk._p_deactivate()
    conn.close()
    assert _records.bytes_state_of(zblk) is None        # closed: the object path says so


# ------------------------------------------------------------ FileStorage, read by preadv

@pytest.fixture
def fs_block(tmp_path: Any) -> Iterator[tuple[ZODB.DB, Connection, ZBigFile]]:
    """A FileStorage database, a connection, and its ZBigFile of one
    committed block `FIRST`."""
    db = ZODB.DB(FileStorage(str(tmp_path / "d.fs")))
    conn = db.open()
    conn.root()["f"] = zfile = ZBigFile(BLK)
    zfile.storeblkdata(0, memoryview(FIRST))
    transaction.commit()
    yield db, conn, zfile
    transaction.abort()
    db.close()


def _read_into(zblk: Any) -> tuple[int | None, bytes]:
    zblk._p_deactivate()
    buf = bytearray(BLK)
    n = _records.bytes_state_into(zblk, memoryview(buf))
    return n, bytes(buf)


def test_filestorage_record_is_read_into_the_buffer_at_the_snapshot(fs_block: Any) -> None:
    """The snapshot's revision, not the newest: another connection's commit
    is seen only after this one's next transaction boundary."""
    db, conn, zfile = fs_block
    n, got = _read_into(zfile.blktab[0])
    assert n == BLK and got == FIRST
    tm = transaction.TransactionManager()
    other = db.open(tm)
    other.root()["f"].storeblkdata(0, memoryview(DATA + bytes(BLK - len(DATA))))
    tm.commit()
    n, got = _read_into(zfile.blktab[0])
    assert n == BLK and got == FIRST                 # still our snapshot
    transaction.abort()                             # a new one: the change
    n, got = _read_into(zfile.blktab[0])
    assert n == len(DATA) and got[:n] == DATA
    other.close()


def test_filestorage_back_pointers_and_other_records_take_the_object_path(
        fs_block: Any) -> None:
    """An undo leaves a record that points back at an older one; a record
    pickled otherwise, or too big for the buffer, is not read by preadv:
    None, and the object path reads it (or says what is wrong)."""
    db, conn, zfile = fs_block
    zblk = zfile.blktab[0]
    zblk.data = DATA
    transaction.commit()
    undo = db.undoLog(0, 1)[0]["id"]
    db.undo(undo)
    transaction.commit()
    transaction.abort()
    assert _read_into(zblk)[0] is None               # a back pointer
    buf = bytearray(BLK)
    zfile.loadblkdata(0, memoryview(buf), [], [])
    assert bytes(buf) == FIRST                       # the object path: undone
    zblk._p_deactivate()
    assert _records.bytes_state_into(zblk, memoryview(bytearray(BLK - 1))) is None
    with pytest.raises(ValueError, match="do not fit"):
        zblk._p_deactivate()
        ZBlk0.loadblkdata(zblk, memoryview(bytearray(BLK - 1)), [])
    # A record of protocol 2: no BINBYTES.
    storage = db.storage
    t = TransactionMetaData()
    storage.tpc_begin(t)
    storage.store(zblk._p_oid, storage.load(zblk._p_oid)[1],
                  _records.classmeta(ZBlk0) + pickle.dumps(DATA, protocol=2), "", t)
    storage.tpc_vote(t)
    storage.tpc_finish(t)
    transaction.abort()
    assert _read_into(zblk)[0] is None
    zblk._p_deactivate()
    buf = bytearray(BLK)
    zfile.loadblkdata(0, memoryview(buf), [], [])
    assert bytes(buf) == DATA + bytes(BLK - len(DATA))


def test_filestorage_reads_stay_right_while_it_packs(tmp_path: Any) -> None:
    """Packing rewrites the file and moves every record; reads by preadv
    hold a file of the storage's pool as loads do, so they never see a
    record's old place in the new file.  Bounded: 2 s of packing."""
    import threading
    import time

    nblk = 16
    db = ZODB.DB(FileStorage(str(tmp_path / "d.fs")))
    try:
        conn = db.open()
        conn.root()["f"] = zfile = ZBigFile(BLK)
        for version in range(3):                     # old revisions to pack away
            for blk in range(nblk):
                zfile.storeblkdata(blk, memoryview(_content((BLK, blk * 10 + version, 0))))
            transaction.commit()
        want = [_content((BLK, blk * 10 + 2, 0)) for blk in range(nblk)]
        stop = time.monotonic() + 2
        errors: list[BaseException] = []

        def packing() -> None:
            try:
                while time.monotonic() < stop:
                    db.pack()
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        packer = threading.Thread(target=packing)
        packer.start()
        reads = 0
        buf = bytearray(BLK)
        while time.monotonic() < stop:
            transaction.abort()
            for blk in range(nblk):
                zblk = zfile.blktab[blk]
                zblk._p_deactivate()
                zfile.loadblkdata(blk, memoryview(buf), [], [])
                assert bytes(buf) == want[blk], blk
                reads += 1
        packer.join()
        assert not errors and reads > nblk
    finally:
        transaction.abort()
        db.close()


@pytest.mark.parametrize("fmt", ["ZBlk0", "ZBlk1"])
def test_blocks_loaded_into_zeroed_memory_leave_their_zeros_unwritten(fmt: str) -> None:
    """Pages of 2 MiB blocks take slots prepared with zeros (the first scan
    of a file): holes, the zeros after a short record and ZBlk1's missing
    chunks are not written again, and every block reads as stored."""
    big = 2 << 20
    nblk = 24
    rng = np.random.default_rng(7)
    want = np.zeros((nblk, big), np.uint8)
    for blk in range(nblk):
        kind = blk % 4                  # 0: a hole
        if kind == 1:                   # a short record: zeros after it
            want[blk, :1000] = rng.integers(1, 256, 1000, dtype=np.uint8)
        elif kind == 2:                 # chunks apart: ZBlk1 stores two
            want[blk, :10] = 1
            want[blk, big // 2:big // 2 + ZBLK1_CHUNKSIZE] = 2
        elif kind == 3:
            want[blk] = rng.integers(1, 256, big, dtype=np.uint8)
    db = ZODB.DB(None)
    try:
        conn = db.open()
        conn.root()["f"] = zfile = ZBigFile(big)
        with _fmt(fmt):
            for blk in range(nblk):
                if want[blk].any():
                    zfile.storeblkdata(blk, memoryview(want[blk]))
        transaction.commit()
        reader = db.open(transaction.TransactionManager())
        ram = RAM(1 << 30)
        fileh = reader.root()["f"].fileh_open(ram=ram)
        told: list[bool] = []

        def noting(buf: memoryview) -> bool:
            told.append(loadblk_buf_zeroed(buf))
            return told[-1]

        with mock.patch("zbigarray.bigfile._blkbuf.loadblk_buf_zeroed", noting):
            got = np.frombuffer(fileh.mmap(0, nblk), np.uint8).reshape(nblk, big)
            for blk in range(nblk):
                assert np.array_equal(got[blk], want[blk]), blk
        # Asked once or more per block (each range of zeros); every block
        # but the first few took a prepared slot.
        assert len(told) >= nblk
        assert sum(told) >= ram.stats()["nprepared"] > nblk // 2
        del got
        fileh.close()
        reader.close()
    finally:
        db.close()



def test_a_load_retried_after_a_disconnect_writes_its_zeros_again() -> None:
    """A try that failed part-way (the server gone) left bytes in memory
    that held only zeros; the retry's holes and tails must read zeros."""
    from ZEO.Exceptions import ClientDisconnected

    big = 2 << 20
    db = ZODB.DB(None)
    try:
        conn = db.open()
        conn.root()["f"] = zfile = ZBigFile(big)
        short = np.zeros(big, np.uint8)
        short[:100] = 9
        for blk in range(8):
            zfile.storeblkdata(blk, memoryview(short))
        transaction.commit()
        reader = db.open(transaction.TransactionManager())
        ram = RAM(1 << 30)
        fileh = reader.root()["f"].fileh_open(ram=ram)
        real = ZBlk0.loadblkdata
        failed: list[bool] = []

        def once_torn(self: ZBlk0, buf: memoryview, deps: list[Any]) -> None:
            if loadblk_buf_zeroed(buf) and not failed:
                failed.append(True)
                np.frombuffer(buf, np.uint8)[:] = 0xEE    # a torn try
                raise ClientDisconnected("server gone")
            real(self, buf, deps)

        with mock.patch.object(ZBlk0, "loadblkdata", once_torn):
            got = np.frombuffer(fileh.mmap(0, 8), np.uint8).reshape(8, big)
            for blk in range(8):
                assert np.array_equal(got[blk], short), blk
        assert failed
        del got
        fileh.close()
        reader.close()
    finally:
        db.close()
