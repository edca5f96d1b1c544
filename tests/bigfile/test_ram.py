"""RAM: capacity, statistics, reclaim, the process default and its variable."""

from __future__ import annotations

import os
import time

import numpy as np
import psutil
import pytest

from tests.common import PAGESIZE, MemFile, fill_pattern, pattern, run_python
from zbigarray.bigfile import RAM, loadblk_buf_zeroed, ram_default, ram_parse_size, ram_reclaim

MiB = 1024 * 1024
GiB = 1024 * MiB
STATS_KEYS = {"capacity", "used", "npages", "nclean", "memfd_size", "nreclaimed",
              "nrecycled", "nmoved", "prepared", "nprepared"}


@pytest.mark.parametrize("text, size", [
    ("4096", 4096), ("64K", 64 * 1024), ("64k", 64 * 1024), ("64M", 64 * MiB),
    ("2G", 2 * GiB), ("1T", 1024 * GiB), ("64MB", 64 * MiB), ("64MiB", 64 * MiB),
    ("64mib", 64 * MiB), ("512m", 512 * MiB),
])
def test_ram_parse_size(text: str, size: int) -> None:
    assert ram_parse_size(text) == size


@pytest.mark.parametrize("text", ["", "M", "lots", "64X", "-1", "64 M", "1.5G", "0x10"])
def test_ram_parse_size_rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError):
        ram_parse_size(text)


def test_ram_parse_size_rejects_overflow() -> None:
    with pytest.raises((ValueError, OverflowError)):
        ram_parse_size("99999999999999999999T")


@pytest.mark.parametrize("capacity, size", [(64 * MiB, 64 * MiB), ("64M", 64 * MiB),
                                            (PAGESIZE, PAGESIZE)])
def test_ram_capacity(capacity: int | str, size: int) -> None:
    ram = RAM(capacity)
    assert ram.capacity == size
    st = ram.stats()
    assert set(st) >= STATS_KEYS
    assert st["capacity"] == size
    assert st["used"] == st["npages"] == st["nclean"] == 0


@pytest.mark.parametrize("capacity", [0, PAGESIZE - 1, "0", "lots"])
def test_ram_rejects_bad_capacity(capacity: int | str) -> None:
    with pytest.raises(ValueError):
        RAM(capacity)


def test_ram_capacity_can_grow_and_shrink() -> None:
    ram = RAM(16 * PAGESIZE)
    f = MemFile(PAGESIZE, fill=fill_pattern)
    with f.fileh_open(ram=ram) as fileh:
        a = np.frombuffer(fileh.mmap(0, 16), np.uint64)
        a[0] = 1                                # one dirty page
        assert int(a.sum()) > 0                 # 15 clean pages
        assert ram.stats()["used"] == 16 * PAGESIZE
        ram.capacity = 32 * PAGESIZE
        assert ram.capacity == ram.stats()["capacity"] == 32 * PAGESIZE
        ram.capacity = 4 * PAGESIZE             # shrinking reclaims clean pages now
        st = ram.stats()
        assert st["used"] <= 4 * PAGESIZE
        assert fileh.stats()["ndirty"] == 1
        assert a[0] == 1
        with pytest.raises(ValueError):
            ram.capacity = 0


def test_ram_stats_follow_pages() -> None:
    ram = RAM(64 * PAGESIZE)
    f = MemFile(2 * PAGESIZE)
    f.fault_around = 0  # counts loads: no loading ahead (fault-around)
    with f.fileh_open(ram=ram) as fileh:
        m = memoryview(fileh.mmap(0, 8))
        for blk in range(5):
            _ = m[blk * 2 * PAGESIZE]
        m[0] = 1
        st = ram.stats()
        assert st["npages"] == 5
        assert st["used"] == 5 * 2 * PAGESIZE
        assert st["nclean"] == 4
        assert st["memfd_size"] >= st["used"]
    st = ram.stats()
    assert st["used"] == st["npages"] == st["nclean"] == 0


