"""The zero-copy path: clean pages of BigFile_File mapped from the OS page cache.

A BigFile with ``mmap_fd`` set has its clean pages mapped straight from that
file (no loadblk, no copy, no RAM slot); the first write loads the block into
RAM through loadblk and the page then behaves like any other.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from zbigarray.bigfile import RAM, WRITEOUT_MARKSTORED, WRITEOUT_STORE, BigFile
from zbigarray.bigfile.file_file import BigFile_File

PAGESIZE = os.sysconf("SC_PAGESIZE")
BLK = 4 * PAGESIZE


class CountingFile(BigFile_File):
    """BigFile_File that counts loadblk calls."""

    def __init__(self, path: str, blksize: int, **kw: bool) -> None:
        super().__init__(path, blksize, **kw)
        self.nload = 0

    def loadblk(self, blk: int, buf: memoryview) -> None:
        self.nload += 1
        super().loadblk(blk, buf)


def _make_file(path: Path, nblk: int) -> None:
    """Block b holds bytes equal to b + 1."""
    with open(path, "wb") as f:
        for b in range(nblk):
            f.write(bytes([b + 1]) * BLK)


def test_clean_pages_map_the_file_without_loadblk(tmp_path: Path) -> None:
    path = tmp_path / "f"
    _make_file(path, 8)
    f = CountingFile(str(path), BLK)
    f.fault_around = 0  # counts loads: no loading ahead (fault-around)
    ram = RAM(64 * BLK)
    with f.fileh_open(ram=ram) as fileh:
        a = np.frombuffer(fileh.mmap(0, 10), np.uint8)
        for b in range(8):
            assert a[b * BLK] == b + 1 and a[(b + 1) * BLK - 1] == b + 1
        assert f.nload == 0
        assert ram.stats()["direct"] == 8 * BLK
        assert ram.stats()["used"] == 0
        # past the end of the file: loadblk, zeros
        assert a[8 * BLK] == 0 and a[10 * BLK - 1] == 0
        assert f.nload == 2
        del a
    assert ram.stats()["direct"] == 0


def test_write_goes_to_ram_and_writeout_stores_it(tmp_path: Path) -> None:
    path = tmp_path / "f"
    _make_file(path, 4)
    f = CountingFile(str(path), BLK)
    with f.fileh_open(ram=RAM(64 * BLK)) as fileh:
        a = np.frombuffer(fileh.mmap(0, 4), np.uint8)
        b = np.frombuffer(fileh.mmap(0, 4), np.uint8)
        assert a[BLK] == 2 and b[BLK] == 2
        a[BLK + 7] = 0xAA
        assert f.nload == 1                 # the first write loads the block
        assert fileh.isdirty()
        assert b[BLK + 7] == 0xAA           # every mapping sees the RAM copy
        assert path.read_bytes()[BLK + 7] == 2   # the file is untouched so far
        fileh.dirty_writeout(WRITEOUT_STORE | WRITEOUT_MARKSTORED)
        assert path.read_bytes()[BLK + 7] == 0xAA
        a[2 * BLK] = 9                      # another block: dirty, then discarded
        fileh.dirty_discard()
        assert a[2 * BLK] == 3              # the file again


def test_clean_pages_show_changes_of_the_file_like_memmap(tmp_path: Path) -> None:
    path = tmp_path / "f"
    _make_file(path, 2)
    f = BigFile_File(str(path), BLK)
    with f.fileh_open(ram=RAM(64 * BLK)) as fileh:
        a = np.frombuffer(fileh.mmap(0, 2), np.uint8)
        assert a[5] == 1
        fd = os.open(path, os.O_WRONLY)
        try:
            os.pwrite(fd, b"\x77", 5)
        finally:
            os.close(fd)
        assert a[5] == 0x77


def test_without_zero_copy_every_block_is_loaded(tmp_path: Path) -> None:
    path = tmp_path / "f"
    _make_file(path, 3)
    f = CountingFile(str(path), BLK, zero_copy=False)
    assert f.mmap_fd is None
    ram = RAM(64 * BLK)
    with f.fileh_open(ram=ram) as fileh:
        a = np.frombuffer(fileh.mmap(0, 3), np.uint8)
        assert [a[b * BLK] for b in range(3)] == [1, 2, 3]
        assert f.nload == 3
        assert ram.stats()["direct"] == 0


def test_direct_pages_count_against_capacity(tmp_path: Path) -> None:
    nblk = 64
    path = tmp_path / "f"
    _make_file(path, nblk)
    f = CountingFile(str(path), BLK)
    ram = RAM(4 * BLK)
    with f.fileh_open(ram=ram) as fileh:
        a = np.frombuffer(fileh.mmap(0, nblk), np.uint8)
        for b in range(nblk):
            assert a[b * BLK + 3] == (b + 1) & 0xFF
            st = ram.stats()
            assert st["direct"] + st["used"] <= 4 * BLK
        assert f.nload == 0


def test_closing_the_file_turns_zero_copy_off(tmp_path: Path) -> None:
    path = tmp_path / "f"
    _make_file(path, 2)
    f = BigFile_File(str(path), BLK)
    assert f.mmap_fd == f.fd
    f.close()
    assert f.mmap_fd is None


def test_unmappable_descriptor_falls_back_to_loadblk(tmp_path: Path) -> None:
    path = tmp_path / "f"
    _make_file(path, 2)
    fd = os.open(path, os.O_RDWR)
    wfd = os.open(path, os.O_WRONLY)        # mmap refuses a write-only fd
    try:
        f = CountingFile(fd, BLK)           # type: ignore[arg-type]
        f.mmap_fd = wfd
        with f.fileh_open(ram=RAM(64 * BLK)) as fileh:
            a = np.frombuffer(fileh.mmap(0, 2), np.uint8)
            assert a[0] == 1 and a[BLK] == 2
            assert f.nload == 2
            del a
    finally:
        os.close(wfd)
        os.close(fd)


@pytest.mark.parametrize("bad", [-1, -100])
def test_mmap_fd_rejects_negative_descriptors(bad: int) -> None:
    f = BigFile(PAGESIZE)
    with pytest.raises(ValueError, match="mmap_fd"):
        f.mmap_fd = bad
    with pytest.raises(TypeError):
        f.mmap_fd = "3"                     # type: ignore[assignment]
    assert f.mmap_fd is None
