"""Benchmark of the virtual-memory core as seen from Python, on both fault paths.

Run on demand, from the source tree::

    python benchmarks/bench_virtmem.py [--size 512M] [--repeat 3] [--dir DIR]

Page faults are served either by the SIGSEGV handler or, where the kernel
allows it, through a userfaultfd (which also serves the faults the kernel
takes inside system calls); `zbigarray.bigfile.userfaultfd_status` says
which, decided at the first mmap of a process.  So every measurement below
runs twice, in two child processes (this script with ``--path-only``): one
with ``ZBIGARRAY_USERFAULTFD=0`` (the SIGSEGV path), one with the default
(userfaultfd, or the reason the kernel refused it).  Each child also times
the baselines, so every ratio compares numbers of one process; the parent
prints one table with both paths side by side.

1. Page-fault cost with a no-op Python ``loadblk``, in microseconds per block:
   one byte touched per block, (a) on fresh RAM (memory the kernel must
   allocate and zero) and (b) recycled: over a mapping four times the RAM
   capacity, after a first pass, so every fault reclaims a clean page and
   reuses its memory.  In sequential order (``a[::blksize].sum()``; at 4 KiB
   fault-around then loads several blocks per fault) at 4 KiB and 2 MiB, and
   in random order at 4 KiB (``a[offsets].sum()`` over a permutation of
   blocks not in RAM: one fault per block).  The random rows map 16384
   blocks, not 65536: scattered 4 KiB pages take two kernel map entries
   each, and 65536 of them would measure the ``vm.max_map_count`` fallback.
   Baseline: the kernel's own cost to fault in the same amount of fresh
   anonymous memory (one write per OS page).  Targets (sequential, as issue 2
   measured them): <= 15 us at 4 KiB, <= 250 us at 2 MiB recycled.
2. Sequential read (sum as uint64) of a `--size` file through ``BigFile_File``
   (2 MiB blocks, RAM capacity 64 MiB, a fresh handle each run; zero-copy,
   the default, and with ``zero_copy=False``: every block copied by loadblk) vs
   ``numpy.memmap`` of the same file (a fresh memmap each run, warm OS page
   cache); NumPy on an in-RAM copy for reference.  Target: >= 0.2x memmap.
3. System calls on never-touched mappings of min(256 MiB, `--size`): the
   kernel takes the page faults itself (served with userfaultfd; EFAULT on
   the SIGSEGV path).  ``os.pwrite`` to a file from (a) a no-op ``BigFile``
   with 2 MiB blocks, RAM capacity 64 MiB, and (b) ``BigFile_File`` (zero-copy)
   over the cached file, vs ``os.pwrite`` of an in-RAM array to the same
   file; ``readinto`` from the cached file into a no-op ``BigFile`` mapping
   (RAM big enough for every page, which all end dirty) vs into a new
   ``numpy.empty`` array (untouched memory too).  Ratio: throughputs.
4. ``a += 1`` over the whole file then writeout, through ``BigFile_File`` (in
   chunks of half the RAM capacity, each followed by writeout: dirty pages
   cannot exceed the capacity) vs ``numpy.memmap`` (``+= 1`` then ``flush``).

Times are the best of `--repeat` runs (``time.perf_counter``); a system-call
run that fails when others succeed is counted in its cell.  The load average
is printed: on a shared machine it says how far to trust the numbers.  Never
imported by the tests.
"""

from __future__ import annotations

import argparse
import datetime
import errno
import json
import mmap
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from zbigarray.bigfile import (RAM, USERFAULTFD_ENV, WRITEOUT_MARKSTORED,  # noqa: E402
                               WRITEOUT_STORE, BigFile, PageFaultError,
                               ram_parse_size, userfaultfd_status)
from zbigarray.bigfile.file_file import BigFile_File  # noqa: E402

KiB = 1024
MiB = 1024 * KiB
PAGESIZE = mmap.PAGESIZE
RAM_CAPACITY = 64 * MiB
FILE_BLKSIZE = 2 * MiB
SYSCALL_SIZE = 256 * MiB
RANDOM_NBLK = 16384

PATHS = ("sigsegv", "uffd")
PATH_TITLES = {"sigsegv": "SIGSEGV path", "uffd": "userfaultfd path"}