def test_ram_reclaim_drops_clean_lru_pages_only() -> None:
    ram = RAM(64 * PAGESIZE)
    f = MemFile(PAGESIZE, fill=fill_pattern)
    with f.fileh_open(ram=ram) as fileh:
        a = np.frombuffer(fileh.mmap(0, 10), np.uint64)
        words = PAGESIZE // 8
        a[0] = 5                                # block 0: dirty
        for blk in range(1, 10):                # blocks 1..9 clean, 1 least recently used
            assert a[blk * words] == pattern(blk, PAGESIZE)[0]
        assert ram.reclaim(2) == 2
        assert fileh.stats()["npages"] == 8
        assert a[9 * words] == pattern(9, PAGESIZE)[0]
        assert f.loads[9] == 1                  # most recently used: still there
        assert ram.reclaim() == 7
        assert ram.reclaim() == 0
        st = ram.stats()
        assert st["npages"] == 1 and st["nclean"] == 0
        assert a[0] == 5                        # dirty page kept
        np.testing.assert_array_equal(a[words:2 * words], pattern(1, PAGESIZE))
        assert f.loads[1] == 2


def test_ram_reclaim_of_default_ram() -> None:
    """ram_reclaim() drops at most 64 clean pages of the default RAM per call."""
    f = MemFile(PAGESIZE)
    with f.fileh_open() as fileh:
        m = memoryview(fileh.mmap(0, 100))
        m[0] = 1
        for blk in range(1, 100):
            _ = m[blk * PAGESIZE]
        assert fileh.stats()["npages"] == 100
        assert ram_reclaim() == 64             # 99 clean pages: a full batch
        for _ in range(1000):
            if ram_reclaim() == 0:
                break
        assert fileh.stats()["npages"] == 1
        assert m[0] == 1
    assert ram_default().stats()["nclean"] == 0


def test_handles_share_one_ram_capacity() -> None:
    ram = RAM(8 * PAGESIZE)
    f1, f2 = MemFile(PAGESIZE), MemFile(PAGESIZE)
    with f1.fileh_open(ram=ram) as h1, f2.fileh_open(ram=ram) as h2:
        m1, m2 = memoryview(h1.mmap(0, 32)), memoryview(h2.mmap(0, 32))
        for blk in range(32):
            _ = m1[blk * PAGESIZE], m2[blk * PAGESIZE]
            assert ram.stats()["used"] <= 8 * PAGESIZE
        assert h1.stats()["npages"] + h2.stats()["npages"] <= 8


