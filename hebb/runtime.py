"""Small helpers every part of hebbir shares: the compute device, atomic file writes, UTC timestamps, and a
description of the machine and of the code that runs.

torch is imported inside the functions that need it, so that importing this module stays cheap.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, Iterator

from hebb.errors import UserError

#: The names `resolve_device` takes besides a torch device string such as "cuda:1".
DEVICES = ("auto", "cpu", "cuda")
#: The name ending of a file that `atomic_write` has not put in place yet.
TMP_SUFFIX = ".tmp"
_REPO = Path(__file__).resolve().parent.parent


def resolve_device(device="auto"):
    """'auto' | 'cpu' | 'cuda' (or a torch.device) -> torch.device. auto picks cuda when torch sees a GPU;
    asking for cuda without one is a `UserError`."""
    import torch

    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device}: no CUDA GPU is visible to torch")
    return device


def plain_mode(folder: bool = False) -> int:
    """The permission bits a plain open() (or mkdir) would give under the current umask."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if folder else 0o666) & ~umask


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """An open file whose contents replace `path` in one rename when the block ends without an error.

    The data is written to a temporary file beside `path` (`.NAME.XXXX.tmp`) and flushed to disk first, so
    a crash, Ctrl-C or kill -9 leaves either the previous file or the new one, never half of one; on an
    error the temporary file is removed. The file gets the permissions a plain open() would give.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, plain_mode())  # mkstemp's files are private
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | os.PathLike, data: Any, indent: int | None = 2) -> None:
    """Write `data` as JSON to `path` with `atomic_write`."""
    text = json.dumps(data, indent=indent)
    with atomic_write(path) as f:
        f.write(text)


def utc_now() -> str:
    """The current time in UTC, ISO 8601 to the second: '2026-12-02T07:40:00+00:00'."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, or what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_description(device) -> str:
    """A human description of the compute device: the GPU and CUDA version, or the CPU and its cores."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    return f"CPU: {cpu_model()}, {os.cpu_count()} logical cores visible"


def code_version() -> str:
    """The git commit of the code that runs (with '-dirty' when tracked files differ from it), or 'unknown'."""
    try:
        commit = subprocess.run(["git", "-C", str(_REPO), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(_REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")
