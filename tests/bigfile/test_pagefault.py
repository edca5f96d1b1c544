"""Page faults: lazy loading, page sharing between mappings, invalidation."""

from __future__ import annotations

import numpy as np

from tests.common import PAGESIZE, MemFile, fill_pattern, pattern
from zbigarray.bigfile import RAM

BLKSIZE = 2 * PAGESIZE


def test_nothing_loads_before_the_first_touch() -> None:
    f = MemFile(BLKSIZE)
    with f.fileh_open() as fileh:
        vma = fileh.mmap(0, 100)
        np.frombuffer(vma, np.uint8)
        memoryview(vma)
        assert f.loaded == []
        assert fileh.stats()["npages"] == 0


def test_each_block_loads_once_on_first_touch() -> None:
    f = MemFile(BLKSIZE, fill=fill_pattern)
    with f.fileh_open() as fileh:
        a = np.frombuffer(fileh.mmap(10, 8), np.uint64)
        words = BLKSIZE // 8
        assert a[3 * words + 5] == pattern(13, BLKSIZE)[5]
        assert f.loaded == [13]
        for _ in range(3):
            np.testing.assert_array_equal(a[3 * words:4 * words], pattern(13, BLKSIZE))
            assert a[4 * words - 1] == pattern(13, BLKSIZE)[-1]
        a[3 * words] = 0                        # a write to a loaded page loads nothing
        assert f.loaded == [13]
        want = np.concatenate([pattern(blk, BLKSIZE) for blk in range(10, 18)])
        want[3 * words] = 0
        np.testing.assert_array_equal(a, want)
        assert sorted(f.loaded) == list(range(10, 18))
        assert fileh.stats()["nloadblk"] == 8
        assert fileh.stats()["npages"] == 8


def test_first_access_being_a_write_loads_the_block() -> None:
    """A write to a never-read block loads it first: the rest of the block is kept."""
    f = MemFile(BLKSIZE, {2: b"\x05" * BLKSIZE})
    with f.fileh_open() as fileh:
        m = memoryview(fileh.mmap(0, 4))
        m[2 * BLKSIZE + 1] = 9
        assert f.loaded == [2]
        assert bytes(m[2 * BLKSIZE:2 * BLKSIZE + 3]) == b"\x05\x09\x05"
        assert fileh.isdirty()
        assert fileh.stats()["ndirty"] == 1


def test_mappings_of_one_handle_share_pages() -> None:
    """Two VMAs over the same blocks of one handle are the same memory."""
    f = MemFile(BLKSIZE, fill=fill_pattern)
    with f.fileh_open() as fileh:
        v1 = np.frombuffer(fileh.mmap(0, 4), np.uint8)
        v2 = np.frombuffer(fileh.mmap(2, 4), np.uint8)
        v1[2 * BLKSIZE + 1] = 0xAB              # block 2, via v1
        assert v2[1] == 0xAB                    # block 2, via v2
        v2[BLKSIZE + 2] = 0xCD                  # block 3, via v2 (loads it)
        assert v1[3 * BLKSIZE + 2] == 0xCD
        assert f.loads[2] == f.loads[3] == 1
        assert fileh.stats()["ndirty"] == 2
        assert fileh.stats()["npages"] == 2


def test_same_block_at_two_places_in_one_mapping_set() -> None:
    """A page mapped by a VMA made after the page was loaded and dirtied shows it."""
    f = MemFile(BLKSIZE)
    with f.fileh_open() as fileh:
        memoryview(fileh.mmap(7, 1))[:3] = b"abc"
        assert bytes(memoryview(fileh.mmap(6, 2))[BLKSIZE:BLKSIZE + 3]) == b"abc"
        assert f.loads[7] == 1