def test_ram_with_files_of_two_block_sizes() -> None:
    """One RAM serves handles whose block sizes differ, within one capacity."""
    ram = RAM(32 * PAGESIZE)
    f1, f2 = MemFile(PAGESIZE, fill=fill_pattern), MemFile(4 * PAGESIZE, fill=fill_pattern)
    with f1.fileh_open(ram=ram) as h1, f2.fileh_open(ram=ram) as h2:
        a1 = np.frombuffer(h1.mmap(0, 64), np.uint64)
        a2 = np.frombuffer(h2.mmap(0, 16), np.uint64)
        for i in range(64):
            assert a1[i * PAGESIZE // 8] == pattern(i, PAGESIZE)[0]
            j = i % 16
            assert a2[j * PAGESIZE // 2 + 1] == pattern(j, 4 * PAGESIZE)[1]
            assert ram.stats()["used"] <= 32 * PAGESIZE


@pytest.mark.subprocess
def test_default_capacity_from_environment() -> None:
    code = """
        from zbigarray.bigfile import ram_default
        print(ram_default().capacity)
    """
    r = run_python(code, env={"ZBIGARRAY_RAM_MAX": "64M"})
    assert r.returncode == 0, r.stderr
    assert int(r.stdout) == 64 * MiB
    r = run_python(code, env={"ZBIGARRAY_RAM_MAX": str(3 * MiB)})
    assert r.returncode == 0, r.stderr
    assert int(r.stdout) == 3 * MiB


def _cgroup_limit(proc: str = "/proc/self/cgroup", root: str = "/sys/fs/cgroup") -> int | None:
    """This process's cgroup memory limit read independently of ram.c: the
    smallest v2 memory.max / v1 memory.limit_in_bytes of its cgroup and every
    ancestor, or None."""
    limits = []
    try:
        with open(proc) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3 or not parts[2].startswith("/"):
            continue
        hid, controllers, path = parts
        if hid == "0" and controllers == "":
            base, name = root, "memory.max"
        elif "memory" in controllers.split(","):
            base, name = os.path.join(root, "memory"), "memory.limit_in_bytes"
        else:
            continue
        parts = [p for p in path.split("/") if p]
        for i in range(len(parts), -1, -1):
            try:
                with open(os.path.join(base, *parts[:i], name)) as f:
                    text = f.read().strip()
            except OSError:
                continue
            if text.isdigit():
                limits.append(int(text))
    return min(limits, default=None)


def test_default_capacity_is_quarter_of_physical_or_cgroup_memory() -> None:
    phys = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGESIZE")
    limit = _cgroup_limit()
    usable = phys if limit is None else min(phys, limit)
    assert RAM().capacity == max(PAGESIZE, usable // 4)


@pytest.mark.subprocess
def test_default_capacity_without_environment_leaves_room() -> None:
    r = run_python("""
        from zbigarray.bigfile import RAM, ram_default
        print(ram_default().capacity, RAM().capacity)
    """)
    assert r.returncode == 0, r.stderr
    capacity, default = map(int, r.stdout.split())
    assert capacity == default      # the process RAM uses the default
    assert PAGESIZE <= capacity <= psutil.virtual_memory().total // 2


@pytest.mark.subprocess
@pytest.mark.parametrize("value", ["lots", "64X", "-5M"])
def test_bad_environment_value_names_the_variable(value: str) -> None:
    r = run_python("""
        import zbigarray.bigfile as bf
        for call in (bf.ram_default, lambda: bf.BigFile(4096).fileh_open()):
            try:
                call()
            except ValueError as e:
                print("ValueError:", e)
            else:
                print("no error")
    """, env={"ZBIGARRAY_RAM_MAX": value})
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 2
    for line in lines:
        assert line.startswith("ValueError:") and "ZBIGARRAY_RAM_MAX" in line


def _rss() -> int:
    """Resident set size: counts a page once per mapping of it."""
    return psutil.Process().memory_info().rss


def _pss() -> int:
    """Proportional set size: physical memory, a page counted once however mapped."""
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no Pss in /proc/self/smaps_rollup")


def test_reading_1gib_through_64mib_of_ram() -> None:
    """A 1 GiB mapping read end to end stays within a 64 MiB RAM, every byte right."""
    blksize = 2 * MiB
    capacity = 64 * MiB
    nblk = GiB // blksize
    words = blksize // 8
    ram = RAM(capacity)
    f = MemFile(blksize, fill=fill_pattern)
    base = np.arange(words, dtype=np.uint64)
    with f.fileh_open(ram=ram) as fileh:
        a = np.frombuffer(fileh.mmap(0, nblk), np.uint64)
        pss0, rss0 = _pss(), _rss()
        max_used = max_pss = max_rss = 0
        for blk in range(nblk):
            block = a[blk * words:(blk + 1) * words]
            offset = np.uint64(blk << 32)
            assert block[0] == offset and block[-1] == offset + np.uint64(words - 1)
            assert np.array_equal(block - offset, base), f"block {blk}"
            max_used = max(max_used, ram.stats()["used"])
            if blk % 16 == 0:
                max_pss = max(max_pss, _pss() - pss0)
                max_rss = max(max_rss, _rss() - rss0)
        assert max_used <= capacity
        # Physical memory, and what users see: RSS counts a page once per
        # mapping of it, so aliases of page memory left mapped beyond the
        # VMAs would show here as up to twice the capacity.
        assert max_pss <= capacity + 64 * MiB
        assert max_rss <= capacity + 64 * MiB
        assert f.loads == {blk: 1 for blk in range(nblk)}
        st = ram.stats()
        assert st["nreclaimed"] >= nblk - capacity // blksize
        assert fileh.stats()["npages"] <= capacity // blksize
        # A second pass over a few blocks reloads them, still right.
        for blk in (0, nblk // 2, nblk - 1):
            np.testing.assert_array_equal(a[blk * words:(blk + 1) * words],
                                          pattern(blk, blksize))


def test_prepared_slots_hold_each_block_and_stay_within_capacity() -> None:
    """A first scan of 2 MiB blocks takes slots prepared by another thread
    (docs/virtmem.md, "RAM, capacity, recycling"): every block reads right,
    the prepared bytes count against the capacity, and go with the pages."""
    blksize = 2 * MiB
    capacity = 128 * MiB
    nblk = 48
    words = blksize // 8
    ram = RAM(capacity)
    f = MemFile(blksize, fill=fill_pattern)
    with f.fileh_open(ram=ram) as fileh:
        a = np.frombuffer(fileh.mmap(0, nblk), np.uint64)
        for blk in range(nblk):
            assert np.array_equal(a[blk * words:(blk + 1) * words], pattern(blk, blksize))
            st = ram.stats()
            assert st["used"] + st["prepared"] <= capacity
            assert st["prepared"] <= 4 * blksize
        st = ram.stats()
        assert st["nprepared"] > 0
        assert st["npages"] == nblk and st["nrecycled"] == 0
        a[5 * words] = 7                        # a prepared page, mapped read-only
        assert fileh.isdirty()
        del a
    # The handle closed, the RAM holds no page: prepared slots go (one
    # being prepared goes when done).
    deadline = time.monotonic() + 10
    while ram.stats()["prepared"] and time.monotonic() < deadline:
        time.sleep(0.01)
    st = ram.stats()
    assert st["prepared"] == st["used"] == st["npages"] == 0


def test_loadblk_is_told_when_its_buffer_holds_only_zeros() -> None:
    """loadblk_buf_zeroed(buf) is true for prepared slots, and only when the
    buffer does hold zeros: checked against the memory itself, in a first
    scan (fresh and prepared slots) and one through a RAM too small for it
    (recycled slots, old data in them)."""
    blksize = 2 * MiB
    nblk = 40
    seen: list[tuple[int, bool, bool]] = []    # blk, told zeroed, all zeros

    def fill_noting(blk: int, buf: memoryview) -> None:
        seen.append((blk, loadblk_buf_zeroed(buf),
                     not np.frombuffer(buf, np.uint8).any()))
        assert loadblk_buf_zeroed(buf[8:]) == seen[-1][1]     # a view of it
        fill_pattern(blk, buf)

    for capacity in (128 * MiB, 16 * MiB):
        seen.clear()
        ram = RAM(capacity)
        f = MemFile(blksize, fill=fill_noting)
        with f.fileh_open(ram=ram) as fileh:
            a = np.frombuffer(fileh.mmap(0, nblk), np.uint64)
            for blk in range(nblk):
                assert np.array_equal(a[blk * blksize // 8:(blk + 1) * blksize // 8],
                                      pattern(blk, blksize))
            st = ram.stats()
            del a
        assert [blk for blk, _, _ in seen] == list(range(nblk))
        assert all(zero for _, told, zero in seen if told)
        if capacity == 128 * MiB:
            assert sum(told for _, told, _ in seen) == st["nprepared"] > 0
        else:
            assert st["nrecycled"] > 0
            assert not any(told for _, told, zero in seen if not zero)


def test_loadblk_buf_zeroed_is_false_outside_loadblk() -> None:
    kept: list[memoryview] = []

    def fill_keeping(blk: int, buf: memoryview) -> None:
        kept.append(buf)
        fill_pattern(blk, buf)

    assert not loadblk_buf_zeroed(memoryview(bytearray(16)))
    assert not loadblk_buf_zeroed(b"\0" * 16)
    f = MemFile(2 * MiB, fill=fill_keeping)
    with f.fileh_open(ram=RAM(128 * MiB)) as fileh:
        a = np.frombuffer(fileh.mmap(0, 4), np.uint64)
        assert int(a[0]) == int(pattern(0, 2 * MiB)[0])
        del a
    assert kept
    assert not any(loadblk_buf_zeroed(buf) for buf in kept)     # released after the call