Results = dict[str, float | str]
"""One path's numbers by key: µs per block for faults, GB/s for throughputs,
or the errno name a system call failed with."""


class NoopFile(BigFile):
    """A BigFile whose loadblk leaves the page as it is (cost of the fault alone)."""

    def loadblk(self, blk: int, buf: memoryview) -> None:
        pass

    def storeblk(self, blk: int, buf: memoryview) -> None:
        pass


def best(run: Callable[[], float], repeat: int) -> float:
    """Best of `repeat` calls of `run`, which returns the seconds it measured."""
    return min(run() for _ in range(repeat))


def best_of_syscalls(run: Callable[[], float], repeat: int) -> tuple[float | None, list[str]]:
    """Best of `repeat` calls of `run` that succeeded (None if none did), and
    what the others failed with: the errno name of an OSError (``EFAULT``),
    or ``PageFaultError`` (a fault the core gave up on; its message goes to
    stderr)."""
    times, failed = [], []
    for _ in range(repeat):
        try:
            try:
                times.append(run())
            except OSError as e:
                failed.append(errno.errorcode.get(e.errno or 0, str(e)))
        except PageFaultError as e:     # may arrive while the OSError is handled
            print(f"bench_virtmem: {e}", file=sys.stderr)
            failed.append(type(e).__name__)
    return (min(times) if times else None), failed