def test_handles_of_one_file_have_their_own_pages() -> None:
    f = MemFile(BLKSIZE, fill=fill_pattern)
    with f.fileh_open() as h1, f.fileh_open() as h2:
        a1 = np.frombuffer(h1.mmap(0, 2), np.uint64)
        a2 = np.frombuffer(h2.mmap(0, 2), np.uint64)
        a1[0] = 42
        assert a2[0] == pattern(0, BLKSIZE)[0]
        a2[1] = 43
        assert a1[1] == pattern(0, BLKSIZE)[1]
        assert a1[0] == 42 and a2[1] == 43
        assert f.loads[0] == 2
        assert h1.stats()["ndirty"] == h2.stats()["ndirty"] == 1


def test_invalidate_page_reloads_on_next_touch() -> None:
    f = MemFile(BLKSIZE, {0: b"a" * BLKSIZE, 1: b"b" * BLKSIZE})
    with f.fileh_open() as fileh:
        m = memoryview(fileh.mmap(0, 2))
        assert m[0] == ord("a")
        assert m[BLKSIZE] == ord("b")
        f.blocks[0] = b"c" * BLKSIZE
        fileh.invalidate_page(0)
        assert fileh.stats()["npages"] == 1
        assert m[5] == ord("c")
        assert m[BLKSIZE] == ord("b")
        assert f.loads == {0: 2, 1: 1}


def test_invalidate_page_not_loaded_is_a_no_op() -> None:
    f = MemFile(BLKSIZE)
    with f.fileh_open() as fileh:
        fileh.invalidate_page(3)
        fileh.invalidate_page(2**40)
        m = memoryview(fileh.mmap(3, 1))
        assert m[0] == 0
        assert f.loaded == [3]


def test_pages_recycled_under_capacity_reload_from_the_file() -> None:
    """A mapping larger than the RAM reads right; evicted blocks reload."""
    blksize = PAGESIZE
    ram = RAM(8 * blksize)
    f = MemFile(blksize, fill=fill_pattern)
    with f.fileh_open(ram=ram) as fileh:
        a = np.frombuffer(fileh.mmap(0, 64), np.uint64)
        words = blksize // 8
        for blk in range(64):
            np.testing.assert_array_equal(a[blk * words:(blk + 1) * words],
                                          pattern(blk, blksize))
            assert ram.stats()["used"] <= 8 * blksize
        assert fileh.stats()["npages"] <= 8
        assert f.loads[0] == 1
        assert a[0] == pattern(0, blksize)[0]
        assert f.loads[0] == 2
        assert ram.stats()["nreclaimed"] >= 64 - 8


def test_dirty_pages_survive_capacity_pressure() -> None:
    """Clean pages are reclaimed to make room; dirty ones never are."""
    blksize = PAGESIZE
    ram = RAM(8 * blksize)
    f = MemFile(blksize, fill=fill_pattern)
    with f.fileh_open(ram=ram) as fileh:
        a = np.frombuffer(fileh.mmap(0, 64), np.uint64)
        words = blksize // 8
        for blk in range(4):
            a[blk * words] = 1000 + blk
        for blk in range(4, 64):
            assert a[blk * words + 1] == pattern(blk, blksize)[1]
        assert fileh.stats()["ndirty"] == 4
        for blk in range(4):
            assert a[blk * words] == 1000 + blk
            assert f.loads[blk] == 1


def test_stats_count_pages_and_mappings() -> None:
    f = MemFile(BLKSIZE)
    f.fault_around = 0  # counts loads: no loading ahead (fault-around)
    with f.fileh_open() as fileh:
        v1 = fileh.mmap(0, 4)
        v2 = fileh.mmap(100, 1)
        m = memoryview(v1)
        m[0] = 1
        _ = m[BLKSIZE], m[2 * BLKSIZE]
        st = fileh.stats()
        assert (st["npages"], st["ndirty"], st["nvma"], st["nloadblk"], st["nstoreblk"]) \
            == (3, 1, 2, 3, 0)
        v2.close()
        assert fileh.stats()["nvma"] == 1
