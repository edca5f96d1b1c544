"""loadblk/storeblk keeping `buf` after the call: no crash, no aliasing of pages.

`buf` is valid only during the call.  A kept memoryview is released (access
raises ValueError); a view derived from it stays readable but is the
keeper's own memory, no longer the page's.
"""

from __future__ import annotations

import gc

import numpy as np
import pytest

from tests.common import PAGESIZE, MemFile
from zbigarray.bigfile import WRITEOUT_MARKSTORED, WRITEOUT_STORE

BOTH = WRITEOUT_STORE | WRITEOUT_MARKSTORED


class Keeper(MemFile):
    """A MemFile that keeps what loadblk/storeblk were given, or views of it."""

    def __init__(self, blksize: int, derive: bool) -> None:
        super().__init__(blksize, {blk: bytes([blk + 1]) * blksize for blk in range(4)})
        self.fault_around = 0       # counts the buffers of the blocks touched
        self.derive = derive
        self.kept_load: list[object] = []
        self.kept_store: list[object] = []

    def _keep(self, buf: memoryview) -> object:
        return np.frombuffer(buf, np.uint8) if self.derive else buf

    def loadblk(self, blk: int, buf: memoryview) -> None:
        super().loadblk(blk, buf)
        self.kept_load.append(self._keep(buf))

    def storeblk(self, blk: int, buf: memoryview) -> None:
        super().storeblk(blk, buf)
        self.kept_store.append(self._keep(buf))


def _released(view: object) -> None:
    """Assert `view` (a memoryview) is released."""
    assert isinstance(view, memoryview)
    with pytest.raises(ValueError):
        view[0]
    with pytest.raises(ValueError):
        bytes(view)
    with pytest.raises(ValueError):
        np.frombuffer(view, np.uint8)


def test_kept_loadblk_buffer_is_released() -> None:
    f = Keeper(PAGESIZE, derive=False)
    with f.fileh_open() as fileh:
        m = memoryview(fileh.mmap(0, 4))
        assert m[0] == 1 and m[PAGESIZE] == 2
        assert len(f.kept_load) == 2
        for kept in f.kept_load:
            _released(kept)
        m[1] = 9
        assert bytes(m[:3]) == b"\x01\x09\x01"
        assert m[2 * PAGESIZE] == 3          # later loads work as usual


def test_kept_storeblk_buffer_is_released() -> None:
    f = Keeper(PAGESIZE, derive=False)
    with f.fileh_open() as fileh:
        m = memoryview(fileh.mmap(0, 4))
        m[0] = 9
        m[PAGESIZE] = 8
        fileh.dirty_writeout(BOTH)
        assert len(f.kept_store) == 2
        for kept in f.kept_store:
            _released(kept)
        assert m[0] == 9 and m[PAGESIZE] == 8
        m[0] = 7
        fileh.dirty_writeout(BOTH)
    assert f.blocks[0][:2] == b"\x07\x01"
    assert f.blocks[1][:2] == b"\x08\x02"


def test_view_derived_from_loadblk_buffer_stays_readable_and_apart() -> None:
    f = Keeper(PAGESIZE, derive=True)
    with f.fileh_open() as fileh:
        m = memoryview(fileh.mmap(0, 4))
        assert m[0] == 1
        (kept,) = f.kept_load
        assert isinstance(kept, np.ndarray)
        assert kept.size == PAGESIZE
        int(kept.sum())                       # readable, whatever it holds
        m[5] = 0x77                           # the page changes: the view does not
        assert kept[5] != 0x77
        kept[6] = 0x55                        # the view changes: the page does not
        assert m[6] == 1
        assert bytes(m[:8]) == b"\x01" * 5 + b"\x77\x01\x01"
        fileh.dirty_writeout(BOTH)
    assert f.blocks[0][:8] == b"\x01" * 5 + b"\x77\x01\x01"
    del kept
    f.kept_load.clear()
    gc.collect()


def test_view_derived_from_storeblk_buffer_stays_readable_and_apart() -> None:
    f = Keeper(PAGESIZE, derive=True)
    with f.fileh_open() as fileh:
        m = memoryview(fileh.mmap(0, 4))
        m[0] = 0x10
        fileh.dirty_writeout(WRITEOUT_STORE)
        (kept,) = f.kept_store
        assert isinstance(kept, np.ndarray)
        int(kept.sum())
        m[1] = 0x77                           # page still dirty, writable
        assert kept[1] != 0x77
        fileh.dirty_writeout(BOTH)
    assert f.blocks[0][:3] == b"\x10\x77\x01"


def test_kept_buffers_outliving_the_handle() -> None:
    """Buffers and views kept past the handle's close are freed without trouble."""
    for derive in (False, True):
        f = Keeper(2 * PAGESIZE, derive=derive)
        fileh = f.fileh_open()
        m = memoryview(fileh.mmap(0, 4))
        _ = m[0], m[2 * PAGESIZE]
        m[3] = 1
        fileh.dirty_writeout(BOTH)
        del m
        fileh.close()
        if derive:
            for kept in f.kept_load + f.kept_store:
                int(np.asarray(kept).sum())
        del f, fileh
        gc.collect()


class FailingKeeper(MemFile):
    """storeblk keeps a view of `buf` and then raises (a backend bug plus an
    I/O error): the view must still be its own memory, never the page's."""

    def __init__(self, blksize: int) -> None:
        super().__init__(blksize, {0: b"\x01" * blksize})
        self.kept: list[np.ndarray] = []
        self.fail = True

    def storeblk(self, blk: int, buf: memoryview) -> None:
        if self.fail:
            self.kept.append(np.frombuffer(buf, np.uint8))
            raise OSError("disk full")
        super().storeblk(blk, buf)


def test_view_kept_by_a_failing_storeblk_stays_apart() -> None:
    f = FailingKeeper(PAGESIZE)
    with f.fileh_open() as fileh:
        a = np.frombuffer(fileh.mmap(0, 1), np.uint8)
        a[:8] = 7
        with pytest.raises(OSError, match="disk full"):
            fileh.dirty_writeout(BOTH)
        kept = f.kept[0]
        assert kept[0] == 7 and kept[8] == 1     # a copy of the block as it was
        a[0] = 9                                 # the page changes ...
        assert kept[0] == 7                      # ... the kept copy does not
        f.fail = False
        fileh.dirty_writeout(BOTH)               # still dirty, stored now
        assert f.blocks[0][:9] == b"\x09" + b"\x07" * 7 + b"\x01"
        del a
