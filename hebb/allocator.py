"""glibc malloc tuning for the CPU training steps.

A Hebbian step allocates the same large temporaries (patch maps, outputs, moment matrices, tens of MB)
every batch. glibc serves blocks above its mmap threshold with a fresh mmap each time, so every step pays
the page faults and kernel zeroing of that memory again, and it gives freed heap tops back to the system
as soon as they pass the trim threshold. `tune_malloc` keeps large blocks on the heap and the heap at its
size, so a step reuses the memory of the step before. It is applied when `hebb` is imported; set
HEBBIR_MALLOC_TUNING=0 to leave malloc as it is. Elsewhere than on glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import os

ENV = "HEBBIR_MALLOC_TUNING"
# mallopt parameter numbers from glibc's <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
#: What `tune_malloc` sets: blocks up to 1 GiB from the heap (larger ones, such as a whole image set, are
#: still mmapped and go back to the system when freed), no trimming below 1 GiB of free heap top, one arena
#: for all threads (so torch's worker threads reuse the same heap rather than each growing its own).
#: The cost: a process keeps up to its peak heap use mapped after freeing it.
SETTINGS = {M_MMAP_THRESHOLD: 1 << 30, M_TRIM_THRESHOLD: 1 << 30, M_ARENA_MAX: 1}

applied: dict[int, int] = {}  # the settings glibc accepted in this process


def _libc():
    try:
        libc = ctypes.CDLL(None)  # the symbols already loaded into this process, libc's among them
    except OSError:
        return None
    if not hasattr(libc, "mallopt") or not hasattr(libc, "gnu_get_libc_version"):
        return None  # not glibc (musl, macOS): their malloc has other knobs
    return libc


def enabled() -> bool:
    """Whether the environment allows the tuning (HEBBIR_MALLOC_TUNING unset or not 0/false/no/off)."""
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def tune_malloc() -> dict[int, int]:
    """Apply `SETTINGS` with mallopt when on glibc and `enabled()`; return the settings that took effect."""
    if applied or not enabled():
        return dict(applied)
    libc = _libc()
    if libc is None:
        return {}
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    for param, value in SETTINGS.items():
        if libc.mallopt(param, value) == 1:
            applied[param] = value
    return dict(applied)


tune_malloc()