def timed(fn: Callable[[], object]) -> float:
    """Seconds one call of `fn` took."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def touch_blocks(a: np.ndarray, blksize: int) -> None:
    """Read one byte of every block of `a` (a uint8 view), in a NumPy loop."""
    a[::blksize].sum()


def touch_offsets(a: np.ndarray, offsets: np.ndarray) -> None:
    """Read the bytes of `a` at `offsets`, in that order, in one NumPy call."""
    a[offsets].sum()


# ------------------------------------------------------------- 1. fault cost


def fault_fresh(blksize: int, nblk: int) -> float:
    """Seconds per block, first touch of each block in order, fresh RAM."""
    ram = RAM(nblk * blksize)
    with NoopFile(blksize).fileh_open(ram=ram) as fileh:
        a = np.frombuffer(fileh.mmap(0, nblk), np.uint8)
        dt = timed(lambda: touch_blocks(a, blksize))
        del a
    return dt / nblk


def fault_recycled(blksize: int, nblk: int) -> float:
    """Seconds per block over a mapping 4x the RAM: every fault reclaims a page."""
    ram = RAM(nblk * blksize // 4)
    with NoopFile(blksize).fileh_open(ram=ram) as fileh:
        a = np.frombuffer(fileh.mmap(0, nblk), np.uint8)
        touch_blocks(a, blksize)                 # fill the RAM, then keep evicting
        dt = timed(lambda: touch_blocks(a, blksize))
        assert ram.stats()["nrecycled"] + ram.stats()["nreclaimed"] > 0
        del a
    return dt / nblk


def fault_random_fresh(blksize: int, nblk: int, rng: np.random.Generator) -> float:
    """Seconds per block, blocks touched once each in random order, fresh RAM."""
    offsets = rng.permutation(nblk) * blksize
    ram = RAM(nblk * blksize)
    with NoopFile(blksize).fileh_open(ram=ram) as fileh:
        a = np.frombuffer(fileh.mmap(0, nblk), np.uint8)
        dt = timed(lambda: touch_offsets(a, offsets))
        del a
    return dt / nblk


def fault_random_recycled(blksize: int, nblk: int, rng: np.random.Generator) -> float:
    """Seconds per block, random order, over a mapping 4x the RAM.

    A sequential first pass leaves the last quarter of the blocks in RAM; the
    timed pass touches the other three quarters in random order, each once:
    every touch faults and reclaims a page.
    """
    offsets = rng.permutation(nblk * 3 // 4) * blksize
    ram = RAM(nblk * blksize // 4)
    with NoopFile(blksize).fileh_open(ram=ram) as fileh:
        a = np.frombuffer(fileh.mmap(0, nblk), np.uint8)
        touch_blocks(a, blksize)
        dt = timed(lambda: touch_offsets(a, offsets))
        del a
    return dt / offsets.size


def fault_kernel(blksize: int, nblk: int) -> float:
    """Seconds per block for the kernel to fault in fresh anonymous memory."""
    mem = mmap.mmap(-1, nblk * blksize)
    a = np.frombuffer(mem, np.uint8)
    dt = timed(lambda: a[::PAGESIZE].fill(1))
    del a
    mem.close()
    return dt / nblk


# --------------------------------------------------------------- 2. reading


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
    """Seconds to sum the file as uint64 through a fresh BigFile_File handle, and the sum."""
    f = BigFile_File(str(path), FILE_BLKSIZE, zero_copy=zero_copy)
    with f, f.fileh_open(ram=RAM(RAM_CAPACITY)) as fileh:
        a = np.frombuffer(fileh.mmap(0, size // FILE_BLKSIZE), np.uint64)
        t0 = time.perf_counter()
        s = int(a.sum())
        dt = time.perf_counter() - t0
        del a
    return dt, s


def sum_memmap(path: Path, size: int) -> tuple[float, int]:
    """Seconds to sum the file as uint64 through a fresh numpy.memmap, and the sum."""
    m = np.memmap(path, np.uint64, "r", shape=(size // 8,))
    t0 = time.perf_counter()
    s = int(m.sum())
    dt = time.perf_counter() - t0
    del m
    return dt, s


# ------------------------------------------------- 3. system calls on views


def pwrite_all(fd: int, buf: object) -> None:
    """Write all of `buf` (a bytes-like object) at offset 0 of `fd`."""
    view = memoryview(buf).cast("B")    # type: ignore[arg-type]
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], done)


def readinto_all(f: BinaryIO, buf: object) -> None:
    """Fill `buf` (a writable bytes-like object) from the start of `f`."""
    view = memoryview(buf).cast("B")    # type: ignore[arg-type]
    f.seek(0)
    done = 0
    while done < len(view):
        n = f.readinto(view[done:])
        if not n:
            raise EOFError("file shorter than the buffer")
        done += n


def check_counting(first: int, last: int, nbytes: int) -> None:
    """Assert that `first` and `last` are the first and last uint64 of the
    `nbytes` that make_file writes at the start of its file."""
    assert first == 0 and last == nbytes // 8 - 1, "system call moved wrong data"


def write_noop(out_fd: int, nbytes: int) -> float:
    """Seconds to os.pwrite an untouched no-op BigFile mapping (2 MiB blocks)."""
    with NoopFile(FILE_BLKSIZE).fileh_open(ram=RAM(RAM_CAPACITY)) as fileh:
        vma = fileh.mmap(0, nbytes // FILE_BLKSIZE)
        dt = timed(lambda: pwrite_all(out_fd, vma))
        del vma
    return dt


def write_bigfile(path: Path, out_fd: int, nbytes: int) -> float:
    """Seconds to os.pwrite an untouched BigFile_File mapping of the cached file."""
    f = BigFile_File(str(path), FILE_BLKSIZE)
    with f, f.fileh_open(ram=RAM(RAM_CAPACITY)) as fileh:
        vma = fileh.mmap(0, nbytes // FILE_BLKSIZE)
        dt = timed(lambda: pwrite_all(out_fd, vma))
        del vma
    ends = np.frombuffer(os.pread(out_fd, 8, 0) + os.pread(out_fd, 8, nbytes - 8), np.uint64)
    check_counting(int(ends[0]), int(ends[1]), nbytes)
    return dt


def write_ram(out_fd: int, data: np.ndarray) -> float:
    """Seconds to os.pwrite an in-RAM array."""
    return timed(lambda: pwrite_all(out_fd, data))


def readinto_noop(path: Path, nbytes: int) -> float:
    """Seconds to readinto an untouched no-op BigFile mapping from the cached file."""
    with open(path, "rb", buffering=0) as src, \
            NoopFile(FILE_BLKSIZE).fileh_open(ram=RAM(nbytes)) as fileh:
        vma = fileh.mmap(0, nbytes // FILE_BLKSIZE)
        dt = timed(lambda: readinto_all(src, vma))
        a = np.frombuffer(vma, np.uint64)
        check_counting(int(a[0]), int(a[-1]), nbytes)
        del a, vma
    return dt


def readinto_ram(path: Path, nbytes: int) -> float:
    """Seconds to readinto a new (untouched) numpy array from the cached file."""
    with open(path, "rb", buffering=0) as src:
        a = np.empty(nbytes, np.uint8)
        dt = timed(lambda: readinto_all(src, a))
        ends = a.view(np.uint64)
        check_counting(int(ends[0]), int(ends[-1]), nbytes)
    return dt


# --------------------------------------------------------------- 4. writing


def add_bigfile(path: Path, size: int) -> float:
    """Seconds for ``a += 1`` over the file through BigFile_File, with writeouts."""
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
    """Seconds for ``a += 1`` over the file through numpy.memmap, then flush."""
    m = np.memmap(path, np.uint64, "r+", shape=(size // 8,))
    t0 = time.perf_counter()
    m += np.uint64(1)
    m.flush()
    dt = time.perf_counter() - t0
    del m
    return dt


# ------------------------------------------------------- one path, measured


def probe_path() -> tuple[bool, str | None]:
    """Make this process's first mapping, which decides the fault path, and
    say whether userfaultfd is on (and why not)."""
    with NoopFile(PAGESIZE).fileh_open(ram=RAM(PAGESIZE)) as fileh:
        fileh.mmap(0, 1)
    status = userfaultfd_status()
    return status.enabled, status.reason


def measure(size: int, rep: int, tmpdir: str | None) -> tuple[Results, dict[str, str]]:
    """Every measurement and baseline of this process's fault path, and, by
    key, the system-call runs that failed when others succeeded."""
    r: Results = {}
    failures: dict[str, str] = {}
    rng = np.random.default_rng(2)
    for blksize, nblk, name in [(4 * KiB, 65536, "4k"), (2 * MiB, 256, "2m")]:
        r[f"kernel_{name}"] = best(lambda: fault_kernel(blksize, nblk), rep) * 1e6
        r[f"seq_fresh_{name}"] = best(lambda: fault_fresh(blksize, nblk), rep) * 1e6
        r[f"seq_recycled_{name}"] = best(lambda: fault_recycled(blksize, nblk), rep) * 1e6
    r["rand_fresh_4k"] = best(lambda: fault_random_fresh(4 * KiB, RANDOM_NBLK, rng), rep) * 1e6
    r["rand_recycled_4k"] = best(
        lambda: fault_random_recycled(4 * KiB, RANDOM_NBLK, rng), rep) * 1e6

    gb = size / 1e9
    n = min(SYSCALL_SIZE, size)

    def syscall(key: str, run: Callable[[], float]) -> None:
        """r[key]: GB/s of the best run, or what every run failed with."""
        t, failed = best_of_syscalls(run, rep)
        r[key] = failed[0] if t is None else n / 1e9 / t
        if failed and t is not None:
            failures[key] = f"{len(failed)} of {rep} runs failed: {', '.join(sorted(set(failed)))}"

    with tempfile.TemporaryDirectory(dir=tmpdir) as tmp:
        path = Path(tmp) / "data"
        make_file(path, size)
        want = int(np.arange(size // 8, dtype=np.uint64).sum())
        for key, run in [("memmap_sum", lambda: sum_memmap(path, size)),
                         ("bf_sum", lambda: sum_bigfile(path, size)),
                         ("bf_copy_sum", lambda: sum_bigfile(path, size, zero_copy=False))]:
            runs = [run() for _ in range(rep)]
            assert all(s == want for _, s in runs), f"{key}: wrong sum"
            r[key] = gb / min(t for t, _ in runs)
        ram_copy = np.fromfile(path, np.uint64)
        r["ram_sum"] = gb / best(lambda: timed(ram_copy.sum), rep)

        out_fd = os.open(Path(tmp) / "out", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            data = ram_copy.view(np.uint8)[:n]
            r["ram_write"] = n / 1e9 / best(lambda: write_ram(out_fd, data), rep)
            syscall("noop_write", lambda: write_noop(out_fd, n))
            syscall("bf_write", lambda: write_bigfile(path, out_fd, n))
        finally:
            os.close(out_fd)
        del ram_copy, data
        r["ram_readinto"] = n / 1e9 / best(lambda: readinto_ram(path, n), rep)
        syscall("noop_readinto", lambda: readinto_noop(path, n))

        r["memmap_add"] = gb / best(lambda: add_memmap(path, size), rep)
        r["bf_add"] = gb / best(lambda: add_bigfile(path, size), rep)
        check = np.memmap(path, np.uint64, "r", shape=(size // 8,))
        assert check[0] == 2 * rep and check[-1] == size // 8 - 1 + 2 * rep, \
            "a += 1 did not reach the file"
        del check
    return r, failures


def path_only(fault_path: str, size: int, rep: int, tmpdir: str | None) -> None:
    """Child mode: measure `fault_path`, print a JSON object on stdout."""
    load = [os.getloadavg()[0]]
    enabled, reason = probe_path()
    if enabled != (fault_path == "uffd"):
        if fault_path == "sigsegv":
            raise SystemExit(f"userfaultfd is on despite {USERFAULTFD_ENV}=0")
        print(json.dumps({"unavailable": reason}))
        return
    results, failures = measure(size, rep, tmpdir)
    load.append(os.getloadavg()[0])
    print(json.dumps({"results": results, "failures": failures, "load": load}))


def run_child(fault_path: str, args: argparse.Namespace) -> dict[str, object]:
    """Run this script with ``--path-only fault_path``; its JSON output."""
    env = {k: v for k, v in os.environ.items() if k != USERFAULTFD_ENV}
    if fault_path == "sigsegv":
        env[USERFAULTFD_ENV] = "0"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--path-only", fault_path,
           "--size", args.size, "--repeat", str(args.repeat)]
    if args.dir is not None:
        cmd += ["--dir", args.dir]
    out = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(out.stdout.splitlines()[-1])


# ------------------------------------------------------------------ report


@dataclass(frozen=True)
class Row:
    """One line of the table: a measurement, its baseline and its target."""

    what: str
    key: str                    # in each path's Results
    base: str                   # key of the baseline in BASELINES
    target: float | None = None
    """µs at most (fault rows) or × the baseline at least (throughput rows)."""
    note: str = ""              # the target cell when there is no target


BASELINES: dict[str, tuple[str, str]] = {
    "kernel_4k": ("kernel anon fault per 4 KiB", "µs"),
    "kernel_2m": ("kernel anon fault per 2 MiB", "µs"),
    "memmap_sum": ("numpy.memmap", "GB/s"),
    "ram_write": ("os.write of an in-RAM array", "GB/s"),
    "ram_readinto": ("readinto a new numpy array", "GB/s"),
    "memmap_add": ("numpy.memmap += 1; flush", "GB/s"),
}
"""Baseline key: (what it is, unit).  µs: lower is better, ratio = ours /
baseline; GB/s: higher is better, ratio = ours / baseline (baseline time /
our time)."""

NO_TARGET = "none (reported as measured)"


def rows(syscall_bytes: int) -> tuple[Row, ...]:
    """The table's rows; `syscall_bytes`: the size of the system-call views."""
    view = f"{syscall_bytes // MiB} MiB untouched view"
    return (
        Row("fault, 4 KiB, sequential, fresh RAM", "seq_fresh_4k", "kernel_4k", 15.0),
        Row("fault, 4 KiB, sequential, recycled RAM", "seq_recycled_4k", "kernel_4k", 15.0),
        Row("fault, 4 KiB, random order, fresh RAM", "rand_fresh_4k", "kernel_4k",
            note=NO_TARGET),
        Row("fault, 4 KiB, random order, recycled RAM", "rand_recycled_4k", "kernel_4k",
            note=NO_TARGET),
        Row("fault, 2 MiB, sequential, fresh RAM", "seq_fresh_2m", "kernel_2m",
            note="none: bounded by the kernel's zeroing (baseline)"),
        Row("fault, 2 MiB, sequential, recycled RAM", "seq_recycled_2m", "kernel_2m", 250.0),
        Row("read (sum), numpy in-RAM copy (reference, no BigFile)", "ram_sum", "memmap_sum"),
        Row("read (sum), BigFile_File zero-copy (default)", "bf_sum", "memmap_sum", 0.2),
        Row("read (sum), BigFile_File zero_copy=False (loadblk copies)", "bf_copy_sum",
            "memmap_sum"),
        Row(f"os.write of a {view}, no-op BigFile, 2 MiB blocks", "noop_write",
            "ram_write", note=NO_TARGET),
        Row(f"os.write of a {view}, BigFile_File zero-copy, cached file", "bf_write",
            "ram_write", note=NO_TARGET),
        Row(f"readinto a {view} (no-op BigFile, 2 MiB blocks) from a cached file",
            "noop_readinto", "ram_readinto", note=NO_TARGET),
        Row("a += 1; writeout, BigFile_File", "bf_add", "memmap_add"),
    )


