"""The BigFile contract (tests/bigfile/conformance.py) run for ZBigFile."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import transaction

from tests.bigfile.conformance import *  # noqa: F403  (the contract's test functions)
from tests.bigfile.conformance import Backend, MakeBackend
from zbigarray.storage import ZBigFile, open_db
from zbigarray.storage.file_zodb import zblk_writer_format


class ZBackend:
    """A ZBigFile in a connection; its blktab is the stored content."""

    def __init__(self, blksize: int, conn) -> None:
        self.file = ZBigFile(blksize)
        conn.add(self.file)

    def put(self, blk: int, data: bytes) -> None:
        zblk = zblk_writer_format()()
        zblk.setblkdata(memoryview(data))
        self.file.blktab[blk] = zblk

    def get(self, blk: int) -> bytes:
        buf = bytearray(self.file.blksize)
        self.file.loadblkdata(blk, memoryview(buf), [], [])
        return bytes(buf)


@pytest.fixture
def make_backend(zblk_fmt: str) -> Iterator[MakeBackend]:
    """Fresh empty ZBigFiles in one connection, with each writer format."""
    db = open_db("memory://")
    conn = db.open()

    def make(blksize: int) -> Backend:
        return ZBackend(blksize, conn)

    yield make
    transaction.abort()
    db.close()
