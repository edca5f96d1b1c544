"""The BigFile contract (conformance.py) run for an in-memory file and BigFile_File."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.bigfile.conformance import *  # noqa: F403  (the contract's test functions)
from tests.bigfile.conformance import Backend, MakeBackend
from tests.common import MemFile
from zbigarray.bigfile.file_file import BigFile_File


class MemBackend:
    """A :class:`MemFile`; its dict is the stored content."""

    def __init__(self, blksize: int) -> None:
        self.file = MemFile(blksize)

    def put(self, blk: int, data: bytes) -> None:
        self.file.blocks[blk] = data

    def get(self, blk: int) -> bytes:
        return self.file.content(blk)


class OSFileBackend:
    """A :class:`BigFile_File` over a file in `tmp_path`, read and written with os.pread/pwrite.

    Zero-copy is off: the contract is about loadblk, which zero-copy bypasses
    for clean pages (test_zero_copy.py covers that path).
    """

    def __init__(self, blksize: int, path: Path) -> None:
        self.path = path
        self.file = BigFile_File(str(path), blksize, zero_copy=False)

    def put(self, blk: int, data: bytes) -> None:
        fd = os.open(self.path, os.O_WRONLY)
        try:
            os.pwrite(fd, data, blk * self.file.blksize)
        finally:
            os.close(fd)

    def get(self, blk: int) -> bytes:
        blksize = self.file.blksize
        with open(self.path, "rb") as f:
            f.seek(blk * blksize)
            data = f.read(blksize)
        return data + bytes(blksize - len(data))


@pytest.fixture(params=["memory", "osfile"])
def make_backend(request: pytest.FixtureRequest, tmp_path: Path) -> MakeBackend:
    """Fresh empty files of each kind."""
    count = 0

    def make(blksize: int) -> Backend:
        nonlocal count
        count += 1
        if request.param == "memory":
            return MemBackend(blksize)
        return OSFileBackend(blksize, tmp_path / f"file{count}")

    return make
