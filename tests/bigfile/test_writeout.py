"""Dirty tracking, dirty_writeout (STORE / MARKSTORED), dirty_discard."""

from __future__ import annotations

import numpy as np
import pytest

from tests.common import PAGESIZE, MemFile, fill_pattern, pattern, run_in_child
from zbigarray.bigfile import WRITEOUT_MARKSTORED, WRITEOUT_STORE, BigFileH

BLKSIZE = 2 * PAGESIZE
WORDS = BLKSIZE // 8
BOTH = WRITEOUT_STORE | WRITEOUT_MARKSTORED


class StoreFailure(Exception):
    """Raised by a storeblk under test."""


class FailingFile(MemFile):
    """A MemFile whose storeblk raises `self.error` for block `self.fail_blk`."""

    def __init__(self, blksize: int) -> None:
        super().__init__(blksize, fill=fill_pattern)
        self.fail_blk: int | None = None
        self.error: BaseException = StoreFailure("disk full")

    def storeblk(self, blk: int, buf: memoryview) -> None:
        if blk == self.fail_blk:
            raise self.error
        super().storeblk(blk, buf)


def _write_blocks(a: np.ndarray, blks: list[int]) -> None:
    for blk in blks:
        a[blk * WORDS + 1] = 10_000 + blk


def _expected(blk: int) -> bytes:
    want = pattern(blk, BLKSIZE)
    want[1] = 10_000 + blk
    return want.tobytes()


def test_writes_mark_pages_dirty_reads_do_not() -> None:
    f = MemFile(BLKSIZE, fill=fill_pattern)
    with f.fileh_open() as fileh:
        a = np.frombuffer(fileh.mmap(0, 8), np.uint64)
        assert int(a.sum()) > 0
        assert not fileh.isdirty()
        a[3 * WORDS] = 7
        assert fileh.isdirty()
        assert fileh.stats()["ndirty"] == 1


def test_store_passes_exactly_the_dirty_blocks_ascending() -> None:
    f = MemFile(BLKSIZE, fill=fill_pattern)
    with f.fileh_open() as fileh:
        a = np.frombuffer(fileh.mmap(0, 10), np.uint64)
        assert a[8 * WORDS] == pattern(8, BLKSIZE)[0]      # loaded, clean
        _write_blocks(a, [7, 2, 5, 0])
        fileh.dirty_writeout(WRITEOUT_STORE)
        assert [blk for blk, _ in f.stored] == [0, 2, 5, 7]
        for blk, data in f.stored:
            assert data == _expected(blk)
        # STORE alone leaves the pages dirty: a second STORE stores them again.
        assert fileh.isdirty()
        assert fileh.stats()["ndirty"] == 4
        fileh.dirty_writeout(WRITEOUT_STORE)
        assert [blk for blk, _ in f.stored] == [0, 2, 5, 7] * 2


def test_store_of_many_blocks_is_ascending() -> None:
    f = MemFile(PAGESIZE)
    rng = np.random.default_rng(1)
    blks = sorted(set(rng.integers(0, 5000, 300).tolist()))
    with f.fileh_open() as fileh:
        m = memoryview(fileh.mmap(0, 5000))
        for blk in rng.permutation(blks).tolist():
            m[blk * PAGESIZE] = 1
        fileh.dirty_writeout(BOTH)
    assert [blk for blk, _ in f.stored] == blks


def test_markstored_cleans_without_storing_and_keeps_data() -> None:
    f = MemFile(BLKSIZE, fill=fill_pattern)
    with f.fileh_open() as fileh:
        a = np.frombuffer(fileh.mmap(0, 4), np.uint64)
        _write_blocks(a, [1, 3])
        fileh.dirty_writeout(WRITEOUT_MARKSTORED)
        assert not fileh.isdirty()
        assert f.stored == []
        assert a[WORDS + 1] == 10_001 and a[3 * WORDS + 1] == 10_003
        assert fileh.stats()["nloadblk"] == 2


def test_write_after_markstored_is_seen_again() -> None:
    f = MemFile(BLKSIZE, fill=fill_pattern)
    with f.fileh_open() as fileh:
        a = np.frombuffer(fileh.mmap(0, 4), np.uint64)
        _write_blocks(a, [1, 3])
        fileh.dirty_writeout(BOTH)
        assert not fileh.isdirty()
        del f.stored[:]
        a[3 * WORDS + 2] = 5                    # the page was write-protected again
        assert fileh.isdirty()
        assert fileh.stats()["ndirty"] == 1
        fileh.dirty_writeout(BOTH)
        assert [blk for blk, _ in f.stored] == [3]
        assert np.frombuffer(f.stored[0][1], np.uint64)[2] == 5
        assert fileh.stats()["nloadblk"] == 2


