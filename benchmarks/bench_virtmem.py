"""Benchmark of the virtual-memory core as seen from Python.

Run on demand, from the source tree::

    python benchmarks/bench_virtmem.py [--size 512M] [--repeat 3] [--dir DIR]

Measures, each against a baseline timed in the same run:

1. Page-fault cost with a no-op Python ``loadblk``, at 4 KiB and 2 MiB blocks,
   in microseconds per fault: one byte touched per block, (a) on fresh RAM
   (memory the kernel must allocate and zero) and (b) over a mapping four
   times the RAM capacity, second pass, so every fault reclaims a clean page
   and recycles its memory.  Baseline: the kernel's own cost to fault in the
   same amount of fresh anonymous memory (one write per OS page).
   Targets: <= 15 us at 4 KiB, <= 250 us at 2 MiB.
2. Sequential read (sum as uint64) of a `--size` file through ``BigFile_File``
   (2 MiB blocks, RAM capacity 64 MiB, a fresh handle each run; zero-copy,
   the default, and with ``zero_copy=False``: every block copied by loadblk) vs
   ``numpy.memmap`` of the same file (a fresh memmap each run, warm OS page
   cache) vs NumPy on an in-RAM copy.  Target: >= 0.2x memmap's throughput.
3. ``a += 1`` over the whole file then writeout, through ``BigFile_File`` (in
   chunks of half the RAM capacity, each followed by writeout: dirty pages
   cannot exceed the capacity) vs ``numpy.memmap`` (``+= 1`` then ``flush``).

Times are the best of `--repeat` runs (``time.perf_counter``).  Never imported
by the tests.
"""

from __future__ import annotations

import argparse
import datetime
import mmap
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from zbigarray.bigfile import (RAM, WRITEOUT_MARKSTORED, WRITEOUT_STORE,  # noqa: E402
                               BigFile, ram_parse_size)
from zbigarray.bigfile.file_file import BigFile_File  # noqa: E402

KiB = 1024
MiB = 1024 * KiB
PAGESIZE = mmap.PAGESIZE
RAM_CAPACITY = 64 * MiB
FILE_BLKSIZE = 2 * MiB


class NoopFile(BigFile):
    """A BigFile whose loadblk leaves the page as it is (cost of the fault alone)."""

    def loadblk(self, blk: int, buf: memoryview) -> None:
        pass

    def storeblk(self, blk: int, buf: memoryview) -> None:
        pass


def best(run: Callable[[], float], repeat: int) -> float:
    """Best of `repeat` calls of `run`, which returns the seconds it measured."""
    return min(run() for _ in range(repeat))


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def touch_blocks(a: np.ndarray, blksize: int) -> None:
    """Read one byte of every block of `a` (a uint8 view), in a NumPy loop."""
    a[::blksize].sum()


# ------------------------------------------------------------- 1. fault cost


def fault_fresh(blksize: int, nblk: int) -> float:
    """Seconds per fault, first touch of each block, fresh RAM."""
    ram = RAM(nblk * blksize)
    with NoopFile(blksize).fileh_open(ram=ram) as fileh:
        a = np.frombuffer(fileh.mmap(0, nblk), np.uint8)
        dt = timed(lambda: touch_blocks(a, blksize))
        del a
    return dt / nblk


