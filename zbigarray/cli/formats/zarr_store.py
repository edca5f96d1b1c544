"""Zarr stores (a ``.zarr`` directory) through zarr: one array at the
store's root, written and read by selections of the array's pieces; its
attributes are JSON already."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import zarr

from zbigarray.cli._errors import CliError
from zbigarray.cli._pieces import Index
from zbigarray.cli.formats import json_attrs


class Writer:
    """Writes an array into a new zarr store (the format zarr writes by
    default; chunks of its choosing)."""

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: np.dtype, order: str,
                 dataset: str) -> None:
        self.z = zarr.open_array(str(path), mode="w-", shape=shape, dtype=dtype)

    def write(self, index: Index, data: np.ndarray) -> None:
        self.z[index] = data

    def set_attrs(self, attrs: dict[str, Any]) -> list[str]:
        self.z.attrs.update(attrs)
        return []

    def close(self) -> None:
        """Nothing to finish: each write stored its chunks."""


class Reader:
    """Reads the array at the root of a zarr store."""

    def __init__(self, path: Path, dataset: str | None) -> None:
        try:
            self.z = zarr.open_array(str(path), mode="r", path=dataset or "")
        except Exception as e:      # zarr's errors differ between versions
            raise CliError(f"{path}: no zarr array there ({type(e).__name__}: {e})") from None
        self.shape, self.dtype, self.order = tuple(self.z.shape), np.dtype(self.z.dtype), "C"

    def read(self, index: Index) -> np.ndarray:
        return np.asarray(self.z[index])

    def attrs(self) -> tuple[dict[str, Any], list[str]]:
        return json_attrs(dict(self.z.attrs).items())

    def close(self) -> None:
        """Nothing to close: zarr reads chunk by chunk."""