def test_writeout_with_nothing_dirty_stores_nothing() -> None:
    f = MemFile(BLKSIZE)
    with f.fileh_open() as fileh:
        assert memoryview(fileh.mmap(0, 2))[0] == 0
        fileh.dirty_writeout(BOTH)
        fileh.dirty_writeout(WRITEOUT_STORE)
        fileh.dirty_writeout(WRITEOUT_MARKSTORED)
    assert f.stored == []


def test_discard_reloads_file_content() -> None:
    f = MemFile(BLKSIZE, fill=fill_pattern)
    with f.fileh_open() as fileh:
        a = np.frombuffer(fileh.mmap(0, 4), np.uint64)
        assert a[0] == pattern(0, BLKSIZE)[0]
        _write_blocks(a, [0, 2])
        fileh.dirty_discard()
        assert not fileh.isdirty()
        assert f.loads[0] == 1
        np.testing.assert_array_equal(a[:WORDS], pattern(0, BLKSIZE))
        np.testing.assert_array_equal(a[2 * WORDS:3 * WORDS], pattern(2, BLKSIZE))
        assert f.loads[0] == 2 and f.loads[2] == 2
        fileh.dirty_writeout(BOTH)
    assert f.stored == []


def test_discard_keeps_clean_pages() -> None:
    f = MemFile(BLKSIZE, fill=fill_pattern)
    with f.fileh_open() as fileh:
        a = np.frombuffer(fileh.mmap(0, 4), np.uint64)
        assert a[WORDS] == pattern(1, BLKSIZE)[0]
        a[0] = 1
        fileh.dirty_discard()
        assert a[WORDS] == pattern(1, BLKSIZE)[0]
        assert f.loads[1] == 1


def test_discard_of_stored_but_not_markstored_pages() -> None:
    """STORE then discard (a failed commit): the handle reads the file, i.e. what was stored."""
    f = MemFile(BLKSIZE, fill=fill_pattern)
    with f.fileh_open() as fileh:
        a = np.frombuffer(fileh.mmap(0, 4), np.uint64)
        _write_blocks(a, [2])
        fileh.dirty_writeout(WRITEOUT_STORE)
        fileh.dirty_discard()
        assert not fileh.isdirty()
        assert a[2 * WORDS + 1] == 10_002
        assert f.loads[2] == 2


def test_storeblk_error_is_raised_and_nothing_is_lost() -> None:
    f = FailingFile(BLKSIZE)
    f.fail_blk = 3
    with f.fileh_open() as fileh:
        a = np.frombuffer(fileh.mmap(0, 8), np.uint64)
        _write_blocks(a, [5, 3, 1])
        with pytest.raises(StoreFailure) as excinfo:
            fileh.dirty_writeout(BOTH)
        assert excinfo.value is f.error
        assert [blk for blk, _ in f.stored] == [1]      # ascending, stopped at 3
        assert fileh.isdirty()
        assert fileh.stats()["ndirty"] == 3
        for blk in (1, 3, 5):
            assert a[blk * WORDS + 1] == 10_000 + blk

        f.fail_blk = None
        del f.stored[:]
        fileh.dirty_writeout(BOTH)
        assert not fileh.isdirty()
    assert [blk for blk, _ in f.stored] == [1, 3, 5]
    for blk, data in f.stored:
        assert data == _expected(blk)


def test_storeblk_error_with_store_only_then_markstored_separately() -> None:
    f = FailingFile(BLKSIZE)
    f.fail_blk = 0
    with f.fileh_open() as fileh:
        a = np.frombuffer(fileh.mmap(0, 2), np.uint64)
        _write_blocks(a, [0, 1])
        with pytest.raises(StoreFailure):
            fileh.dirty_writeout(WRITEOUT_STORE)
        assert f.stored == []
        assert fileh.stats()["ndirty"] == 2
        f.fail_blk = None
        fileh.dirty_writeout(WRITEOUT_STORE)
        fileh.dirty_writeout(WRITEOUT_MARKSTORED)
        assert not fileh.isdirty()
    assert [blk for blk, _ in f.stored] == [0, 1]


@pytest.mark.parametrize("error", [KeyboardInterrupt(), MemoryError(),
                                   OSError(28, "No space left on device")])
def test_storeblk_any_exception_propagates(error: BaseException) -> None:
    f = FailingFile(BLKSIZE)
    f.fail_blk = 0
    f.error = error
    with f.fileh_open() as fileh:
        memoryview(fileh.mmap(0, 1))[0] = 1
        with pytest.raises(type(error)) as excinfo:
            fileh.dirty_writeout(BOTH)
        assert excinfo.value is error
        assert fileh.isdirty()


