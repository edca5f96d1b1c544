"""The commands against a ZEO server: DB as a ``zeo://`` URI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.cli.conftest import assert_one_line_error, zb
from tests.storage.conftest import start_zeo, stop_zeo


@pytest.mark.zeo
@pytest.mark.subprocess
def test_commands_over_zeo(tmp_path: Path) -> None:
    proc, addr = start_zeo(tmp_path / "zeo.fs")
    uri = f"zeo://{addr}?wait_timeout=20"
    try:
        a = np.arange(200_000, dtype=np.int32).reshape(1000, 200)
        np.save(tmp_path / "a.npy", a)
        r = zb("import", uri, "grp/a", tmp_path / "a.npy")
        assert r.returncode == 0, r.stderr
        r = zb("ls", uri)
        assert r.returncode == 0, r.stderr
        assert r.stdout.splitlines()[1].split()[:3] == ["grp/a", "1000x200", "int32"]
        r = zb("info", uri, "grp/a")
        assert r.returncode == 0 and "zbigarray import a.npy -> grp/a" in r.stdout, r.stderr
        r = zb("export", uri, "grp/a", tmp_path / "out.npy")
        assert r.returncode == 0, r.stderr
        assert np.array_equal(np.load(tmp_path / "out.npy"), a)
        assert zb("rm", uri, "grp/a").returncode == 0
        r = zb("pack", uri)
        assert r.returncode == 0, r.stderr
        assert zb("ls", uri).stdout.strip() == "no arrays under the root"
        assert_one_line_error(zb("info", uri, "grp/a"), "info", "no such array")
    finally:
        stop_zeo(proc)
