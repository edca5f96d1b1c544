"""Benchmark of BigArray user operations.

Run on demand, from the source tree::

    python benchmarks/bench_bigarray.py [--size 1G] [--repeat 3] [--dir DIR]

Measures, each against a baseline timed in the same run:

1. ``A[:].sum()`` over `--size` bytes of float64, in GB/s:
   (a) a RAMArray, written once beforehand (its pages are in RAM; each sum
       maps a fresh view, so every page is faulted into it again);
   (b) a BigArray over ``BigFile_File`` (2 MiB blocks) of a file in the OS
       page cache: "cold" on a fresh file handle (every block is read with
       ``loadblk``), "warm" on the same handle again (pages already held);
   baseline: NumPy summing an in-RAM ndarray with the same contents.
2. ``A.append(values)`` of δ rows (δ = 1024 rows of 64 float64, 512 KiB) to
   arrays of N rows, N growing from 1 MiB to 256 GiB of data (reached by
   ``resize``, which touches no data), in microseconds per append: it must
   stay flat in N (median of `--repeat` appends, each on blocks not touched
   before).  Baseline: ``numpy.append`` on an in-RAM ndarray (which
   copies the whole array), up to 1 GiB.

Times are the best of `--repeat` runs (``time.perf_counter``).  Never imported
by the tests.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

# The package is used in place from the source tree.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from zbigarray.bigarray import BigArray  # noqa: E402
from zbigarray.bigarray.array_ram import RAMArray  # noqa: E402
from zbigarray.bigfile import ram_parse_size  # noqa: E402
from zbigarray.bigfile.file_file import BigFile_File  # noqa: E402

MiB = 1 << 20
GiB = 1 << 30
BLKSIZE = 2 * MiB
ROW = 64            # float64 per row: 512-byte rows
DELTA = 1024        # rows per append


def best(fn: Callable[[], Any], repeat: int) -> float:
    """Best wall time of `repeat` calls, in seconds."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def time_sum(A: BigArray, repeat: int) -> float:
    """Best time of ``A[:].sum()``, after one sum that brings its pages in."""
    A[:].sum()
    return best(lambda: A[:].sum(), repeat)


def bench_sum(size: int, repeat: int, workdir: Path) -> None:
    n = size // 8
    data = np.random.default_rng(0).random(n)
    want = data.sum()

    t_np = best(data.sum, repeat)

    ram = RAMArray(n, "f8")
    ram[:] = data
    assert np.isclose(ram[:].sum(), want)
    t_ram = time_sum(ram, repeat)
    del ram

    path = workdir / "bench_bigarray.dat"
    data.tofile(path)
    del data
    with open(path, "rb") as f:  # the file in the OS page cache
        while f.read(64 * MiB):
            pass
    bigfile = BigFile_File(path, BLKSIZE)

    def cold() -> None:
        A = BigArray(n, "f8", bigfile.fileh_open())
        assert np.isclose(A[:].sum(), want)

    t_cold = best(cold, repeat)
    t_warm = time_sum(BigArray(n, "f8", bigfile.fileh_open()), repeat)
    bigfile.close()
    path.unlink()

    print(f"\n## A[:].sum() over {size / GiB:g} GiB of float64 (best of {repeat})\n")
    print("| what | time, s | GB/s | vs NumPy in RAM |")
    print("|---|---:|---:|---:|")
    for what, t in [
        ("NumPy, ndarray in RAM (baseline)", t_np),
        ("RAMArray (data in its RAM)", t_ram),
        ("BigArray on BigFile_File, cold handle (file in OS cache)", t_cold),
        ("BigArray on BigFile_File, warm handle", t_warm),
    ]:
        print(f"| {what} | {t:.3f} | {size / t / 1e9:.2f} | {t_np / t:.2f}x |")


def time_appends(A: BigArray, nrows: int, values: np.ndarray, repeat: int) -> float:
    """Median seconds per append of `values` to `A` resized to about `nrows`
    rows.  Each append starts two blocks past the previous one, so that every
    one lands on blocks not touched before (as appends to a growing array do)."""
    stride = 2 * BLKSIZE // (ROW * 8)
    times = []
    for r in range(repeat):
        A.resize((nrows + r * stride, ROW))
        t0 = time.perf_counter()
        A.append(values)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def bench_append(repeat: int, workdir: Path) -> None:
    values = np.ones((DELTA, ROW))
    ram = RAMArray((0, ROW), "f8")
    path = workdir / "bench_bigarray_append.dat"
    bigfile = BigFile_File(path, BLKSIZE)
    onfile = BigArray((0, ROW), "f8", bigfile.fileh_open())

    print(f"\n## append of {DELTA} rows x {ROW} float64 ({DELTA * ROW * 8 // 1024} KiB), "
          f"median of {repeat}, microseconds per append\n")
    print("| array size | RAMArray | BigArray on BigFile_File | numpy.append (baseline) |")
    print("|---:|---:|---:|---:|")
    for size in [MiB, 16 * MiB, 256 * MiB, GiB, 16 * GiB, 256 * GiB]:
        nrows = size // (ROW * 8)
        t_ram = time_appends(ram, nrows, values, repeat)
        t_file = time_appends(onfile, nrows, values, repeat)
        if size <= GiB:
            a = np.zeros((nrows, ROW))
            t_np = best(lambda: np.append(a, values, axis=0), repeat)
            del a
            t_np_s = f"{t_np * 1e6:.0f}"
        else:
            t_np_s = "—"
        label = f"{size // GiB} GiB" if size >= GiB else f"{size // MiB} MiB"
        print(f"| {label} | {t_ram * 1e6:.0f} | {t_file * 1e6:.0f} | {t_np_s} |")
    del onfile, ram
    bigfile.close()
    path.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="1G", help="bytes summed in part 1 (K/M/G suffixes)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement; the best is kept")
    parser.add_argument("--dir", default=None, help="directory for the temporary files")
    args = parser.parse_args()
    size = ram_parse_size(args.size)

    print(f"# bench_bigarray — {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
          f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"NumPy {np.__version__}")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        bench_sum(size, args.repeat, Path(tmp))
        bench_append(args.repeat, Path(tmp))


if __name__ == "__main__":
    main()
