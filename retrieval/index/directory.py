"""The index directory on disk: file names, the manifest file, atomic swap-in, temporary folders.

An index directory holds

    manifest.json       the `Manifest` (format version, model checksum, features, item count, times, ...)
    index.faiss         the FAISS index (ids = row numbers); absent when built without faiss installed
    milvus.db/          the Milvus Lite database of a milvus index (`retrieval.index.milvus_backend`)
    vectors.npy         the same vectors as float32 (N, d): the torch backend and `add` read them without faiss
    items.sqlite        id -> path, label, sha256 of the file bytes (unique)
    projection.npz      the fitted PCA, when the features use one
    model.<ext>         a copy of the checkpoint, so that the directory is self-contained

Writes are atomic (`staged`): everything is written into a temporary folder `.NAME.<what>-XXXX/` beside the
target, which then takes the target's place by rename; a crash or Ctrl-C leaves the previous index as it
was. Each temporary folder records its owner process, so that the next writer removes the ones whose owner
died (`clean_stale_tmp`). Feature extraction is checkpointed in `.NAME.partial/` (see `retrieval.index.extract`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import sqlite3
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Iterator

import numpy as np

from hebb.errors import UserError
from hebb.runtime import TMP_SUFFIX, atomic_write, plain_mode, write_json_atomic
from retrieval.index.manifest import Manifest, ManifestError
from retrieval.itemstore import ITEMS_FILE

MANIFEST_FILE = "manifest.json"
FAISS_FILE = "index.faiss"
VECTORS_FILE = "vectors.npy"
PROJECTION_FILE = "projection.npz"
#: The default Milvus Lite database of a milvus index (a folder).
MILVUS_DB = "milvus.db"
OWNER_FILE = "owner.json"
TMP_KINDS = ("building", "adding", "syncing", "repairing", "deleting")
#: Files of an index directory besides the model copy (`model.<ext>`).
INDEX_FILES = (MANIFEST_FILE, FAISS_FILE, VECTORS_FILE, ITEMS_FILE, PROJECTION_FILE, MILVUS_DB)
#: A temporary folder without an owner record (written by an older hebbir) counts as abandoned after this.
ORPHAN_AGE_S = 3600.0
#: Test hook: a writer that reaches the phase named here prints "paused at PHASE" and sleeps.
PAUSE_ENV = "HEBBIR_PAUSE_AT"

REBUILD = "rebuild the index with: hebbir index build --force"
#: The exceptions that reading a damaged file raises (numpy, zip, sqlite, faiss, json).
READ_ERRORS = (OSError, ValueError, EOFError, KeyError, RuntimeError, zipfile.BadZipFile, sqlite3.DatabaseError)


# ----------------------------------------------------------------------------------------------- paths


def backup_path(out: Path) -> Path:
    return out.parent / f".{out.name}.previous"


def partial_path(out: Path) -> Path:
    return out.parent / f".{out.name}.partial"


def is_index_dir(path: Path | str) -> bool:
    """Whether `path` has a manifest file (it may still be damaged)."""
    return (Path(path) / MANIFEST_FILE).is_file()


def is_replaceable(path: Path) -> bool:
    """Whether `build --force` may replace the folder `path`: an empty folder, a folder with a hebbir
    manifest, or one holding only index file names (a damaged index). Anything else may be someone's photos."""
    if not path.is_dir() or path.is_symlink():
        return False
    try:
        Manifest.from_json((path / MANIFEST_FILE).read_text())
        return True
    except (OSError, UnicodeDecodeError, ManifestError):
        pass
    names = [p.name for p in path.iterdir()]
    return all(_is_index_file_name(n) for n in names)


def _is_index_file_name(name: str) -> bool:
    if name.startswith(".") and name.endswith(TMP_SUFFIX):  # an unfinished `atomic_write`: .NAME.XXXX.tmp
        name = name[1:].removesuffix(TMP_SUFFIX).rpartition(".")[0]
    base = name.removesuffix(".tmp.npz").removesuffix(".tmp")  # an older hebbir's temporary names
    return base in INDEX_FILES or (base.startswith("model.") and "/" not in base) or base == "model"


# ----------------------------------------------------------------------------------------------- manifest