def test_pages_stay_usable_after_a_failed_writeout() -> None:
    """After storeblk failed, the dirty pages can still be written and read."""
    f = FailingFile(BLKSIZE)
    f.fail_blk = 0
    with f.fileh_open() as fileh:
        a = np.frombuffer(fileh.mmap(0, 2), np.uint64)
        a[0] = 1
        with pytest.raises(StoreFailure):
            fileh.dirty_writeout(BOTH)
        a[0] += 1
        a[WORDS] = 3
        f.fail_blk = None
        fileh.dirty_writeout(BOTH)
    assert np.frombuffer(f.blocks[0], np.uint64)[0] == 2
    assert np.frombuffer(f.blocks[1], np.uint64)[0] == 3


def test_markstored_protects_every_mapping_of_a_page() -> None:
    """After writeout a write through any mapping of the page is seen."""
    f = MemFile(BLKSIZE)
    with f.fileh_open() as fileh:
        v1 = memoryview(fileh.mmap(0, 2))
        v2 = memoryview(fileh.mmap(1, 1))
        v1[BLKSIZE] = 1
        assert v2[0] == 1
        fileh.dirty_writeout(BOTH)
        v2[1] = 2
        assert fileh.isdirty()
        assert v1[BLKSIZE + 1] == 2
        fileh.dirty_writeout(BOTH)
    assert f.blocks[1][:2] == b"\x01\x02"
    assert len(f.stored) == 2


def scenario_core_calls_from_storeblk() -> None:
    """storeblk may call back into the handle; calls that conflict with the
    running writeout raise RuntimeError instead of deadlocking."""
    outcomes: dict[str, str] = {}

    class Reentrant(MemFile):
        fileh: BigFileH

        def storeblk(self, blk: int, buf: memoryview) -> None:
            calls = {
                "writeout": lambda: self.fileh.dirty_writeout(WRITEOUT_STORE),
                "discard": self.fileh.dirty_discard,
                "close": self.fileh.close,
                "invalidate-self": lambda: self.fileh.invalidate_page(blk),
                "invalidate-other": lambda: self.fileh.invalidate_page(blk + 100),
                "isdirty": self.fileh.isdirty,
                "mmap-read": lambda: bytes(memoryview(self.fileh.mmap(blk + 1, 1))[:1]),
            }
            for name, call in calls.items():
                try:
                    call()
                except RuntimeError:
                    outcomes[name] = "RuntimeError"
                else:
                    outcomes[name] = "ok"
            super().storeblk(blk, buf)

    f = Reentrant(BLKSIZE, fill=fill_pattern)
    with f.fileh_open() as fileh:
        f.fileh = fileh
        memoryview(fileh.mmap(0, 1))[0] = 1
        fileh.dirty_writeout(BOTH)
        assert not fileh.isdirty()
    assert outcomes == {"writeout": "RuntimeError", "discard": "RuntimeError",
                        "close": "RuntimeError", "invalidate-self": "RuntimeError",
                        "invalidate-other": "ok", "isdirty": "ok", "mmap-read": "ok"}, outcomes
    assert f.blocks[0][0] == 1


@pytest.mark.subprocess
def test_core_calls_from_storeblk_do_not_deadlock() -> None:
    run_in_child(scenario_core_calls_from_storeblk)


def test_page_bytes_is_the_page_as_it_is_without_trailing_zeros() -> None:
    """page_bytes: the page, dirty or clean, its trailing zero bytes left
    out; None for a block with no page; nothing loaded for it."""
    f = MemFile(BLKSIZE, fill=fill_pattern)
    with f.fileh_open() as fileh:
        a = np.frombuffer(fileh.mmap(0, 4), np.uint64)
        assert fileh.page_bytes(1) is None
        assert f.loads[1] == 0
        assert a[WORDS] == pattern(1, BLKSIZE)[0]
        assert fileh.page_bytes(1) == pattern(1, BLKSIZE).tobytes().rstrip(b"\0")
        a[WORDS:2 * WORDS] = 0
        a[WORDS + 3] = 0x0102
        assert fileh.page_bytes(1) == bytes(24) + b"\x02\x01"
        a[WORDS + 3] = 0
        assert fileh.page_bytes(1) == b""
        assert f.loads[1] == 1
        with pytest.raises(ValueError):
            fileh.page_bytes(-1)
        del a
    with pytest.raises(ValueError):
        fileh.page_bytes(1)