def fault_recycled(blksize: int, nblk: int) -> float:
    """Seconds per fault over a mapping 4x the RAM: every fault reclaims a page."""
    ram = RAM(nblk * blksize // 4)
    with NoopFile(blksize).fileh_open(ram=ram) as fileh:
        a = np.frombuffer(fileh.mmap(0, nblk), np.uint8)
        touch_blocks(a, blksize)                 # fill the RAM, then keep evicting
        dt = timed(lambda: touch_blocks(a, blksize))
        assert ram.stats()["nrecycled"] + ram.stats()["nreclaimed"] > 0
        del a
    return dt / nblk


def fault_kernel(blksize: int, nblk: int) -> float:
    """Seconds per block for the kernel to fault in fresh anonymous memory."""
    mem = mmap.mmap(-1, nblk * blksize)
    a = np.frombuffer(mem, np.uint8)
    dt = timed(lambda: a[::PAGESIZE].fill(1))
    del a
    mem.close()
    return dt / nblk


# ------------------------------------------------------------- 2./3. file I/O


def make_file(path: Path, size: int) -> None:
    """Write `size` bytes of uint64 counting data, then read it (warm cache)."""
    chunk = 64 * MiB // 8
    with open(path, "wb") as out:
        for start in range(0, size // 8, chunk):
            out.write(np.arange(start, min(start + chunk, size // 8), dtype=np.uint64).data)
    with open(path, "rb") as f:
        while f.read(64 * MiB):
            pass


def sum_bigfile(path: Path, size: int, zero_copy: bool = True) -> tuple[float, int]:
    f = BigFile_File(str(path), FILE_BLKSIZE, zero_copy=zero_copy)
    with f, f.fileh_open(ram=RAM(RAM_CAPACITY)) as fileh:
        a = np.frombuffer(fileh.mmap(0, size // FILE_BLKSIZE), np.uint64)
        t0 = time.perf_counter()
        s = int(a.sum())
        dt = time.perf_counter() - t0
        del a
    return dt, s


def sum_memmap(path: Path, size: int) -> tuple[float, int]:
    m = np.memmap(path, np.uint64, "r", shape=(size // 8,))
    t0 = time.perf_counter()
    s = int(m.sum())
    dt = time.perf_counter() - t0
    del m
    return dt, s


def add_bigfile(path: Path, size: int) -> float:
    f = BigFile_File(str(path), FILE_BLKSIZE)
    chunk = RAM_CAPACITY // 2 // 8
    with f, f.fileh_open(ram=RAM(RAM_CAPACITY)) as fileh:
        a = np.frombuffer(fileh.mmap(0, size // FILE_BLKSIZE), np.uint64)
        t0 = time.perf_counter()
        for start in range(0, a.size, chunk):
            a[start:start + chunk] += np.uint64(1)
            fileh.dirty_writeout(WRITEOUT_STORE | WRITEOUT_MARKSTORED)
        dt = time.perf_counter() - t0
        del a
    return dt


def add_memmap(path: Path, size: int) -> float:
    m = np.memmap(path, np.uint64, "r+", shape=(size // 8,))
    t0 = time.perf_counter()
    m += np.uint64(1)
    m.flush()
    dt = time.perf_counter() - t0
    del m
    return dt


# ------------------------------------------------------------------ report


def machine() -> str:
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f
                         if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{os.cpu_count()} cores ({model}), Linux {platform.release()}, "
            f"Python {platform.python_version()}, NumPy {np.__version__}, "
            f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")


def row(what: str, value: str, ratio: str = "", target: str = "") -> str:
    return f"| {what} | {value} | {ratio} | {target} |"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="512M",
                        help="file size for the read/write runs (default 512M)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement")
    parser.add_argument("--dir", default=None, help="directory for the file "
                        "(default: the system's temporary directory)")
    args = parser.parse_args(argv)
    size = ram_parse_size(args.size) // FILE_BLKSIZE * FILE_BLKSIZE
    if size == 0:
        parser.error(f"--size must be at least {FILE_BLKSIZE} bytes")
    rep = args.repeat

    print(f"# bench_virtmem: {machine()}")
    print(f"# file {size // MiB} MiB, RAM capacity {RAM_CAPACITY // MiB} MiB, "
          f"best of {rep}; load average at start {os.getloadavg()[0]:.1f}")
    lines = ["| measurement | value | ratio | target |", "|---|---|---|---|"]

    for blksize, nblk, target in [(4 * KiB, 65536, 15.0), (2 * MiB, 256, 250.0)]:
        name = f"{blksize // KiB} KiB" if blksize < MiB else f"{blksize // MiB} MiB"
        kernel = best(lambda: fault_kernel(blksize, nblk), rep) * 1e6
        fresh = best(lambda: fault_fresh(blksize, nblk), rep) * 1e6
        recycled = best(lambda: fault_recycled(blksize, nblk), rep) * 1e6
        ok = "met" if recycled <= target else "MISSED"
        lines += [
            row(f"fault, {name} blocks, kernel anon memory (baseline)", f"{kernel:.1f} µs"),
            row(f"fault, {name} blocks, fresh RAM", f"{fresh:.1f} µs",
                f"{fresh / kernel:.3g}× kernel", f"≤ {target:g} µs: "
                f"{'met' if fresh <= target else 'MISSED'}"),
            row(f"fault, {name} blocks, recycled RAM", f"{recycled:.1f} µs",
                f"{recycled / kernel:.3g}× kernel", f"≤ {target:g} µs: {ok}"),
        ]

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "data"
        make_file(path, size)
        want = int(np.arange(size // 8, dtype=np.uint64).sum())

        runs = [sum_memmap(path, size) for _ in range(rep)]
        assert all(s == want for _, s in runs), "numpy.memmap read wrong data"
        t_mm = min(t for t, _ in runs)
        runs = [sum_bigfile(path, size) for _ in range(rep)]
        assert all(s == want for _, s in runs), "BigFile_File read wrong data"
        t_bf = min(t for t, _ in runs)
        runs = [sum_bigfile(path, size, zero_copy=False) for _ in range(rep)]
        assert all(s == want for _, s in runs), "BigFile_File (copy) read wrong data"
        t_bfc = min(t for t, _ in runs)
        ram_copy = np.fromfile(path, np.uint64)
        t_ram = best(lambda: timed(ram_copy.sum), rep)
        del ram_copy
        gbs = size / 1e9
        lines += [
            row("read (sum), numpy in-RAM copy", f"{gbs / t_ram:.2f} GB/s",
                f"{t_mm / t_ram:.2f}× memmap"),
            row("read (sum), numpy.memmap (baseline)", f"{gbs / t_mm:.2f} GB/s", "1×"),
            row("read (sum), BigFile_File (zero-copy, default)", f"{gbs / t_bf:.2f} GB/s",
                f"{t_mm / t_bf:.2f}× memmap",
                f"≥ 0.2×: {'met' if t_mm / t_bf >= 0.2 else 'MISSED'}"),
            row("read (sum), BigFile_File zero_copy=False (loadblk copies)",
                f"{gbs / t_bfc:.2f} GB/s", f"{t_mm / t_bfc:.2f}× memmap"),
        ]

        t_amm = best(lambda: add_memmap(path, size), rep)
        t_abf = best(lambda: add_bigfile(path, size), rep)
        check = np.memmap(path, np.uint64, "r", shape=(size // 8,))
        assert check[0] == 2 * rep and check[-1] == size // 8 - 1 + 2 * rep, \
            "a += 1 did not reach the file"
        del check
        lines += [
            row("a += 1; flush, numpy.memmap (baseline)", f"{gbs / t_amm:.2f} GB/s", "1×"),
            row("a += 1; writeout, BigFile_File", f"{gbs / t_abf:.2f} GB/s",
                f"{t_amm / t_abf:.2f}× memmap"),
        ]

    print(f"# load average at end {os.getloadavg()[0]:.1f}\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
