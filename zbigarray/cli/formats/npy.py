"""``.npy`` files (NumPy's format): a header, then the elements in C or
Fortran order, written and read sequentially through one reused buffer.

Neither side maps the file (``numpy.load(mmap_mode=...)``): mapped pages
count towards the process's memory until the kernel drops them, and a
streaming copy must not grow with the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.lib import format as npformat

from zbigarray.cli._errors import CliError
from zbigarray.cli._pieces import Index, piece_shape


class Writer:
    """Writes a ``.npy`` file in the array's own order (no transposition)."""

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: np.dtype, order: str,
                 dataset: str) -> None:
        self.order: Literal["C", "F"] = "F" if order == "F" else "C"
        self.f = open(path, "xb")
        header = {"descr": npformat.dtype_to_descr(dtype), "fortran_order": order == "F",
                  "shape": shape}
        try:
            npformat.write_array_header_1_0(self.f, header)
        except ValueError:      # a header of more than 64 KiB
            npformat.write_array_header_2_0(self.f, header)

    def write(self, index: Index, data: np.ndarray) -> None:
        # tobytes copies the piece (at most one step) into a buffer the
        # kernel reads: a write(2) straight from a view would fault pages
        # in from inside the system call, which only a userfaultfd serves.
        self.f.write(data.tobytes(order=self.order))

    def set_attrs(self, attrs: dict[str, Any]) -> list[str]:
        return ["a .npy file has no place for attrs: not exported"] if attrs else []

    def close(self) -> None:
        self.f.close()


class Reader:
    """Reads a ``.npy`` file in its own order."""

    def __init__(self, path: Path, dataset: str | None) -> None:
        if dataset is not None:
            raise CliError(f"{path}: a .npy file holds one array: no --dataset")
        self.f = open(path, "rb")
        try:
            version = npformat.read_magic(self.f)
            read_header = (npformat.read_array_header_1_0 if version == (1, 0)
                           else npformat.read_array_header_2_0)
            self.shape, fortran, self.dtype = read_header(self.f)
        except ValueError as e:
            self.f.close()
            raise CliError(f"{path}: not a .npy file: {e}") from None
        self.order: Literal["C", "F"] = "F" if fortran else "C"
        self.path = path

    def read(self, index: Index) -> np.ndarray:
        shape = piece_shape(self.shape, index)
        raw = bytearray(int(np.prod(shape)) * self.dtype.itemsize)
        if self.f.readinto(raw) != len(raw):
            raise CliError(f"{self.path}: the file ends early (truncated?)")
        return np.frombuffer(raw, self.dtype).reshape(shape, order=self.order)

    def attrs(self) -> tuple[dict[str, Any], list[str]]:
        return {}, []

    def close(self) -> None:
        self.f.close()
