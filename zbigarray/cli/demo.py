"""``python -m zbigarray demo``: an array bigger than RAM, in ZODB, end to end.

Creates a FileStorage with a ZBigArray several times larger than the RAM
capacity it sets, fills it chunk by chunk, re-opens it, computes statistics out
of core, appends, shows an abort undoing a change, and reports sizes, timings
and throughput.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import zc.lockfile

from zbigarray.cli._errors import CliError
from zbigarray.cli._progress import Progress
from zbigarray.cli._units import fmt_bytes as _fmt_bytes

ROW = 1024                       # float64 per row: 8 KiB rows
MiB = 1 << 20


def _size(text: str) -> int:
    from zbigarray.bigfile import ram_parse_size

    try:
        return int(ram_parse_size(text))
    except (ValueError, OverflowError) as e:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 512M, 1G): {e}") from e


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "demo", help="create, fill, re-read and append to an array bigger than RAM",
        description="Create a FileStorage in DIR holding a ZBigArray of SIZE bytes, with "
                    "the RAM for pages limited to RAM bytes (SIZE several times RAM shows "
                    "out-of-core work); fill it chunk by chunk, re-open it, compute "
                    "statistics, append, show an abort, and print timings.")
    p.add_argument("--path", type=Path, default=Path("zbigarray-demo"), metavar="DIR",
                   help="directory for the database (default: ./zbigarray-demo; "
                        "an earlier demo.fs there is replaced)")
    p.add_argument("--size", type=_size, default=_size("1G"),
                   help="array size, with K/M/G suffix (default: 1G)")
    p.add_argument("--ram", type=_size, default=_size("64M"),
                   help="RAM capacity for pages (default: 64M)")
    p.set_defaults(run=main, parser=p)


def main(args: argparse.Namespace) -> int:
    """Check the demo's arguments, set the RAM capacity, run it."""
    if args.ram < 4 << 20:
        args.parser.error("--ram must be at least 4M (two 2 MiB blocks)")
    if args.size < 1 << 20:
        args.parser.error("--size must be at least 1M")
    # The default RAM reads its capacity once, when first used.
    os.environ["ZBIGARRAY_RAM_MAX"] = str(args.ram)
    run(args.path, args.size, args.ram)
    return 0


def _lock(path: Path) -> zc.lockfile.LockFile:
    """Take the demo's lock of directory `path` (created if missing).

    Held for the whole run: the demo replaces demo.fs, closes it and opens
    it again, and another demo in the same directory must wait neither for
    nor delete what this one is doing.
    """
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CliError(f"--path {path}: cannot create the directory: {e.strerror}") from None
    if not path.is_dir():
        raise CliError(f"--path {path}: not a directory")
    try:
        return zc.lockfile.LockFile(str(path / "demo.lock"))
    except zc.lockfile.LockError:
        raise CliError(f"--path {path}: another demo is running there; wait for it "
                       f"or choose another --path") from None
    except OSError as e:
        raise CliError(f"--path {path}: cannot write there: {e.strerror}") from None


def run(path: Path, size: int, ram: int) -> None:
    """Run the demo in directory `path` with an array of `size` bytes and a
    RAM capacity of `ram` bytes.

    Raises
    ------
    CliError
        `path` cannot hold the database, or another process uses it.
    """
    from zbigarray.bigfile import ram_default

    capacity = ram_default().capacity
    if capacity != ram:
        raise RuntimeError(f"the default RAM already has capacity {capacity}; "
                           "run the demo in a fresh process")
    lock = _lock(path)
    try:
        _run(path, size, ram)
    finally:
        lock.close()


def _run(path: Path, size: int, ram: int) -> None:
    import transaction
    import ZODB
    from ZODB.FileStorage import FileStorage

    from zbigarray.bigarray.array_zodb import ZBigArray
    from zbigarray.storage import open_db

    fs = path / "demo.fs"
    nrows = size // (ROW * 8)
    chunk_rows = max(1, (ram // 4) // (ROW * 8))      # dirty data per commit: RAM/4
    print(f"zbigarray demo: a {_fmt_bytes(nrows * ROW * 8)} float64 array "
          f"({nrows} x {ROW}) with {_fmt_bytes(ram)} of RAM, in {fs}")

    try:
        # create=True replaces an earlier demo.fs, once its lock is ours: a
        # process still using that file (a server, a reader) keeps it.
        db = ZODB.DB(FileStorage(str(fs), create=True))
    except zc.lockfile.LockError:
        raise CliError(f"{fs} is in use by another process; stop it or choose "
                       f"another --path") from None
    root = db.open().root()
    root["A"] = A = ZBigArray((nrows, ROW), np.float64)
    transaction.commit()

    bar = Progress("fill+commit", nrows * ROW * 8, final_line=True)
    for lo in range(0, nrows, chunk_rows):
        hi = min(lo + chunk_rows, nrows)
        A[lo:hi] = np.arange(lo, hi, dtype=np.float64)[:, None]
        transaction.commit()
        bar.update(hi * ROW * 8)
    bar.close()
    t_fill = time.perf_counter() - bar.t0
    db.close()

    db = open_db(str(fs))
    A = db.open().root()["A"]
    bar = Progress("read stats ", nrows * ROW * 8, final_line=True)
    total = 0.0
    lo_min, hi_max = np.inf, -np.inf
    for lo in range(0, nrows, chunk_rows):
        hi = min(lo + chunk_rows, nrows)
        block = A[lo:hi]
        total += float(block.sum())
        lo_min = min(lo_min, float(block.min()))
        hi_max = max(hi_max, float(block.max()))
        bar.update(hi * ROW * 8)
    bar.close()
    t_read = time.perf_counter() - bar.t0
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
