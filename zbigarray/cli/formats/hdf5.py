"""HDF5 files (``.h5``, ``.hdf5``) through h5py: one dataset, written and
read by selections of the array's pieces.

HDF5 attributes hold numbers, strings and homogeneous arrays; other
JSON values (``None``, dicts, mixed lists) are stored as their JSON text.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from zbigarray.cli._errors import CliError
from zbigarray.cli._pieces import Index
from zbigarray.cli.formats import json_attrs


def _plain(value: Any) -> Any:
    """An HDF5 attribute's value as Python data: arrays as lists, byte
    strings as text."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


class Writer:
    """Writes dataset `dataset` of a new HDF5 file."""

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: np.dtype, order: str,
                 dataset: str) -> None:
        self.f = h5py.File(path, "x")
        # Chunked: HDF5 then writes each piece without holding the dataset.
        self.ds = self.f.create_dataset(dataset, shape=shape, dtype=dtype,
                                        chunks=True if shape and all(shape) else None)

    def write(self, index: Index, data: np.ndarray) -> None:
        self.ds[index] = data

    def set_attrs(self, attrs: dict[str, Any]) -> list[str]:
        warnings = []
        for key, value in attrs.items():
            try:
                self.ds.attrs[key] = value
            except (TypeError, ValueError):
                self.ds.attrs[key] = json.dumps(value)
                warnings.append(f"attrs[{key!r}] stored as JSON text (HDF5 has no such type)")
        return warnings

    def close(self) -> None:
        self.f.close()


class Reader:
    """Reads dataset `dataset` of an HDF5 file (the only one, when None)."""

    def __init__(self, path: Path, dataset: str | None) -> None:
        try:
            self.f = h5py.File(path, "r")
        except OSError as e:
            raise CliError(f"{path}: not an HDF5 file ({e})") from None
        if dataset is None:
            names: list[str] = []
            self.f.visititems(lambda name, obj: names.append(name)
                              if isinstance(obj, h5py.Dataset) else None)
            if len(names) != 1:
                self.f.close()
                raise CliError(f"{path}: holds {len(names)} datasets "
                               f"({', '.join(names[:10]) or 'none'}); choose one with --dataset")
            dataset = names[0]
        ds = self.f.get(dataset)
        if not isinstance(ds, h5py.Dataset):
            self.f.close()
            raise CliError(f"{path}: no dataset {dataset!r}")
        self.ds = ds
        self.shape, self.dtype, self.order = tuple(ds.shape), ds.dtype, "C"

    def read(self, index: Index) -> np.ndarray:
        return np.asarray(self.ds[index])

    def attrs(self) -> tuple[dict[str, Any], list[str]]:
        return json_attrs((key, _plain(value)) for key, value in self.ds.attrs.items())

    def close(self) -> None:
        self.f.close()
