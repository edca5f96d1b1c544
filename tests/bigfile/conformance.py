"""The BigFile contract, written once and run against every BigFile.

A test module runs this suite by importing its test functions and providing
a ``make_backend`` fixture::

    from tests.bigfile.conformance import *  # noqa: F403  (the test functions)

    @pytest.fixture
    def make_backend(tmp_path) -> MakeBackend:
        def make(blksize: int) -> Backend:
            return MyBackend(blksize, ...)
        return make

Each test asks ``make_backend(blksize)`` for a fresh, empty file of that block
size, wrapped in a :class:`Backend` that can change and inspect the file's
stored content behind the file handle's back, as another writer or reader of
the same storage would.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np

from tests.common import PAGESIZE
from zbigarray.bigfile import (WRITEOUT_MARKSTORED, WRITEOUT_STORE, BigFile,
                               BigFileH)

__all__ = [
    "Backend",
    "MakeBackend",
    "test_conformance_blksize",
    "test_conformance_reads_stored_blocks_and_holes",
    "test_conformance_reads_far_blocks_as_zeros",
    "test_conformance_loads_each_block_once",
    "test_conformance_writeout_stores_exactly_the_written_blocks",
    "test_conformance_store_and_markstored_apart",
    "test_conformance_written_data_reaches_a_new_handle",
    "test_conformance_write_after_writeout_is_stored_again",
    "test_conformance_discard_restores_stored_content",
    "test_conformance_invalidate_page_shows_new_content",
    "test_conformance_handles_are_independent",
    "test_conformance_large_blocks",
]

BOTH = WRITEOUT_STORE | WRITEOUT_MARKSTORED


class Backend(Protocol):
    """A file under test plus access to its stored content."""

    file: BigFile
    """The BigFile under test; empty when the backend is made."""

    def put(self, blk: int, data: bytes) -> None:
        """Store `data` (``blksize`` bytes) as block `blk`, bypassing handles.

        A handle that has block `blk` loaded sees the change after
        ``fileh.invalidate_page(blk)``.
        """

    def get(self, blk: int) -> bytes:
        """Return block `blk` as stored now (zeros if never written)."""


MakeBackend = Callable[[int], Backend]

BLKSIZE = 2 * PAGESIZE


def _block(blk: int, blksize: int, seed: int = 0) -> bytes:
    """Distinct pseudo-random content for block `blk`."""
    rng = np.random.default_rng([blk, seed])
    return rng.integers(1, 256, blksize, dtype=np.uint8).tobytes()


def _read(fileh: BigFileH, blk: int, pglen: int = 1) -> bytes:
    """Read blocks [blk, blk+pglen) through a fresh mapping of `fileh`."""
    vma = fileh.mmap(blk, pglen)
    try:
        return bytes(memoryview(vma))
    finally:
        vma.close()


def test_conformance_blksize(make_backend: MakeBackend) -> None:
    """The file reports the block size it was made with."""
    assert make_backend(BLKSIZE).file.blksize == BLKSIZE


def test_conformance_reads_stored_blocks_and_holes(make_backend: MakeBackend) -> None:
    """A mapping reads stored blocks as stored and never-written ones as zeros."""
    b = make_backend(BLKSIZE)
    b.put(0, _block(0, BLKSIZE))
    b.put(2, _block(2, BLKSIZE))
    with b.file.fileh_open() as fileh:
        data = _read(fileh, 0, 4)
    zeros = bytes(BLKSIZE)
    assert data == _block(0, BLKSIZE) + zeros + _block(2, BLKSIZE) + zeros


def test_conformance_reads_far_blocks_as_zeros(make_backend: MakeBackend) -> None:
    """Blocks far past everything stored read as zeros."""
    b = make_backend(BLKSIZE)
    b.put(1, _block(1, BLKSIZE))
    with b.file.fileh_open() as fileh:
        assert _read(fileh, 1000, 2) == bytes(2 * BLKSIZE)
        assert _read(fileh, 2**32, 1) == bytes(BLKSIZE)


def test_conformance_loads_each_block_once(make_backend: MakeBackend) -> None:
    """Touching a block many times, through one or two mappings, loads it once."""
    b = make_backend(BLKSIZE)
    for blk in range(4):
        b.put(blk, _block(blk, BLKSIZE))
    with b.file.fileh_open() as fileh:
        v1 = memoryview(fileh.mmap(0, 4))
        v2 = memoryview(fileh.mmap(2, 2))
        assert fileh.stats()["nloadblk"] == 0
        for _ in range(3):
            assert bytes(v1[BLKSIZE:2 * BLKSIZE]) == _block(1, BLKSIZE)
            assert v1[3 * BLKSIZE + 7] == _block(3, BLKSIZE)[7]
            assert bytes(v2[BLKSIZE:]) == _block(3, BLKSIZE)
        assert fileh.stats()["nloadblk"] == 2


def test_conformance_writeout_stores_exactly_the_written_blocks(
        make_backend: MakeBackend) -> None:
    """Writeout stores the written blocks, each whole, and nothing else."""
    b = make_backend(BLKSIZE)
    for blk in range(4):
        b.put(blk, _block(blk, BLKSIZE))
    with b.file.fileh_open() as fileh:
        m = memoryview(fileh.mmap(0, 4))
        m[3 * BLKSIZE + 5] = 0
        m[BLKSIZE:BLKSIZE + 3] = b"abc"
        assert fileh.isdirty()
        fileh.dirty_writeout(BOTH)
        assert not fileh.isdirty()
        assert fileh.stats()["nstoreblk"] == 2
    want1 = b"abc" + _block(1, BLKSIZE)[3:]
    want3 = bytearray(_block(3, BLKSIZE))
    want3[5] = 0
    assert b.get(1) == want1
    assert b.get(3) == bytes(want3)
    assert b.get(0) == _block(0, BLKSIZE)
    assert b.get(2) == _block(2, BLKSIZE)


def test_conformance_store_and_markstored_apart(make_backend: MakeBackend) -> None:
    """STORE saves and leaves pages dirty; MARKSTORED then cleans without storing."""
    b = make_backend(BLKSIZE)
    with b.file.fileh_open() as fileh:
        m = memoryview(fileh.mmap(0, 2))
        m[:4] = b"data"
        fileh.dirty_writeout(WRITEOUT_STORE)
        assert b.get(0)[:4] == b"data"
        assert fileh.isdirty()
        nstore = fileh.stats()["nstoreblk"]
        fileh.dirty_writeout(WRITEOUT_MARKSTORED)
        assert not fileh.isdirty()
        assert fileh.stats()["nstoreblk"] == nstore
        assert bytes(m[:4]) == b"data"


def test_conformance_written_data_reaches_a_new_handle(make_backend: MakeBackend) -> None:
    """What one handle wrote out, a handle opened afterwards reads."""
    b = make_backend(BLKSIZE)
    new = _block(5, BLKSIZE, seed=1)
    with b.file.fileh_open() as fileh:
        m = memoryview(fileh.mmap(5, 1))
        m[:] = new
        fileh.dirty_writeout(BOTH)
    with b.file.fileh_open() as fileh:
        assert _read(fileh, 5) == new
        assert _read(fileh, 4) == bytes(BLKSIZE)


def test_conformance_write_after_writeout_is_stored_again(
        make_backend: MakeBackend) -> None:
    """After writeout the next write to the same page is seen and stored."""
    b = make_backend(BLKSIZE)
    with b.file.fileh_open() as fileh:
        m = memoryview(fileh.mmap(0, 1))
        m[0] = 1
        fileh.dirty_writeout(BOTH)
        m[1] = 2
        assert fileh.isdirty()
        fileh.dirty_writeout(BOTH)
    assert b.get(0)[:3] == b"\x01\x02\x00"


def test_conformance_discard_restores_stored_content(make_backend: MakeBackend) -> None:
    """Discarded writes vanish from the handle and never reach the file."""
    b = make_backend(BLKSIZE)
    b.put(0, _block(0, BLKSIZE))
    with b.file.fileh_open() as fileh:
        m = memoryview(fileh.mmap(0, 2))
        m[:] = bytes(2 * BLKSIZE)
        fileh.dirty_discard()
        assert not fileh.isdirty()
        assert bytes(m) == _block(0, BLKSIZE) + bytes(BLKSIZE)
        fileh.dirty_writeout(BOTH)
    assert b.get(0) == _block(0, BLKSIZE)
    assert b.get(1) == bytes(BLKSIZE)


def test_conformance_invalidate_page_shows_new_content(make_backend: MakeBackend) -> None:
    """After the file changes, invalidate_page makes the handle read the change."""
    b = make_backend(BLKSIZE)
    b.put(1, _block(1, BLKSIZE))
    with b.file.fileh_open() as fileh:
        m = memoryview(fileh.mmap(0, 2))
        assert bytes(m[BLKSIZE:]) == _block(1, BLKSIZE)
        b.put(1, _block(1, BLKSIZE, seed=7))
        fileh.invalidate_page(1)
        assert bytes(m[BLKSIZE:]) == _block(1, BLKSIZE, seed=7)
        assert bytes(m[:BLKSIZE]) == bytes(BLKSIZE)


def test_conformance_handles_are_independent(make_backend: MakeBackend) -> None:
    """Two handles of one file have separate pages: a write in one is not in the other."""
    b = make_backend(BLKSIZE)
    b.put(0, _block(0, BLKSIZE))
    with b.file.fileh_open() as h1, b.file.fileh_open() as h2:
        m1 = memoryview(h1.mmap(0, 1))
        m2 = memoryview(h2.mmap(0, 1))
        m1[:4] = b"mine"
        assert bytes(m2) == _block(0, BLKSIZE)
        assert not h2.isdirty()
        h1.dirty_writeout(BOTH)
        assert bytes(m2) == _block(0, BLKSIZE)
        h2.invalidate_page(0)
        assert bytes(m2[:4]) == b"mine"


def test_conformance_large_blocks(make_backend: MakeBackend) -> None:
    """2 MiB blocks: a write across a block boundary round-trips through the file."""
    blksize = 2 * 1024 * 1024
    b = make_backend(blksize)
    with b.file.fileh_open() as fileh:
        a = np.frombuffer(fileh.mmap(0, 3), np.uint8)
        a[blksize - 10:blksize + 10] = np.arange(1, 21, dtype=np.uint8)
        assert fileh.stats()["ndirty"] == 2
        fileh.dirty_writeout(BOTH)
    assert b.get(0)[-10:] == bytes(range(1, 11))
    assert b.get(0)[:-10] == bytes(blksize - 10)
    assert b.get(1)[:10] == bytes(range(11, 21))
    assert b.get(1)[10:] == bytes(blksize - 10)
    assert b.get(2) == bytes(blksize)
