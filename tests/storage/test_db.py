"""open_db: paths, zodburi URIs, bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import transaction

from zbigarray.storage import open_db


def test_plain_path_opens_a_filestorage(tmp_path: Path) -> None:
    path = tmp_path / "x.fs"
    db = open_db(str(path))
    try:
        conn = db.open()
        conn.root()["k"] = 1
        transaction.commit()
        conn.close()
    finally:
        db.close()
    assert path.exists()
    db = open_db(str(path))
    try:
        assert db.open().root()["k"] == 1
    finally:
        transaction.abort()
        db.close()


def test_plain_path_creates_missing_directories(tmp_path: Path) -> None:
    path = tmp_path / "new" / "dir" / "x.fs"
    open_db(str(path)).close()
    assert path.exists()


def test_file_and_memory_uris(tmp_path: Path) -> None:
    for uri in (f"file://{tmp_path}/y.fs", "memory://"):
        db = open_db(uri)
        try:
            conn = db.open()
            conn.root()["k"] = 2
            transaction.commit()
        finally:
            transaction.abort()
            db.close()
    assert (tmp_path / "y.fs").exists()


@pytest.mark.parametrize("uri", ["nosuchscheme://x", "file://?nosuchparam=1"])
def test_bad_uri_is_a_valueerror_naming_it(uri: str) -> None:
    with pytest.raises(ValueError, match="open_db"):
        open_db(uri)


def test_not_a_string_is_a_typeerror() -> None:
    with pytest.raises(TypeError):
        open_db(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        open_db("")


@pytest.mark.zeo
def test_zeo_uri(zeo_server: str) -> None:
    db = open_db(f"zeo://{zeo_server}")
    try:
        conn = db.open()
        conn.root()["k"] = 3
        transaction.commit()
        conn.close()
        db2 = open_db(f"zeo://{zeo_server}")
        try:
            assert db2.open().root()["k"] == 3
        finally:
            transaction.abort()
            db2.close()
    finally:
        db.close()
