"""Stand-in for wendelin.core's ZBigArray (see :mod:`zbigarray.storage.wendelin_compat`).

Kept apart from the block classes: a ZBigArray needs the virtual-memory
extension, the block classes (and reading or migrating a database) do not.
"""

from __future__ import annotations

from typing import Any

from zbigarray.bigarray import array_zodb
from zbigarray.storage.wendelin_compat import (
    WENDELIN_ARRAY_MODULE,
    WendelinStandIn,
    wendelin_header,
    wendelin_strides,
)


class ZBigArray(WendelinStandIn, array_zodb.ZBigArray,
                wendelin_name=(WENDELIN_ARRAY_MODULE, "ZBigArray")):
    """A ZBigArray stored in wendelin.core's layout.

    State, as wendelin.core writes it: ``({'_shape', '_dtype', '_order',
    '_stridev'}, {'zfile': ZBigFile})``.  Read also without ``_order``
    (early versions: C order) or ``_stridev``; written always with both,
    ``_stridev`` computed from the header as wendelin.core does.
    ``attrs`` (a plain dict) is in the first dict only once set: wendelin.core
    keeps it as an ordinary attribute, and writes it back unchanged.
    """

    # wendelin.core's layout is a (dict, slots) pair, not ZBigArray's dict.
    def __getstate__(self) -> tuple[dict[str, Any], dict[str, Any]]:  # type: ignore[override]
        header = {"_shape": self._shape, "_dtype": self._dtype, "_order": self._order,
                  "_stridev": wendelin_strides(self._shape, self._dtype.itemsize, self._order)}
        if self._attrs:
            header["attrs"] = self._attrs
        return header, {"zfile": self.zfile}

    def __setstate__(self, state: Any) -> None:
        self._shape, self._dtype, self._order, self.zfile = wendelin_header(state)
        header = state[0] if isinstance(state, tuple) else state
        self._attrs = (header or {}).get("attrs") or {}
