"""Fault-around: a sequential read loads the next small blocks with the one
touched (BigFile.fault_around bytes), quietly; random reads and writes do not."""

from __future__ import annotations

import time

import numpy as np
import pytest

from tests.common import PAGESIZE, MemFile
from zbigarray.bigfile import RAM, PageFaultError
from zbigarray.bigfile._bigfile import FAULT_AROUND_DEFAULT


def _pattern(blk: int, buf: memoryview) -> None:
    np.frombuffer(buf, np.uint8)[:] = blk % 251


def test_default_is_64_kib_and_validated() -> None:
    f = MemFile(PAGESIZE)
    assert f.fault_around == FAULT_AROUND_DEFAULT == 64 * 1024
    f.fault_around = 0
    assert f.fault_around == 0
    with pytest.raises(ValueError):
        f.fault_around = -1
    with pytest.raises(TypeError):
        f.fault_around = 1.5


def test_sequential_read_loads_ahead_random_does_not() -> None:
    f = MemFile(PAGESIZE, fill=_pattern)
    f.fault_around = 4 * PAGESIZE
    with f.fileh_open(ram=RAM(64 * PAGESIZE)) as fileh:
        a = np.frombuffer(fileh.mmap(0, 32), np.uint8)
        assert a[0] == 0
        assert f.loaded == [0]                  # a first touch: no sequence yet
        assert a[PAGESIZE] == 1
        assert f.loaded == [0, 1, 2, 3, 4, 5]   # the next 4 blocks came with it
        assert fileh.stats()["npages"] == 6
        # Those are mapped: touching them costs no fault, no load.
        assert [a[b * PAGESIZE] for b in range(2, 6)] == [2, 3, 4, 5]
        assert f.loaded == [0, 1, 2, 3, 4, 5]
        # The sequence goes on past them.
        assert a[6 * PAGESIZE] == 6
        assert f.loaded[6:] == [6, 7, 8, 9, 10]
        # Random reads load what they touch only.
        for b in (20, 14, 27):
            assert a[b * PAGESIZE] == b
        assert f.loaded[11:] == [20, 14, 27]
        # Every value read matches the file.
        expect = np.repeat(np.arange(32) % 251, PAGESIZE).astype(np.uint8)
        assert np.array_equal(a, expect)


def test_off_and_big_blocks_load_only_what_is_touched() -> None:
    off = MemFile(PAGESIZE, fill=_pattern)
    off.fault_around = 0
    big = MemFile(16 * PAGESIZE, fill=_pattern)
    big.fault_around = 16 * PAGESIZE              # one block: nothing ahead
    for f, n in ((off, 16), (big, 4)):
        with f.fileh_open(ram=RAM(64 * 16 * PAGESIZE)) as fileh:
            a = np.frombuffer(fileh.mmap(0, n), np.uint8)
            for b in range(n):
                assert a[b * f.blksize] == b
            assert f.loaded == list(range(n))


def test_writes_do_not_load_ahead() -> None:
    f = MemFile(PAGESIZE, fill=_pattern)
    f.fault_around = 8 * PAGESIZE
    with f.fileh_open(ram=RAM(64 * PAGESIZE)) as fileh:
        a = np.frombuffer(fileh.mmap(0, 16), np.uint8)
        for b in range(4):
            a[b * PAGESIZE] = 200
        assert f.loaded == [0, 1, 2, 3]
        assert fileh.stats()["ndirty"] == 4


def test_a_small_ram_is_not_evicted_for_loads_ahead() -> None:
    """With no room but recent pages, nothing is loaded ahead: a scan through
    a RAM of a few pages works and reads right."""
    f = MemFile(PAGESIZE, fill=_pattern)
    f.fault_around = 16 * PAGESIZE
    with f.fileh_open(ram=RAM(3 * PAGESIZE)) as fileh:
        a = np.frombuffer(fileh.mmap(0, 64), np.uint8)
        got = [int(a[b * PAGESIZE]) for b in range(64)]
        assert got == list(range(64))
        assert fileh.ram.stats()["npages"] <= 3


class FailingAhead(MemFile):
    """A MemFile whose loadblk of one block raises `exc` once."""

    def __init__(self, blksize: int, blk: int, exc: BaseException) -> None:
        super().__init__(blksize, fill=_pattern)
        self.fail_blk, self.exc = blk, exc

    def loadblk(self, blk: int, buf: memoryview) -> None:
        super().loadblk(blk, buf)
        if blk == self.fail_blk and self.exc is not None:
            exc, self.exc = self.exc, None
            raise exc


def test_failed_load_ahead_is_quiet_then_loads_when_touched() -> None:
    f = FailingAhead(PAGESIZE, 3, OSError("backend down"))
    f.fault_around = 4 * PAGESIZE
    with f.fileh_open(ram=RAM(64 * PAGESIZE)) as fileh:
        a = np.frombuffer(fileh.mmap(0, 16), np.uint8)
        assert a[0] == 0 and a[PAGESIZE] == 1   # loads 2 ahead, fails at 3: stops
        for _ in range(1000):                    # nothing arrives
            pass
        assert not fileh.fault_failed
        assert f.loads[3] == 1 and fileh.stats()["npages"] == 3
        assert a[3 * PAGESIZE] == 3              # touched: loaded again, fine now
        assert f.loads[3] == 2


def test_failed_load_ahead_fails_for_real_when_touched() -> None:
    class AlwaysFailing(MemFile):
        def loadblk(self, blk: int, buf: memoryview) -> None:
            super().loadblk(blk, buf)
            if blk == 3:
                raise OSError("block 3 is gone")

    f = AlwaysFailing(PAGESIZE, fill=_pattern)
    f.fault_around = 4 * PAGESIZE
    with f.fileh_open(ram=RAM(64 * PAGESIZE)) as fileh:
        a = np.frombuffer(fileh.mmap(0, 16), np.uint8)
        assert a[0] == 0 and a[PAGESIZE] == 1
        with pytest.raises(PageFaultError, match="block 3") as info:
            a[3 * PAGESIZE] + 0
            for _ in range(1000):
                pass
        assert isinstance(info.value.__cause__, OSError)
        fileh.dirty_discard()


def test_ctrl_c_during_a_load_ahead_is_not_lost() -> None:
    f = FailingAhead(PAGESIZE, 3, KeyboardInterrupt())
    f.fault_around = 4 * PAGESIZE
    with f.fileh_open(ram=RAM(64 * PAGESIZE)) as fileh:
        a = np.frombuffer(fileh.mmap(0, 16), np.uint8)
        assert a[0] == 0
        with pytest.raises(KeyboardInterrupt):
            a[PAGESIZE] + 0
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                pass
        assert not fileh.fault_failed
