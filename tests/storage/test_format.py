"""The persistence format: state layouts, block formats, storage growth."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import transaction
from BTrees.IOBTree import IOBTree
from BTrees.LOBTree import LOBTree

from tests.storage.conftest import BLKSIZE
from zbigarray.bigarray.array_zodb import ZBigArray
from zbigarray.storage import ZBigFile, open_db
from zbigarray.storage.file_zodb import ZBLK1_CHUNKSIZE, ZBlk0, ZBlk1, ZData


def test_module_paths_are_the_format() -> None:
    for cls in (ZBigFile, ZBlk0, ZBlk1, ZData):
        assert cls.__module__ == "zbigarray.storage.file_zodb"
    assert ZBigArray.__module__ == "zbigarray.bigarray.array_zodb"


def test_state_layouts() -> None:
    f = ZBigFile(BLKSIZE)
    blksize, blktab = f.__getstate__()
    assert blksize == BLKSIZE and isinstance(blktab, LOBTree)
    assert ZBlk0(b"ab").__getstate__() == b"ab"
    assert isinstance(ZBlk1().__getstate__(), IOBTree)
    assert ZData(b"x").__getstate__() == b"x"
    a = ZBigArray((3, 4), np.float32, order="F", blksize=BLKSIZE)
    st = a.__getstate__()
    assert st["shape"] == (3, 4) and st["dtype"] == np.float32 and st["order"] == "F"
    assert isinstance(st["zfile"], ZBigFile)


@pytest.mark.parametrize("blksize", [0, 100, -4096, 3 << 30])
def test_bad_blksize(blksize: int) -> None:
    with pytest.raises(ValueError, match="blksize"):
        ZBigFile(blksize)
    with pytest.raises(TypeError):
        ZBigFile(4096.0)  # type: ignore[arg-type]


def _write(db, fmt: str, monkeypatch: pytest.MonkeyPatch, values: dict[int, int]) -> ZBigFile:
    monkeypatch.setenv("ZBIGARRAY_ZBLK_FMT", fmt)
    root = db.open().root()
    a = root["a"]
    for i, v in values.items():
        a[i] = v
    transaction.commit()
    return a.zfile


def test_blocks_strip_trailing_zeros_and_zero_blocks_store_nothing(
        db, zblk_fmt: str) -> None:
    root = db.open().root()
    root["a"] = a = ZBigArray(4 * BLKSIZE, np.uint8, blksize=BLKSIZE)
    a[10] = 1                     # block 0: 11 bytes of data
    a[BLKSIZE + 5000] = 2         # block 1: second chunk only
    a[2 * BLKSIZE + 1] = 3
    transaction.commit()
    blktab = a.zfile.blktab
    assert sorted(blktab) == [0, 1, 2]
    if zblk_fmt == "ZBlk0":
        assert type(blktab[0]) is ZBlk0 and blktab[0].data == bytes(10) + b"\1"
        assert len(blktab[1].data) == 5001
    else:
        assert type(blktab[0]) is ZBlk1
        assert list(blktab[0].chunktab) == [0]
        assert blktab[0].chunktab[0].data == bytes(10) + b"\1"
        assert list(blktab[1].chunktab) == [ZBLK1_CHUNKSIZE]     # zero chunk absent
        assert len(blktab[1].chunktab[ZBLK1_CHUNKSIZE].data) == 5001 - ZBLK1_CHUNKSIZE
    a[2 * BLKSIZE + 1] = 0        # the block is all zeros again: a hole
    transaction.commit()
    assert sorted(blktab) == [0, 1]


def test_readers_read_both_formats_mixed_in_one_file(db, monkeypatch: pytest.MonkeyPatch) -> None:
    conn = db.open()
    conn.root()["a"] = ZBigArray(4 * BLKSIZE, np.uint8, blksize=BLKSIZE)
    transaction.commit()
    _write(db, "ZBlk0", monkeypatch, {1: 1, BLKSIZE + 1: 2})
    zfile = _write(db, "ZBlk1", monkeypatch, {BLKSIZE + 2: 3, 2 * BLKSIZE + 3: 4})
    assert [type(zfile.blktab[b]).__name__ for b in range(3)] == ["ZBlk0", "ZBlk1", "ZBlk1"]
    path = db.storage.getName()
    db.close()
    db2 = open_db(path)      # a fresh process's view: nothing cached
    try:
        a = db2.open().root()["a"]
        expect = np.zeros(4 * BLKSIZE, np.uint8)
        expect[[1, BLKSIZE + 1, BLKSIZE + 2, 2 * BLKSIZE + 3]] = [1, 2, 3, 4]
        np.testing.assert_array_equal(np.asarray(a), expect)
    finally:
        transaction.abort()
        db2.close()


def test_zblk1_rewrites_only_the_changed_chunk(db, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZBIGARRAY_ZBLK_FMT", "ZBlk1")
    root = db.open().root()
    root["a"] = a = ZBigArray(BLKSIZE, np.uint8, blksize=BLKSIZE)
    a[:] = 7
    transaction.commit()
    chunktab = a.zfile.blktab[0].chunktab
    serials = {off: z._p_serial for off, z in chunktab.items()}
    a[ZBLK1_CHUNKSIZE + 3] = 8
    transaction.commit()
    changed = [off for off, z in chunktab.items() if z._p_serial != serials[off]]
    assert changed == [ZBLK1_CHUNKSIZE]
    assert a.zfile.blktab[0]._p_serial != chunktab[ZBLK1_CHUNKSIZE]._p_serial


def test_bad_writer_format_is_a_clear_error(db, monkeypatch: pytest.MonkeyPatch) -> None:
    root = db.open().root()
    root["f"] = f = ZBigFile(BLKSIZE)
    transaction.commit()
    monkeypatch.setenv("ZBIGARRAY_ZBLK_FMT", "ZBlk9")
    with pytest.raises(ValueError, match="ZBIGARRAY_ZBLK_FMT='ZBlk9'"):
        f.fileh_open()


@pytest.mark.parametrize("fmt, lo, hi", [("ZBlk0", 2 << 20, (2 << 20) + (64 << 10)),
                                         ("ZBlk1", 4 << 10, 16 << 10)])
def test_one_element_change_in_1gib_array_stores_about_one_block_or_chunk(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str, lo: int, hi: int) -> None:
    monkeypatch.setenv("ZBIGARRAY_ZBLK_FMT", fmt)
    path = tmp_path / "big.fs"
    db = open_db(str(path))
    try:
        root = db.open().root()
        root["a"] = a = ZBigArray(1 << 30, np.uint8)     # all holes: costs nothing
        transaction.commit()
        assert os.path.getsize(path) < 64 << 10
        blk = 300
        a[blk * (2 << 20):(blk + 1) * (2 << 20)] = 1     # one full block
        transaction.commit()
        before = os.path.getsize(path)
        a[blk * (2 << 20) + 12345] = 2                  # one element of it
        transaction.commit()
        grown = os.path.getsize(path) - before
        assert lo <= grown < hi, grown
    finally:
        transaction.abort()
        db.close()
