"""``zbigarray ls`` and ``info``: what a database holds, and its history."""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import transaction
from ZODB.FileStorage import FileStorage

from tests.cli.conftest import assert_one_line_error, zb
from zbigarray import open_db


def _rows(stdout: str) -> dict[str, list[str]]:
    lines = stdout.splitlines()
    assert lines[0].split() == ["PATH", "SHAPE", "DTYPE", "ORDER", "BLKSIZE", "FORMAT",
                                "SIZE", "STORED"]
    return {line.split()[0]: line.split()[1:] for line in lines[1:]}


def test_ls_lists_arrays_under_groups_with_their_layout(sample_db: Path) -> None:
    r = zb("ls", sample_db)
    assert r.returncode == 0, r.stderr
    rows = _rows(r.stdout)
    assert list(rows) == ["a", "grp/b", "grp/z", "tree/c"]
    assert rows["a"][:5] == ["3000x16", "float64", "C", "128.0", "KiB"]
    assert rows["a"][5:8] == ["ZBlk0", "375.0", "KiB"]
    assert rows["grp/b"][:3] == ["10x100000", "int32", "F"]
    assert rows["grp/z"][5] == "ZBlk1"
    assert rows["tree/c"][5] == "-" and rows["tree/c"][-2:] == ["0", "B"]  # holes only
    # grp/b: 2000 bytes written in 3.8 MiB, the rest holes: little is stored.
    assert rows["grp/b"][-1] == "KiB" and float(rows["grp/b"][-2]) < 4

    r = zb("ls", sample_db, "grp")
    assert list(_rows(r.stdout)) == ["grp/b", "grp/z"]
    r = zb("ls", sample_db, "a")
    assert list(_rows(r.stdout)) == ["a"]


def test_ls_counts_the_bytes_stored(sample_db: Path) -> None:
    r = zb("ls", sample_db, "a")
    stored = _rows(r.stdout)["a"][-2:]
    # ZBlk0 records: the block bytes plus a few bytes of pickle each.
    assert stored[1] == "KiB" and 375.0 <= float(stored[0]) < 376.0


def test_info_shows_header_attrs_and_history(sample_db: Path) -> None:
    db = open_db(sample_db)
    try:
        root = db.open().root()
        for i in range(4):
            root["a"][i] = -i
            transaction.get().note(f"change {i}")
            transaction.commit()
        last = db.lastTransaction()
    finally:
        transaction.abort()
        db.close()
    r = zb("info", sample_db, "a", "--history", "3")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "shape       (3000, 16)" in out and "dtype       float64" in out
    assert "block size  128.0 KiB (131072 bytes)" in out
    assert "blocks      3 stored of 3 (ZBlk0: 3)" in out
    assert 'units: "m/s"' in out and "scale: 0.5" in out
    history = re.findall(r"^    ([0-9a-f]{16})  \S+ \S+  (.*)$", out, re.M)
    assert [what for _, what in history] == ["change 3", "change 2", "change 1"]
    assert history[0][0] == last.hex()

    r = zb("info", sample_db, "grp/z")
    assert "(ZBlk1: 2)" in r.stdout and "attrs       (none)" in r.stdout


def test_at_reads_a_past_revision(sample_db: Path) -> None:
    db = open_db(sample_db)
    try:
        first = db.lastTransaction()
        time.sleep(1.1)             # ISO times below have whole seconds
        root = db.open().root()
        root["a"].append(np.ones((100, 16)))
        root["a"].attrs["units"] = "km/s"
        del root["tree"]
        transaction.commit()
    finally:
        transaction.abort()
        db.close()
    fs = FileStorage(str(sample_db), read_only=True)
    try:
        when = [t for t in fs.iterator()][-2]      # the sample's last transaction
    finally:
        fs.close()
    import datetime

    from persistent.TimeStamp import TimeStamp
    iso = datetime.datetime.fromtimestamp(
        TimeStamp(when.tid).timeTime() + 0.5, datetime.timezone.utc).isoformat()

    now = _rows(zb("ls", sample_db).stdout)
    assert "tree/c" not in now and now["a"][0] == "3100x16"
    for at in (first.hex(), iso):
        past = _rows(zb("ls", sample_db, "--at", at).stdout)
        assert "tree/c" in past and past["a"][0] == "3000x16", at
    r = zb("info", sample_db, "a", "--at", first.hex())
    assert 'units: "m/s"' in r.stdout and f"as of --at {first.hex()}" in r.stdout
    # A time to come reads what is there now.
    assert _rows(zb("ls", sample_db, "--at", "2999-01-01T00:00").stdout)["a"][0] == "3100x16"


def test_read_commands_report_errors_in_one_line(sample_db: Path, tmp_path: Path) -> None:
    assert_one_line_error(zb("ls", tmp_path / "missing.fs"), "ls", "missing.fs",
                          "no such database file")
    assert not (tmp_path / "missing.fs").exists()
    assert_one_line_error(zb("info", sample_db, "grp/nothing"), "info", "grp/nothing",
                          "no such array or group")
    assert_one_line_error(zb("info", sample_db, "grp"), "info", "a group, not an array")
    assert_one_line_error(zb("ls", sample_db, "--at", "yesterday"), "ls", "--at",
                          "ISO 8601")
    assert_one_line_error(zb("ls", sample_db, "--at", "1999-01-01"), "ls", "nothing is kept")
    assert_one_line_error(zb("ls", tmp_path), "ls", "is a directory")
    garbage = tmp_path / "garbage.fs"
    garbage.write_bytes(b"not a FileStorage at all")
    r = zb("ls", garbage)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert len(r.stderr.splitlines()) == 1, r.stderr
    assert_one_line_error(zb("ls", "nosuchscheme://x"), "ls", "nosuchscheme")
    # No server listens on port 1 of loopback.
    assert_one_line_error(zb("ls", "zeo://127.0.0.1:1?wait_timeout=1"), "ls",
                          "ClientDisconnected")


def test_reading_a_database_another_process_holds(sample_db: Path) -> None:
    db = open_db(sample_db)         # holds the FileStorage's lock
    try:
        r = zb("ls", sample_db)
    finally:
        db.close()
    assert r.returncode == 0, r.stderr
    assert "a" in _rows(r.stdout)


def test_ls_on_an_empty_database(tmp_path: Path) -> None:
    open_db(tmp_path / "empty.fs").close()
    r = zb("ls", tmp_path / "empty.fs")
    assert r.returncode == 0 and r.stdout.strip() == "no arrays under the root"
