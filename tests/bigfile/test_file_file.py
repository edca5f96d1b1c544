"""BigFile_File: a BigFile over an ordinary OS file (beyond the common contract)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from tests.common import PAGESIZE
from zbigarray.bigfile import WRITEOUT_MARKSTORED, WRITEOUT_STORE, BigFile
from zbigarray.bigfile.file_file import BigFile_File

BLKSIZE = 2 * PAGESIZE
BOTH = WRITEOUT_STORE | WRITEOUT_MARKSTORED


def test_is_a_bigfile(tmp_path: Path) -> None:
    f = BigFile_File(str(tmp_path / "f"), BLKSIZE)
    assert isinstance(f, BigFile)
    assert f.blksize == BLKSIZE


def test_missing_path_is_created(tmp_path: Path) -> None:
    path = tmp_path / "new"
    f = BigFile_File(str(path), BLKSIZE)
    assert path.exists()
    with f.fileh_open() as fileh:
        assert bytes(memoryview(fileh.mmap(0, 2))) == bytes(2 * BLKSIZE)


def test_accepts_a_pathlike(tmp_path: Path) -> None:
    path = tmp_path / "p"
    path.write_bytes(b"abc")
    with BigFile_File(path, BLKSIZE).fileh_open() as fileh:
        assert bytes(memoryview(fileh.mmap(0, 1))[:4]) == b"abc\0"


def test_holes_and_past_end_read_as_zeros(tmp_path: Path) -> None:
    """A sparse file: data, a hole, data ending mid-block, then nothing."""
    path = tmp_path / "sparse"
    with open(path, "wb") as out:
        out.write(b"\x01" * BLKSIZE)
        out.seek(3 * BLKSIZE + 5)                    # blocks 1, 2 and part of 3: a hole
        out.write(b"\x02" * 10)                      # the file ends inside block 3
    f = BigFile_File(str(path), BLKSIZE)
    with f.fileh_open() as fileh:
        a = np.frombuffer(fileh.mmap(0, 6), np.uint8)
        want = np.zeros(6 * BLKSIZE, np.uint8)
        want[:BLKSIZE] = 1
        want[3 * BLKSIZE + 5:3 * BLKSIZE + 15] = 2
        np.testing.assert_array_equal(a, want)
    assert path.stat().st_size == 3 * BLKSIZE + 15   # reading changes nothing


def test_writeout_writes_into_the_file(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * (BLKSIZE + 100))
    f = BigFile_File(str(path), BLKSIZE)
    with f.fileh_open() as fileh:
        m = memoryview(fileh.mmap(0, 8))
        m[10:13] = b"abc"                            # inside the file
        m[BLKSIZE + 100:BLKSIZE + 103] = b"def"      # just past its end
        m[5 * BLKSIZE:5 * BLKSIZE + 3] = b"ghi"      # far past its end
        fileh.dirty_writeout(BOTH)
        assert not fileh.isdirty()
    data = path.read_bytes()
    assert data[:13] == b"x" * 10 + b"abc"
    assert data[13:BLKSIZE + 100] == b"x" * (BLKSIZE + 87)
    assert data[BLKSIZE + 100:BLKSIZE + 103] == b"def"
    assert data[BLKSIZE + 103:5 * BLKSIZE] == bytes(4 * BLKSIZE - 103)
    assert data[5 * BLKSIZE:5 * BLKSIZE + 3] == b"ghi"
    assert data[5 * BLKSIZE + 3:] == bytes(len(data) - 5 * BLKSIZE - 3)


def test_store_only_writes_dirty_blocks(tmp_path: Path) -> None:
    """Writeout rewrites the dirty blocks only: a concurrent change elsewhere survives."""
    path = tmp_path / "f"
    path.write_bytes(b"\x01" * (4 * BLKSIZE))
    f = BigFile_File(str(path), BLKSIZE)
    with f.fileh_open() as fileh:
        m = memoryview(fileh.mmap(0, 4))
        assert m[3 * BLKSIZE] == 1                   # block 3 loaded, clean
        m[0] = 2
        with open(path, "r+b") as other:             # someone else changes block 3
            other.seek(3 * BLKSIZE)
            other.write(b"\x03")
        fileh.dirty_writeout(BOTH)
    data = path.read_bytes()
    assert data[0] == 2 and data[3 * BLKSIZE] == 3


def test_uses_an_fd_and_does_not_close_it(tmp_path: Path) -> None:
    path = tmp_path / "f"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, b"hello", BLKSIZE)
        f = BigFile_File(fd, BLKSIZE)
        with f.fileh_open() as fileh:
            m = memoryview(fileh.mmap(0, 2))
            assert bytes(m[BLKSIZE:BLKSIZE + 6]) == b"hello\0"
            m[:5] = b"world"
            fileh.dirty_writeout(BOTH)
        del f, fileh, m
        os.fstat(fd)                                 # still open
        assert os.pread(fd, 5, 0) == b"world"
    finally:
        os.close(fd)


def test_bad_block_size(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        BigFile_File(str(tmp_path / "f"), PAGESIZE + 1)


def test_missing_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        BigFile_File(str(tmp_path / "no" / "such" / "f"), BLKSIZE)


def test_bad_fd_is_an_error() -> None:
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    with pytest.raises(OSError):
        BigFile_File(r, BLKSIZE)


def test_read_only_fd_reads_and_writeout_raises(tmp_path: Path) -> None:
    path = tmp_path / "ro"
    path.write_bytes(b"\x05" * BLKSIZE)
    fd = os.open(path, os.O_RDONLY)
    try:
        with BigFile_File(fd, BLKSIZE).fileh_open() as fileh:
            m = memoryview(fileh.mmap(0, 1))
            assert m[0] == 5
            m[0] = 6
            with pytest.raises(OSError):
                fileh.dirty_writeout(BOTH)
            assert fileh.isdirty()
            assert m[0] == 6
    finally:
        os.close(fd)
    assert path.read_bytes() == b"\x05" * BLKSIZE


def test_close_closes_an_owned_file(tmp_path: Path) -> None:
    path = tmp_path / "f"
    with BigFile_File(str(path), BLKSIZE) as f:
        fd = f.fd
        os.fstat(fd)
    with pytest.raises(OSError):
        os.fstat(fd)
    f.close()
