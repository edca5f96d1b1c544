"""ZODB layer timings: run ``python benchmarks/bench_zodb.py`` from the repo root.

Measures, on a 1 GiB float64 ZBigArray in a FileStorage (2 MiB blocks):

1. fill + commit throughput (MiB/s), ZBlk0;
2. full read (sum) in a fresh process, FileStorage in the OS page cache, vs
   ``numpy.memmap`` of a raw file with the same bytes (same run; ratio);
3. bytes written to the storage per changed element, ZBlk0 and ZBlk1
   (one element changed in a full block);
4. commit time for one changed element in the 1 GiB array.

Prints one line per result.  Not part of the test suite.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SIZE = 1 << 30
N = SIZE // 8
CHUNK = 64 << 20


def _child(code: str) -> float:
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True,
                         capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)}).stdout
    return float(out.split()[-1])


def main() -> None:
    import transaction

    from zbigarray.bigarray.array_zodb import ZBigArray
    from zbigarray.storage import open_db

    tmp = Path(tempfile.mkdtemp(prefix="bench_zodb-"))
    for fmt in ("ZBlk0", "ZBlk1"):
        os.environ["ZBIGARRAY_ZBLK_FMT"] = fmt
        fs = tmp / f"{fmt}.fs"
        db = open_db(str(fs))
        root = db.open().root()
        root["A"] = A = ZBigArray(N, np.float64)
        transaction.commit()
        t0 = time.perf_counter()
        step = CHUNK // 8
        for lo in range(0, N, step):
            A[lo:lo + step] = np.arange(lo, lo + step, dtype=np.float64)
            transaction.commit()
        t = time.perf_counter() - t0
        print(f"{fmt}: fill+commit 1 GiB: {t:.2f} s = {SIZE / t / 2**20:.0f} MiB/s")
        before = os.path.getsize(fs)
        t0 = time.perf_counter()
        A[N // 2 + 12345] = -1.0
        transaction.commit()
        t = time.perf_counter() - t0
        grown = os.path.getsize(fs) - before
        print(f"{fmt}: one changed element: commit {t * 1e3:.1f} ms, "
              f"storage grew {grown} bytes")
        db.close()

    # Full read in fresh processes: ZBigArray (ZBlk0 file) vs numpy.memmap.
    raw = tmp / "raw.bin"
    np.arange(N, dtype=np.float64).tofile(raw)
    zread = f"""
import time, numpy as np, transaction
from zbigarray.storage import open_db
db = open_db({str(tmp / 'ZBlk0.fs')!r}); A = db.open().root()["A"]
t0 = time.perf_counter(); s = 0.0
for lo in range(0, {N}, {CHUNK // 8}): s += float(A[lo:lo + {CHUNK // 8}].sum())
print(time.perf_counter() - t0)
"""
    mread = f"""
import time, numpy as np
m = np.memmap({str(raw)!r}, np.float64, "r")
t0 = time.perf_counter(); s = 0.0
for lo in range(0, {N}, {CHUNK // 8}): s += float(m[lo:lo + {CHUNK // 8}].sum())
print(time.perf_counter() - t0)
"""
    _child(zread)          # warm the OS page cache for both files
    _child(mread)
    tz = min(_child(zread) for _ in range(3))
    tm = min(_child(mread) for _ in range(3))
    print(f"full read 1 GiB, fresh process, files in OS cache: ZBigArray {tz:.2f} s "
          f"({SIZE / tz / 2**20:.0f} MiB/s), numpy.memmap {tm:.2f} s "
          f"({SIZE / tm / 2**20:.0f} MiB/s), ratio {tz / tm:.1f}x")
    for p in tmp.iterdir():
        p.unlink()
    tmp.rmdir()


if __name__ == "__main__":
    main()