def fmt(value: float | str, unit: str) -> str:
    """A measured value, or the errno name it failed with."""
    if isinstance(value, str):
        return value
    return f"{value:.1f} µs" if unit == "µs" else f"{value:.2f} GB/s"


def table(paths: dict[str, dict[str, object]], syscall_bytes: int) -> list[str]:
    """The Markdown table of both paths' results (`paths`: child outputs)."""
    head = " | ".join(PATH_TITLES[p] for p in PATHS)
    lines = [f"| measurement | {head} | baseline (same run: "
             f"{' / '.join(PATH_TITLES[p].split()[0] for p in PATHS)}) "
             "| ratio(s) | target met? |",
             "|---|" + "---:|" * len(PATHS) + "---|---|---|"]
    for row in rows(syscall_bytes):
        name, unit = BASELINES[row.base]
        cells, bases, ratios, verdicts = [], [], [], []
        for p in PATHS:
            out = paths[p]
            if "unavailable" in out:
                cells.append(f"unavailable: {out['unavailable']}")
                continue
            res: Results = out["results"]       # type: ignore[assignment]
            failures: dict[str, str] = out["failures"]     # type: ignore[assignment]
            value, base = res[row.key], res[row.base]
            assert isinstance(base, float)
            failed = failures.get(row.key)
            cells.append(fmt(value, unit) + (f" ({failed})" if failed else ""))
            bases.append(fmt(base, unit))
            tag = "S" if p == "sigsegv" else "U"
            if isinstance(value, str):
                ratios.append(f"{tag} —")
                if row.target is not None:
                    verdicts.append(f"{tag} {value}")
                continue
            ratio = value / base
            ratios.append(f"{tag} {ratio:.3g}×")
            if row.target is not None:
                met = value <= row.target if unit == "µs" else ratio >= row.target
                verdicts.append(f"{tag} {'met' if met else 'MISSED'}")
        if row.target is None:
            target = row.note
        else:
            limit = f"≤ {row.target:g} µs" if unit == "µs" else f"≥ {row.target:g}×"
            target = f"{limit}: {', '.join(verdicts)}"
        lines.append(f"| {row.what} | {' | '.join(cells)} | {name}: {' / '.join(bases)} "
                     f"| {' · '.join(ratios)} | {target} |")
    return lines


