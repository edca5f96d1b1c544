"""NumPy arrays over zbigarray file handles (see DESIGN.md, "BigArray").

``BigArray`` gives ndarray semantics over a file handle; ``ArrayRef`` is a
picklable reference to a view of one.  ``RAMArray`` (``array_ram``) keeps its
file in RAM only; ``ZBigArray`` (``array_zodb``) is the persistent form.
"""

from ._arrayref import ArrayRef
from ._bigarray import BigArray

__all__ = ["ArrayRef", "BigArray"]
