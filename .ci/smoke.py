"""Smoke test of an installed wheel, run by .ci/run in a fresh venv.

Run from a directory outside the source tree, so that the package imported is
the installed one: it must work with nothing but the wheel and its
dependencies (no sources, no build products of the checkout).
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import tempfile

import numpy as np
import transaction

import zbigarray
from zbigarray import ZBigArray, open_db

here = os.path.dirname(zbigarray.__file__)
assert not os.path.abspath(here).startswith(os.path.abspath(os.getcwd())), here
assert zbigarray.__version__ == importlib.metadata.version("zbigarray"), (
    zbigarray.__version__, importlib.metadata.version("zbigarray"))

with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "smoke.fs")
    db = open_db(path)
    conn = db.open()
    conn.root()["A"] = A = ZBigArray((1000, 1000), np.float64, blksize=64 * 1024)
    transaction.commit()
    A[10:20] = 7.0
    A.append(np.ones((5, 1000)))
    transaction.commit()
    conn.close()
    db.close()

    db = open_db(path)
    A = db.open().root()["A"]
    assert A.shape == (1005, 1000), A.shape
    assert float(A[10:20].sum()) == 7.0 * 10 * 1000
    assert float(A[:10].sum()) == 0.0 and (A[-5:] == 1).all()
    db.close()

# The console script and `python -m` both start.
for cmd in (["zbigarray", "--help"], [sys.executable, "-m", "zbigarray", "--help"]):
    exe = os.path.join(os.path.dirname(sys.executable), cmd[0]) if cmd[0] == "zbigarray" else cmd[0]
    r = subprocess.run([exe, *cmd[1:]], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "demo" in r.stdout, (cmd, r.returncode, r.stdout, r.stderr)

print(f"smoke test of zbigarray {zbigarray.__version__} from {here}: ok")