def machine() -> str:
    """CPU, kernel, Python and NumPy versions, and the time now."""
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


def main(argv: list[str] | None = None) -> None:
    """Parse the arguments; measure both paths in children and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="512M",
                        help="file size for the read/write runs (default 512M)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement")
    parser.add_argument("--dir", default=None, help="directory for the files "
                        "(default: the system's temporary directory)")
    parser.add_argument("--path-only", choices=PATHS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    size = ram_parse_size(args.size) // FILE_BLKSIZE * FILE_BLKSIZE
    if size == 0:
        parser.error(f"--size must be at least {FILE_BLKSIZE} bytes")
    if args.path_only is not None:
        path_only(args.path_only, size, args.repeat, args.dir)
        return

    print(f"# bench_virtmem: {machine()}")
    print(f"# file {size // MiB} MiB, RAM capacity {RAM_CAPACITY // MiB} MiB, "
          f"best of {args.repeat}; load average (1 min) at start "
          f"{os.getloadavg()[0]:.1f}", flush=True)
    paths = {p: run_child(p, args) for p in PATHS}
    for p in PATHS:
        load = paths[p].get("load")
        if load is not None:
            print(f"# {PATH_TITLES[p]} child: load average {load[0]:.1f} at start, "
                  f"{load[1]:.1f} at end")
    print("# baseline and ratio cells: SIGSEGV child / userfaultfd child (S, U)\n")
    print("\n".join(table(paths, min(SYSCALL_SIZE, size))))


if __name__ == "__main__":
    main()
