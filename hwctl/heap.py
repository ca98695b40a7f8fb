"""Hand freed heap memory back to the operating system between large jobs, and say where
the process's memory is.

glibc keeps memory freed by a thread in that thread's arena: the chip lane's
program-and-verify leaves hundreds of MB there at 43.6 M devices, which the compute lane's
thread cannot reuse, so without a trim the worker's peak is the sum of both lanes' jobs.
`malloc_trim(0)` returns the free memory of every arena.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import cache
from pathlib import Path
from typing import Any

MB = 1 << 20


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
                     "fordblks", "keepcost")
    ]  # fmt: skip


@cache
def _libc() -> Any:
    name = ctypes.util.find_library("c")
    return None if name is None else ctypes.CDLL(name)


def release_freed_heap() -> None:
    """`malloc_trim(0)` where the C library has it (glibc); nothing elsewhere."""
    trim = getattr(_libc(), "malloc_trim", None)  # glibc only
    if trim is not None:
        trim(0)


def memory_summary() -> dict[str, float]:
    """This process's memory now, MB: resident (VmRSS, of it anonymous and file-backed),
    its high-water mark (VmHWM) and, on glibc, the heap's bytes in use, free but kept
    (fragmentation a trim may return) and mapped directly (large allocations)."""
    out: dict[str, float] = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[key] = round(int(value.split()[0]) / 1024, 1)
    except OSError:
        pass
    mallinfo2 = getattr(_libc(), "mallinfo2", None)  # glibc ≥ 2.33
    if mallinfo2 is not None:
        mallinfo2.restype = _MallInfo2
        info = mallinfo2()
        out["heap_used"] = round(info.uordblks / MB, 1)
        out["heap_free"] = round(info.fordblks / MB, 1)
        out["heap_mmapped"] = round(info.hblkhd / MB, 1)
    return out


def summary_text(summary: dict[str, float] | None = None) -> str:
    """`memory_summary()` as one log line's worth."""
    return " ".join(f"{k}={v:.0f}MB" for k, v in (summary or memory_summary()).items())
