"""The file formats ``export`` writes and ``import`` reads, chosen by the
file name's suffix: ``.npy`` (NumPy, always), ``.h5``/``.hdf5`` (h5py) and
``.zarr`` (zarr), the last two when their package is installed.

Each format is a module with a ``Writer`` and a ``Reader``: both work piece
by piece (:mod:`zbigarray.cli._pieces`), so memory stays bounded whatever
the array's size.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from zbigarray.bigarray._attrs import json_value
from zbigarray.cli._errors import CliError
from zbigarray.cli._pieces import Index

# suffix -> (module of this package, package it needs)
FORMATS: dict[str, tuple[str, str | None]] = {
    ".npy": ("npy", None),
    ".h5": ("hdf5", "h5py"),
    ".hdf5": ("hdf5", "h5py"),
    ".zarr": ("zarr_store", "zarr"),
}


class Writer(Protocol):
    """Writes one array, piece by piece in the array's order."""

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: np.dtype, order: str,
                 dataset: str) -> None: ...

    def write(self, index: Index, data: np.ndarray) -> None:
        """Store `data` as ``array[index]``."""

    def set_attrs(self, attrs: dict[str, Any]) -> list[str]:
        """Store the array's metadata; return warnings for what could not
        be stored as it is."""

    def close(self) -> None:
        """Finish the file."""


class Reader(Protocol):
    """Reads one array, piece by piece in its order."""

    shape: tuple[int, ...]
    dtype: np.dtype
    order: str

    def __init__(self, path: Path, dataset: str | None) -> None: ...

    def read(self, index: Index) -> np.ndarray:
        """``array[index]``."""

    def attrs(self) -> tuple[dict[str, Any], list[str]]:
        """The file's metadata for the array, and warnings for what was
        left out (not JSON-compatible)."""

    def close(self) -> None:
        """Close the file."""


def json_attrs(items: Iterable[tuple[str, Any]]) -> tuple[dict[str, Any], list[str]]:
    """The JSON-compatible ``(key, value)`` of `items` as a dict, and a
    warning for each other one (left out): what ``Reader.attrs`` returns."""
    out, warnings = {}, []
    for key, value in items:
        try:
            out[key] = json_value(value, f"attrs[{key!r}]")
        except TypeError as e:
            warnings.append(f"{e}: not imported")
    return out, warnings


def _module(path: Path) -> Any:
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise CliError(f"{path}: unknown format {suffix or '(no suffix)'!r}; "
                       f"known: {', '.join(FORMATS)}")
    name, needs = FORMATS[suffix]
    if needs is not None:
        try:
            importlib.import_module(needs)
        except ImportError:
            raise CliError(f"{path}: {suffix} files need the {needs} package "
                           f"(pip install {needs})") from None
    return importlib.import_module(f"{__name__}.{name}")


def writer_class(path: Path) -> type[Writer]:
    """The :class:`Writer` for `path`'s suffix (raises :class:`CliError`)."""
    return _module(path).Writer  # type: ignore[no-any-return]


def reader_class(path: Path) -> type[Reader]:
    """The :class:`Reader` for `path`'s suffix (raises :class:`CliError`)."""
    return _module(path).Reader  # type: ignore[no-any-return]
