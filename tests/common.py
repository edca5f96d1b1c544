"""Helpers shared by the whole test suite.

- :class:`MemFile`: an in-memory :class:`~zbigarray.bigfile.BigFile` that
  records every loadblk/storeblk call, the workhorse of the bigfile tests.
- :func:`pattern`: cheap, position-dependent block contents, so that a byte
  read from the wrong block or the wrong offset is detected.
- :func:`run_python`: run a snippet in a child interpreter, for behaviour that
  ends the process (fatal page faults, segfaults) or depends on the
  environment at import time.
- :func:`run_in_child`: run a test scenario in a child interpreter under a
  timeout, for scenarios whose failure mode is a deadlock.
"""

from __future__ import annotations

import mmap
import os
import subprocess
import sys
import textwrap
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from zbigarray.bigfile import BigFile

PAGESIZE: int = mmap.PAGESIZE
"""The OS page size: the smallest valid block size."""

REPO: Path = Path(__file__).resolve().parent.parent
"""Root of the source tree; child interpreters import zbigarray from here."""

Fill = Callable[[int, memoryview], None]


def fill_zeros(blk: int, buf: memoryview) -> None:
    """Fill `buf` with zeros: the content of a hole."""
    np.frombuffer(buf, np.uint8).fill(0)


def pattern(blk: int, blksize: int) -> np.ndarray:
    """Return the pattern content of block `blk` as uint64 words.

    Word ``i`` of block ``blk`` is ``(blk << 32) + i``: every 8-byte word of a
    file differs from every other, so misplaced data never compares equal.
    """
    return np.arange(blksize // 8, dtype=np.uint64) + np.uint64(blk << 32)


def fill_pattern(blk: int, buf: memoryview) -> None:
    """Fill `buf` with :func:`pattern` of block `blk`, as a loadblk would."""
    words = np.frombuffer(buf, np.uint64)
    words[:] = np.arange(words.size, dtype=np.uint64)
    words += np.uint64(blk << 32)


class MemFile(BigFile):
    """A BigFile held in a dict, counting its calls.

    Parameters
    ----------
    blksize
        Block size in bytes.
    blocks
        Initial content: block number -> ``blksize`` bytes.
    fill
        How blocks absent from `blocks` read (default: zeros, as a hole).

    Attributes
    ----------
    blocks : dict[int, bytes]
        The stored content; ``storeblk`` writes here.
    loads : collections.Counter
        Number of ``loadblk`` calls per block.
    loaded : list[int]
        Blocks in the order ``loadblk`` was called.
    stored : list[tuple[int, bytes]]
        ``(blk, data)`` in the order ``storeblk`` was called.
    """

    def __new__(cls, blksize: int, *args: Any, **kw: Any) -> MemFile:
        # BigFile's C state takes blksize only; subclasses add their own
        # constructor arguments, all handled by __init__.
        return BigFile.__new__(cls, blksize)

    def __init__(self, blksize: int, blocks: Mapping[int, bytes] | None = None,
                 fill: Fill | None = None) -> None:
        self.blocks: dict[int, bytes] = dict(blocks or {})
        self.fill: Fill = fill or fill_zeros
        self.loads: Counter[int] = Counter()
        self.loaded: list[int] = []
        self.stored: list[tuple[int, bytes]] = []
        # loadblk may run in several threads at once; a Counter update is not
        # atomic under the GIL.
        self._lock = threading.Lock()

    def loadblk(self, blk: int, buf: memoryview) -> None:
        with self._lock:
            self.loads[blk] += 1
            self.loaded.append(blk)
        data = self.blocks.get(blk)
        if data is None:
            self.fill(blk, buf)
        else:
            buf[:] = data

    def storeblk(self, blk: int, buf: memoryview) -> None:
        data = bytes(buf)
        with self._lock:
            self.stored.append((blk, data))
            self.blocks[blk] = data

    def content(self, blk: int) -> bytes:
        """Return what block `blk` reads as now (``blksize`` bytes)."""
        data = self.blocks.get(blk)
        if data is not None:
            return data
        buf = bytearray(self.blksize)
        self.fill(blk, memoryview(buf))
        return bytes(buf)


def run_python(code: str, *, env: Mapping[str, str] | None = None,
               timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run `code` in a fresh interpreter that imports zbigarray from the tree.

    The child gets no core dump (a crash is the expected result of several
    tests, and a core of a process with big mappings is slow to write) and no
    inherited ``PYTHONFAULTHANDLER``, so that each test decides about
    faulthandler itself.

    Parameters
    ----------
    code
        Python source; dedented.
    env
        Extra environment variables for the child.
    timeout
        Seconds; a child still running then is a hang and fails the test
        with :class:`subprocess.TimeoutExpired`.

    Returns
    -------
    subprocess.CompletedProcess
        With ``returncode`` (negative signal number if killed by a signal),
        ``stdout`` and ``stderr`` as text.
    """
    prologue = ("import resource\n"
                "resource.setrlimit(resource.RLIMIT_CORE, (0, 0))\n")
    child_env = {k: v for k, v in os.environ.items()
                 if k not in ("PYTHONFAULTHANDLER", "ZBIGARRAY_RAM_MAX")}
    child_env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO)] + ([os.environ["PYTHONPATH"]] if "PYTHONPATH" in os.environ else []))
    child_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-c", prologue + textwrap.dedent(code)],
        cwd=REPO, env=child_env, capture_output=True, text=True, timeout=timeout)


def run_in_child(func: Callable[..., None], *args: Any, timeout: float = 60) -> None:
    """Run module-level function `func(*args)` in a child interpreter.

    A deadlock in the code under test would freeze the whole test run if it
    happened in the test process; in a child it is a failure with the stacks
    of all its threads (faulthandler dumps them shortly before `timeout`).

    Raises
    ------
    AssertionError
        The child failed (its stderr is in the message) or hung.
    """
    code = (f"import faulthandler\n"
            f"faulthandler.dump_traceback_later({max(timeout - 5, 1)}, exit=True)\n"
            f"from {func.__module__} import {func.__name__}\n"
            f"{func.__name__}(*{args!r})\n")
    r = run_python(code, timeout=timeout)
    assert r.returncode == 0, f"{func.__name__}{args!r} failed " \
        f"(returncode {r.returncode}):\n{r.stderr}"


def run_on_terminal(args: list[str], timeout: float = 120) -> tuple[int, bytes]:
    """Run `args` (from the repo root) with stderr on a pseudo-terminal, as
    a user at a terminal would see it; return its exit status and what it
    wrote there (the terminal turns each newline into ``\\r\\n``)."""
    master, slave = os.openpty()
    try:
        r = subprocess.run(args, cwd=REPO, stdout=subprocess.PIPE, stderr=slave,
                           timeout=timeout)
        os.close(slave)
        tty = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:         # EIO: the child's end is closed
                break
            if not chunk:
                break
            tty += chunk
    finally:
        os.close(master)
    return r.returncode, tty