def read_manifest(index_dir: Path | str) -> Manifest:
    """The manifest of an index directory, with a one-line `UserError` when it is missing or damaged."""
    index_dir = Path(index_dir)
    recover(index_dir)
    mf = index_dir / MANIFEST_FILE
    if not mf.is_file():
        if index_dir.is_file():
            what = "a file, not an index directory"
        else:
            what = "no such folder" if not index_dir.exists() else "not an index directory (no manifest.json)"
        raise UserError(f"{index_dir}: {what}; build one with: hebbir index build")
    try:
        return Manifest.from_json(mf.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{mf}: unreadable manifest ({exc}); {REBUILD}") from None
    except ManifestError as exc:
        raise UserError(f"{mf}: damaged manifest: {exc}; {REBUILD}") from None


def write_manifest(index_dir: Path, manifest: Manifest) -> None:
    write_json_atomic(index_dir / MANIFEST_FILE, manifest.to_dict())


@contextlib.contextmanager
def reading(path: Path, remedy: str = REBUILD) -> Iterator[None]:
    """Turn the exception of reading a damaged index file into a one-line `UserError` naming it."""
    try:
        yield
    except UserError:
        raise
    except FileNotFoundError:
        raise UserError(f"{path}: missing from the index; {remedy}") from None
    except PermissionError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except READ_ERRORS as exc:
        lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
        why = (lines[-1] if lines else type(exc).__name__)[:160]
        raise UserError(f"{path}: damaged index file ({why}); {remedy}") from None


# ----------------------------------------------------------------------------------------------- atomic writes


def recover(out: Path | str) -> None:
    """Finish a swap that a crash interrupted between its two renames (restores the previous index)."""
    out = Path(out)
    backup = backup_path(out)
    if backup.exists():
        if not out.exists():
            os.replace(backup, out)
        else:
            shutil.rmtree(backup, ignore_errors=True)


def swap_in(tmp: Path, out: Path) -> None:
    """Put the finished folder `tmp` at `out`, replacing what was there."""
    backup = backup_path(out)
    if backup.exists():
        shutil.rmtree(backup)
    if out.exists():
        os.replace(out, backup)
        pause_at("swap")  # between the two renames: `recover` must bring the old index back
    os.replace(tmp, out)
    (out / OWNER_FILE).unlink(missing_ok=True)  # kept until here, so that a dead run's folder stays removable
    shutil.rmtree(backup, ignore_errors=True)


def new_tmp_dir(out: Path, what: str) -> Path:
    """A fresh folder beside `out` that records its owner, with the permissions a plain mkdir would give
    (mkdtemp's are 0700)."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.{what}-", dir=out.parent))
    os.chmod(tmp, plain_mode(folder=True))
    write_json_atomic(tmp / OWNER_FILE, _owner_record(os.getpid()))
    return tmp


def save_npz(path: Path, **arrays) -> None:
    """`np.savez` to `path`, atomically."""
    with atomic_write(path, "wb") as f:
        np.savez(f, **arrays)


@contextlib.contextmanager
def staged(out: Path, what: str) -> Iterator[Path]:
    """A fresh temporary folder beside the index `out` to write its next version into (`new_tmp_dir`).

    When the block ends without an error the folder takes `out`'s place (`swap_in`); on any error, Ctrl-C
    included, it is removed and `out` stays as it was. A kill -9 leaves the folder behind for the next
    writer's `clean_stale_tmp`. `what` names the writer (one of `TMP_KINDS`).
    """
    if what not in TMP_KINDS:
        raise ValueError(f"unknown kind of staged write '{what}' (one of {', '.join(TMP_KINDS)})")
    tmp = new_tmp_dir(out, what)
    try:
        yield tmp
        swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def pause_at(phase: str) -> None:
    """Test hook for kill tests: sleep here when $HEBBIR_PAUSE_AT names this phase."""
    if os.environ.get(PAUSE_ENV) == phase:
        print(f"paused at {phase}", file=sys.stderr, flush=True)
        time.sleep(3600)


# ----------------------------------------------------------------------------------------------- leftovers


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _start_time(pid: int) -> str | None:
    """The start time of process `pid` in clock ticks since boot (Linux), None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22; the command name in (...) may hold spaces


def _owner_record(pid: int) -> dict:
    return {"pid": pid, "host": socket.gethostname(), "boot_id": _boot_id(), "start_time": _start_time(pid)}


def _owner_alive(record: dict) -> bool:
    """Whether the process recorded in `record` still runs (a reused pid does not count)."""
    if record.get("host") != socket.gethostname():
        return True  # another machine's run (a shared disk): we cannot tell, so leave it alone
    if record.get("boot_id") and record["boot_id"] != _boot_id():
        return False  # written before the last reboot
    pid = record.get("pid")
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's live process
    started = _start_time(pid)
    return not (record.get("start_time") and started and started != record["start_time"])


def _abandoned(tmp: Path) -> bool:
    try:
        record = json.loads((tmp / OWNER_FILE).read_text())
    except FileNotFoundError:
        try:
            return time.time() - tmp.stat().st_mtime > ORPHAN_AGE_S
        except OSError:
            return False
    except (OSError, ValueError):
        return False
    return not isinstance(record, dict) or not _owner_alive(record)


def clean_stale_tmp(out: Path) -> list[Path]:
    """Remove the temporary folders of `out` (`.NAME.building-*`, `.NAME.adding-*`, ...) whose owner process
    is gone; return them. Live runs' folders and everything else are left alone."""
    removed = []
    if not out.parent.is_dir():
        return removed
    prefixes = tuple(f".{out.name}.{kind}-" for kind in TMP_KINDS)
    for tmp in out.parent.iterdir():
        if tmp.name.startswith(prefixes) and tmp.is_dir() and not tmp.is_symlink() and _abandoned(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
    return removed
