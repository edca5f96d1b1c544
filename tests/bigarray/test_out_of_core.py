"""Out of core: summing a 1 GiB BigArray under a 64 MiB RAM capacity keeps
the process's memory near the capacity."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Runs in a child so that ZBIGARRAY_RAM_MAX sets the default RAM's capacity
# (read once per process) and the peak RSS (VmHWM) is this workload's alone.
CHILD = textwrap.dedent(
    """
    import numpy as np
    from zbigarray.bigarray import BigArray
    from zbigarray.bigfile import BigFile, ram_default

    class Ones(BigFile):
        def loadblk(self, blk, buf):
            np.frombuffer(buf, dtype=np.uint8).fill(1)

        def storeblk(self, blk, buf):
            raise AssertionError("nothing is written")

    def rss(field):
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) * 1024 for l in f if l.startswith(field + ":"))

    def reset_peak():
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS

    GiB, MiB = 1 << 30, 1 << 20
    A = BigArray((GiB // 8, 8), np.uint8, Ones(2 * MiB).fileh_open())

    reset_peak()
    base = rss("VmRSS")
    total = sum(int(A[i:i + 4 * MiB].sum()) for i in range(0, len(A), 4 * MiB))
    assert total == GiB, total
    print("slices", rss("VmHWM") - base)
    # RSS counts only page memory that is mapped; pages of unmapped views
    # live on in the RAM's memfd, so check the RAM's own account too.
    print("ram_used", ram_default().stats()["used"])

    reset_peak()
    base = rss("VmRSS")
    assert int(A[:].sum()) == GiB
    print("whole", rss("VmHWM") - base)
    print("ram_used_whole", ram_default().stats()["used"])
    """
)


@pytest.mark.subprocess
def test_sum_of_1gib_keeps_rss_near_a_64mib_capacity():
    env = dict(os.environ, ZBIGARRAY_RAM_MAX="64M")
    out = subprocess.run(
        [sys.executable, "-c", CHILD], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120, check=True
    ).stdout
    measured = {k: int(v) for k, v in (line.split() for line in out.splitlines())}
    MiB = 1 << 20
    assert measured["ram_used"] <= 64 * MiB and measured["ram_used_whole"] <= 64 * MiB, measured
    # RSS: the capacity plus room for interpreter noise.
    assert measured["slices"] < 64 * MiB + 32 * MiB, measured
    assert measured["whole"] < 64 * MiB + 32 * MiB, measured
