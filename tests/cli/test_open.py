"""Databases named as paths: ``open_db`` takes a ``pathlib.Path`` as the
command line takes a str."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import transaction

from zbigarray import ZBigArray, open_db


def test_open_db_takes_a_path(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "data.fs"
    db = open_db(path)
    try:
        db.open().root()["A"] = ZBigArray((3,), np.int8)
        transaction.commit()
    finally:
        transaction.abort()
        db.close()
    assert path.is_file()
    db = open_db(str(path))         # the same database, named by a str
    try:
        assert db.open().root()["A"].shape == (3,)
    finally:
        db.close()
    with pytest.raises(TypeError, match="str or a path"):
        open_db(b"data.fs")         # type: ignore[arg-type]
