"""The package's public face: the names API.md promises, and lazy imports."""

from __future__ import annotations

import subprocess
import sys

import pytest

import zbigarray


def test_top_level_reexports_the_main_classes() -> None:
    from zbigarray.bigarray import BigArray
    from zbigarray.bigarray.array_ram import RAMArray
    from zbigarray.bigarray.array_zodb import ZBigArray
    from zbigarray.storage import open_db
    from zbigarray.storage.file_zodb import ZBigFile

    assert zbigarray.BigArray is BigArray
    assert zbigarray.RAMArray is RAMArray
    assert zbigarray.ZBigArray is ZBigArray
    assert zbigarray.ZBigFile is ZBigFile
    assert zbigarray.open_db is open_db
    assert set(zbigarray.__all__) <= set(dir(zbigarray))


def test_unknown_top_level_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_name"):
        zbigarray.no_such_name  # noqa: B018


@pytest.mark.parametrize("module, names", [
    ("zbigarray.bigfile", ["BigFile", "BigFileH", "VMA", "RAM", "WRITEOUT_STORE",
                           "WRITEOUT_MARKSTORED", "ram_reclaim"]),
    ("zbigarray.bigfile.file_file", ["BigFile_File"]),
    ("zbigarray.bigarray", ["BigArray", "ArrayRef"]),
    ("zbigarray.bigarray.array_ram", ["RAMArray"]),
    ("zbigarray.bigarray.array_zodb", ["ZBigArray"]),
    ("zbigarray.storage", ["open_db"]),
    ("zbigarray.storage.file_zodb", ["ZBigFile", "ZBlk0", "ZBlk1", "ZData"]),
])
def test_api_names_exist(module: str, names: list[str]) -> None:
    mod = __import__(module, fromlist=names)
    for name in names:
        assert hasattr(mod, name), f"{module}.{name} is missing"


@pytest.mark.subprocess
def test_importing_the_core_does_not_import_zodb() -> None:
    code = ("import sys, zbigarray.bigfile, zbigarray.bigarray; "
            "print(sorted(m for m in ('ZODB', 'transaction', 'BTrees') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert out.strip() == "[]"
