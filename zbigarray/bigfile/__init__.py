"""Virtual memory for files of blocks: map them, fault blocks in on first touch.

`BigFile` is a file of fixed-size blocks whose backend (a Python subclass)
gives ``loadblk`` and ``storeblk``.  `BigFile.fileh_open` opens a `BigFileH`
with its own page cache; `BigFileH.mmap` maps pages of it as a `VMA`, which
exports the buffer protocol (``numpy.frombuffer(vma)``).  Pages come from a
`RAM` with a capacity; writes are tracked per page and written out with
`BigFileH.dirty_writeout`.  A page fault that cannot be served raises
`PageFaultError` in the thread that touched the memory.  System calls that
touch untouched pages (writing from a view, reading into one) are served too
where the kernel allows userfaultfd (`userfaultfd_status`); `prefault` loads
pages ahead where it does not.  See DESIGN.md, "The virtual-memory core".
"""

from zbigarray.bigfile._bigfile import (
    FAULT_ABORT_ENV,
    RAM,
    USERFAULTFD_ENV,
    VMA,
    WRITEOUT_MARKSTORED,
    WRITEOUT_STORE,
    BigFile,
    BigFileH,
    PageFaultError,
    PageFaultMemoryError,
    UserfaultfdStatus,
    UserfaultfdWarning,
    fault_proxy_thread,
    ram_default,
    ram_parse_size,
    ram_reclaim,
    userfaultfd_status,
)
from zbigarray.bigfile._blkbuf import loadblk_buf_zeroed
from zbigarray.bigfile.prefault import prefault

__all__ = [
    "BigFile",
    "BigFileH",
    "VMA",
    "RAM",
    "PageFaultError",
    "PageFaultMemoryError",
    "FAULT_ABORT_ENV",
    "USERFAULTFD_ENV",
    "UserfaultfdStatus",
    "UserfaultfdWarning",
    "userfaultfd_status",
    "fault_proxy_thread",
    "prefault",
    "loadblk_buf_zeroed",
    "WRITEOUT_STORE",
    "WRITEOUT_MARKSTORED",
    "ram_reclaim",
    "ram_default",
    "ram_parse_size",
]
