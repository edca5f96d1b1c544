"""``python -m zbigarray demo``: an array bigger than RAM, in ZODB, end to end.

Creates a FileStorage with a ZBigArray several times larger than the RAM
capacity it sets, fills it chunk by chunk, re-opens it, computes statistics out
of core, appends, shows an abort undoing a change, and reports sizes, timings
and throughput.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np

ROW = 1024                       # float64 per row: 8 KiB rows
MiB = 1 << 20


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    raise AssertionError


def _progress(what: str, done: int, total: int, t0: float) -> None:
    # A bar redrawn in place on a terminal; into a file or pipe, where "\r"
    # does not rewind, only the finished line.
    if done != total and not sys.stderr.isatty():
        return
    width = 30
    filled = width * done // total
    rate = done * ROW * 8 / max(time.perf_counter() - t0, 1e-9)
    sys.stderr.write(f"\r  {what} [{'#' * filled}{'.' * (width - filled)}] "
                     f"{100 * done // total:3d}%  {_fmt_bytes(rate)}/s ")
    if done == total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def run(path: Path, size: int, ram: int) -> None:
    """Run the demo in directory `path` with an array of `size` bytes and a
    RAM capacity of `ram` bytes."""
    import transaction

    from zbigarray.bigarray.array_zodb import ZBigArray
    from zbigarray.bigfile import ram_default
    from zbigarray.storage import open_db

    capacity = ram_default().capacity
    if capacity != ram:
        raise RuntimeError(f"the default RAM already has capacity {capacity}; "
                           "run the demo in a fresh process")
    path.mkdir(parents=True, exist_ok=True)
    fs = path / "demo.fs"
    for old in path.glob("demo.fs*"):
        old.unlink()
    nrows = size // (ROW * 8)
    chunk_rows = max(1, (ram // 4) // (ROW * 8))      # dirty data per commit: RAM/4
    print(f"zbigarray demo: a {_fmt_bytes(nrows * ROW * 8)} float64 array "
          f"({nrows} x {ROW}) with {_fmt_bytes(ram)} of RAM, in {fs}")

    db = open_db(str(fs))
    root = db.open().root()
    root["A"] = A = ZBigArray((nrows, ROW), np.float64)
    transaction.commit()

    t0 = time.perf_counter()
    for lo in range(0, nrows, chunk_rows):
        hi = min(lo + chunk_rows, nrows)
        A[lo:hi] = np.arange(lo, hi, dtype=np.float64)[:, None]
        transaction.commit()
        _progress("fill+commit", hi, nrows, t0)
    t_fill = time.perf_counter() - t0
    db.close()

    db = open_db(str(fs))
    A = db.open().root()["A"]
    t0 = time.perf_counter()
    total = 0.0
    lo_min, hi_max = np.inf, -np.inf
    for lo in range(0, nrows, chunk_rows):
        hi = min(lo + chunk_rows, nrows)
        block = A[lo:hi]
        total += float(block.sum())
        lo_min = min(lo_min, float(block.min()))
        hi_max = max(hi_max, float(block.max()))
        _progress("read stats ", hi, nrows, t0)
    t_read = time.perf_counter() - t0
    mean = total / (nrows * ROW)
    expect = (nrows - 1) / 2
    print(f"  statistics out of core: sum={total:.6g} mean={mean:.6g} "
          f"min={lo_min:.6g} max={hi_max:.6g}  (expected mean {expect:.6g})")
    if abs(mean - expect) > 1e-6 * max(1.0, expect):
        raise RuntimeError("statistics do not match what was written")

    t0 = time.perf_counter()
    A.append(np.full((chunk_rows, ROW), -1.0))
    transaction.commit()
    t_append = time.perf_counter() - t0
    print(f"  appended {chunk_rows} rows: shape now {A.shape} ({t_append:.3f} s)")

    A[0, 0] = 1e9
    print(f"  A[0, 0] set to {A[0, 0]:.6g}, then transaction.abort() ...", end="")
    transaction.abort()
    print(f" A[0, 0] is {A[0, 0]:.6g} again")
    db.close()

    nbytes = nrows * ROW * 8
    print(f"  array {_fmt_bytes(nbytes)} = {nbytes / ram:.1f} x RAM capacity; "
          f"database file {_fmt_bytes(os.path.getsize(fs))}")
    print(f"  fill+commit {t_fill:.2f} s ({_fmt_bytes(nbytes / t_fill)}/s), "
          f"re-read out of core {t_read:.2f} s ({_fmt_bytes(nbytes / t_read)}/s)")
