"""Hand freed heap memory back to the operating system between large jobs.

glibc keeps memory freed by a thread in that thread's arena: the chip lane's
program-and-verify leaves hundreds of MB there at 43.6 M devices, which the compute lane's
thread cannot reuse, so without a trim the worker's peak is the sum of both lanes' jobs.
`malloc_trim(0)` returns the free memory of every arena.
"""

from __future__ import annotations

import ctypes
import ctypes.util


def release_freed_heap() -> None:
    """`malloc_trim(0)` where the C library has it (glibc); nothing elsewhere."""
    libc = ctypes.util.find_library("c")
    if libc is not None:
        trim = getattr(ctypes.CDLL(libc), "malloc_trim", None)  # glibc only
        if trim is not None:
            trim(0)
