"""Keep what decoders say about a file off stderr, and hand it to the caller instead.

Pillow reports oddities of a file (corrupt EXIF, truncated tags, oversized images) as Python warnings, and
libtiff prints its own messages straight to the C stderr: one build of a messy folder printed 157 lines.

`warnings.catch_warnings` cannot be used to capture them: it swaps process-wide state, so loader threads
would restore each other's filters. Instead `recorded_warnings()` installs, once, a `warnings.showwarning`
hook that routes each warning raised on a thread inside a `recorded_warnings()` block into that block's own
list, and leaves every other warning to the previous hook. libtiff's handlers are switched off once (its
errors still reach Python as the decoder's exception).
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
import warnings
from typing import Iterator

_local = threading.local()
_lock = threading.Lock()
_libtiff_done = False


def _hook(previous):
    def showwarning(message, category, filename, lineno, file=None, line=None):
        sink = getattr(_local, "sink", None)
        if sink is None:
            return previous(message, category, filename, lineno, file, line)
        sink.append(str(message))

    showwarning.records_decoder_warnings = True
    return showwarning


def _install_hook() -> None:
    # Re-checked on every use: a test runner or an application may put its own hook in place later.
    if getattr(warnings.showwarning, "records_decoder_warnings", False):
        return
    with _lock:
        if not getattr(warnings.showwarning, "records_decoder_warnings", False):
            warnings.showwarning = _hook(warnings.showwarning)


@contextlib.contextmanager
def recorded_warnings() -> Iterator[list[str]]:
    """Collect the warnings this thread raises inside the block into the yielded list, instead of printing.

    Warnings that Python's filters swallow (a repeat of the same message from the same line, by default)
    never reach the list; a filter set to "error" still raises.
    """
    _install_hook()
    silence_libtiff()
    outer = getattr(_local, "sink", None)
    sink: list[str] = []
    _local.sink = sink
    try:
        yield sink
    finally:
        _local.sink = outer


def _loaded_libtiff() -> str | None:
    """Path of the libtiff that Pillow's decoder is linked with, if this process has one mapped (Linux)."""
    from PIL import Image  # noqa: F401  (maps _imaging and its libtiff)

    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            for row in maps:
                path = row.rstrip("\n").split(" ")[-1]
                if "/libtiff" in path and ".so" in path:
                    return path
    except OSError:
        return None
    return None


def silence_libtiff() -> None:
    """Switch off libtiff's stderr messages (warnings and errors), once per process; best effort.

    Only the copy Pillow uses is touched (Pillow's wheels bundle their own). Elsewhere than Linux, or with
    no libtiff loaded, nothing is done.
    """
    global _libtiff_done
    if _libtiff_done:
        return
    with _lock:
        if _libtiff_done:
            return
        _libtiff_done = True
        path = _loaded_libtiff()
        if path is None:
            return
        try:
            lib = ctypes.CDLL(path)
            lib.TIFFSetWarningHandler.restype = ctypes.c_void_p
            lib.TIFFSetErrorHandler.restype = ctypes.c_void_p
            lib.TIFFSetWarningHandler.argtypes = [ctypes.c_void_p]
            lib.TIFFSetErrorHandler.argtypes = [ctypes.c_void_p]
            lib.TIFFSetWarningHandler(None)
            lib.TIFFSetErrorHandler(None)
        except (OSError, AttributeError):
            return
