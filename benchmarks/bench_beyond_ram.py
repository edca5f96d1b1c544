"""Transactions bigger than RAM: run ``python benchmarks/bench_beyond_ram.py``
from the repo root.

Writes 1 GiB into a committed (all-zero) 1 GiB float64 ZBigArray, in 64 MiB
slices (``A[lo:hi] = value``), then one ``transaction.commit()``, on a
FileStorage in a temp dir.  Two configurations, each run in its own child
process because the RAM capacity is read at first use:

- ``ZBIGARRAY_RAM_MAX=64M``: the change does not fit; once the RAM is full of
  dirty pages the oldest are spilled into ZODB's savepoint storage;
- ``ZBIGARRAY_RAM_MAX=2G`` (baseline): the whole change stays in RAM until the
  commit.

Runs alternate between the two; the table gives the median of each (write
phase, commit phase, total as MiB/s), the ratio beyond-RAM / fits of the
throughputs, the peak RSS (VmHWM) of the child, and the time spent in spills
(inside the write phase).  ``--zblk1-repeat`` repeats the same with
``ZBIGARRAY_ZBLK_FMT=ZBlk1`` (0: skip).  Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

SIZE = 1 << 30
CHUNK = 64 << 20
CONFIGS = (("64M", 64 << 20), ("2G", 2 << 30))


def _status(key: str) -> int:
    """A size from /proc/self/status, in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def child(profile: str | None) -> None:
    sys.path.insert(0, str(REPO))
    import numpy as np
    import transaction

    from zbigarray.bigarray.array_zodb import ZBigArray
    from zbigarray.storage import _zblkfile, open_db

    # Time spent in spills (they run inside page faults of the write phase).
    spill = _zblkfile.ZBlkBigFile.spill
    acc = {"n": 0, "t": 0.0}

    def timed_spill(self):
        t0 = time.perf_counter()
        try:
            return spill(self)
        finally:
            acc["n"] += 1
            acc["t"] += time.perf_counter() - t0

    _zblkfile.ZBlkBigFile.spill = timed_spill

    tmp = Path(tempfile.mkdtemp(prefix="bench_beyond_ram-"))
    try:
        db = open_db(str(tmp / "data.fs"))
        root = db.open().root()
        n = SIZE // 8
        root["A"] = A = ZBigArray(n, np.float64)
        transaction.commit()

        def run():
            t0 = time.perf_counter()
            step = CHUNK // 8
            for k, lo in enumerate(range(0, n, step)):
                A[lo:lo + step] = 1.0 + k
            t1 = time.perf_counter()
            acc["hwm_write"] = _status("VmHWM")
            transaction.commit()
            t2 = time.perf_counter()
            return t1 - t0, t2 - t1

        if profile:
            import cProfile
            prof = cProfile.Profile()
            tw, tc = prof.runcall(run)
            prof.dump_stats(profile)
        else:
            tw, tc = run()
        fs_size = os.path.getsize(tmp / "data.fs")
        db.close()
    finally:
        shutil.rmtree(tmp)
    print(json.dumps({"write": tw, "commit": tc, "hwm": _status("VmHWM"),
                      "hwm_write": acc["hwm_write"], "spills": acc["n"],
                      "spill_t": acc["t"], "fs_size": fs_size}))


def run_child(ram: str, fmt: str, profile: str | None = None) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "ZBIGARRAY_RAM_MAX": ram,
           "ZBIGARRAY_ZBLK_FMT": fmt}
    cmd = [sys.executable, __file__, "--child"]
    if profile:
        cmd += ["--profile", profile]
    out = subprocess.run(cmd, cwd=REPO, check=True, capture_output=True,
                         text=True, env=env).stdout
    return json.loads(out.splitlines()[-1])


def bench(fmt: str, repeat: int) -> None:
    res: dict[str, list[dict]] = {name: [] for name, _ in CONFIGS}
    for _ in range(repeat):
        for name, _cap in CONFIGS:
            r = run_child(name, fmt)
            res[name].append(r)
            total = r["write"] + r["commit"]
            print(f"  {fmt} RAM {name}: write {r['write']:.2f} s + commit "
                  f"{r['commit']:.2f} s = {SIZE / total / 2**20:.0f} MiB/s, "
                  f"VmHWM {r['hwm_write'] / 2**20:.0f} MiB after write, "
                  f"{r['hwm'] / 2**20:.0f} MiB after commit, spills {r['spills']} "
                  f"({r['spill_t']:.2f} s)", flush=True)

    def med(name, key):
        return statistics.median(r[key] for r in res[name])

    def rate(name):
        return statistics.median(SIZE / (r["write"] + r["commit"]) / 2**20
                                 for r in res[name])

    base = rate("2G")
    print(f"\n{fmt}, median of {repeat}:")
    print("| RAM capacity | write, s | commit, s | total MiB/s | ratio | "
          "peak RSS: write / write+commit | spills (time, s) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, _cap in CONFIGS:
        ratio = "1 (baseline)" if name == "2G" else f"{rate(name) / base:.2f}×"
        print(f"| {name} | {med(name, 'write'):.2f} | {med(name, 'commit'):.2f} | "
              f"{rate(name):.0f} | {ratio} | {med(name, 'hwm_write') / 2**20:.0f} / "
              f"{med(name, 'hwm') / 2**20:.0f} MiB | "
              f"{med(name, 'spills'):.0f} ({med(name, 'spill_t'):.2f}) |")
    print(flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=3, help="runs per configuration, ZBlk0")
    p.add_argument("--zblk1-repeat", type=int, default=2,
                   help="runs per configuration with ZBlk1 (0: skip)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--profile", metavar="FILE",
                   help="with --child: cProfile the write+commit into FILE")
    args = p.parse_args()
    if args.child:
        child(args.profile)
        return
    t0 = time.perf_counter()
    print(f"load average {os.getloadavg()[0]:.2f}")
    bench("ZBlk0", args.repeat)
    if args.zblk1_repeat:
        bench("ZBlk1", args.zblk1_repeat)
    print(f"load average {os.getloadavg()[0]:.2f}; "
          f"benchmark took {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
