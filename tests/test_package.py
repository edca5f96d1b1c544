"""The package's public face: the names API.md promises, lazy imports, and
what the distribution says about itself (version, typing, license)."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.version import Version

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


ROOT = Path(__file__).resolve().parent.parent


def test_version_is_written_once_and_is_the_installed_one() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert str(Version(zbigarray.__version__)) == zbigarray.__version__    # PEP 440, normalized
    assert importlib.metadata.version("zbigarray") == zbigarray.__version__


def test_the_whole_package_is_marked_typed() -> None:
    # PEP 561: one py.typed at the top covers every subpackage.
    package = Path(zbigarray.__file__).parent
    assert (package / "py.typed").is_file()
    assert sorted(p.relative_to(package).as_posix() for p in package.rglob("py.typed")) == ["py.typed"]


def test_license_is_an_spdx_expression_with_its_file() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT"
    assert all((ROOT / f).is_file() for f in project["license-files"])
    assert "MIT License" in (ROOT / "LICENSE").read_text()
