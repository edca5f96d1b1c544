"""Smoke test of the Cython layer end to end: a Python BigFile, mmap, NumPy
reads and writes, writeout, and BigFile_File.  The detailed contract is in the
other tests of this folder."""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np

from tests.common import PAGESIZE
from zbigarray.bigfile import (RAM, WRITEOUT_MARKSTORED, WRITEOUT_STORE, BigFile,
                               BigFileH, VMA)
from zbigarray.bigfile.file_file import BigFile_File

BOTH = WRITEOUT_STORE | WRITEOUT_MARKSTORED


class ByteFile(BigFile):
    """Block ``blk`` reads as bytes ``blk+1``; stores are recorded."""

    def __init__(self, blksize: int) -> None:
        self.loaded: list[int] = []
        self.stored: list[tuple[int, bytes, bool]] = []

    def loadblk(self, blk: int, buf: memoryview) -> None:
        self.loaded.append(blk)
        np.frombuffer(buf, np.uint8).fill(blk + 1)

    def storeblk(self, blk: int, buf: memoryview) -> None:
        self.stored.append((blk, bytes(buf), buf.readonly))


def test_python_bigfile_maps_reads_and_writes_out() -> None:
    f = ByteFile(PAGESIZE)
    with f.fileh_open(ram=RAM("16M")) as fileh:
        assert isinstance(fileh, BigFileH) and fileh.file is f
        vma = fileh.mmap(2, 3)
        assert isinstance(vma, VMA)
        assert vma.filerange() == (2, 3) and vma.pagesize() == PAGESIZE
        assert vma.addr_stop - vma.addr_start == 3 * PAGESIZE
        a = np.frombuffer(vma, np.uint8)
        assert a[0] == 3 and a[-1] == 5          # blocks 2 and 4
        assert f.loaded == [2, 4]                # loaded lazily, on touch
        assert not fileh.isdirty()

        a[PAGESIZE + 7] = 42                     # block 3: loaded, then dirty
        assert fileh.isdirty()
        fileh.dirty_writeout(BOTH)
        want = bytearray([4]) * PAGESIZE
        want[7] = 42
        assert f.stored == [(3, bytes(want), True)]
        assert not fileh.isdirty()
        assert fileh.stats()["nstoreblk"] == 1
    assert fileh.closed and vma.closed


def test_bigfile_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "data"
    path.write_bytes(b"\x01" * 10)
    with BigFile_File(path, PAGESIZE) as f:
        with f.fileh_open() as fileh:
            a = np.ndarray((2, PAGESIZE), np.uint8, buffer=fileh.mmap(0, 2))
            assert a[0, 9] == 1 and a[0, 10] == 0 and a[1].sum() == 0
            a[1, :3] = [7, 8, 9]
            fileh.dirty_writeout(BOTH)
    data = path.read_bytes()
    assert data == b"\x01" * 10 + bytes(PAGESIZE - 10) + b"\x07\x08\x09" + bytes(PAGESIZE - 3)
    with BigFile_File(path, PAGESIZE) as f, f.fileh_open() as fileh:
        assert bytes(memoryview(fileh.mmap(1, 1))[:4]) == b"\x07\x08\x09\x00"


def test_cycles_through_file_handle_and_mapping_are_collected() -> None:
    """The core's hidden references (file <- open handle <- VMA) are reported
    to the garbage collector, so such cycles free their page memory."""
    ram = RAM("1M")
    f = ByteFile(PAGESIZE)
    fileh = f.fileh_open(ram=ram)
    vma = fileh.mmap(0, 2)
    memoryview(vma)[0] = 1                       # one dirty page
    f.fileh, f.vma, vma.pyuser = fileh, vma, (vma, f)
    del f, fileh, vma
    gc.collect()
    assert ram.stats()["npages"] == 0
