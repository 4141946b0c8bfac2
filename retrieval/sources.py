"""Image collections to index: an image folder or a dataset split in the data directory.

`open_source("photos/")` lists a folder: `CLASS/*.jpg` gives label = the top folder name, files at the top
level get label None. `open_source("cifar10:train")` is a split of an imported dataset (`hebb.data`), whose
decoded uint8 cache is used instead of decoding every JPEG again. `read_chunk` turns a slice of a collection
into uint8 pixels and sha256 content hashes, skipping (with a reason) whatever cannot be read.
"""

from __future__ import annotations

import hashlib
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from hebb.errors import UserError
from hebb.images import (IMAGE_EXTENSIONS, OPTIONAL_FORMATS, ImageLoadError, image_to_array, is_image_name,
                         iter_files, load_image)

#: Files larger than this are skipped unread (no photo needs more; a stray video or disk image would).
MAX_FILE_BYTES = 256 * 1024 * 1024

_DATASET_SPEC = re.compile(r"^(?P<name>[A-Za-z0-9_\-]+)(?::(?P<split>train|val|test))?$")
_WORKERS = min(8, (os.cpu_count() or 2) * 2)
#: Folder entries never listed: hidden files and folders (.git, macOS `._*` forks), Synology thumbnails.
DEFAULT_EXCLUDE = (".*", "@eaDir")


@dataclass
class ImageSource:
    """A listed collection: absolute paths and labels, plus decoded pixels when a dataset cache has them."""

    spec: str
    kind: str  # "folder" or "dataset"
    paths: list[str]
    labels: list[str | None]
    cached: torch.Tensor | None = None  # uint8 (N, 3, S, S) aligned with paths, for datasets
    skipped: list[dict] = field(default_factory=list)  # files listed but never candidates (wrong type)

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, positions, note: str | None = None) -> "ImageSource":
        """Only the images at `positions` (e.g. a sample of a big dataset)."""
        positions = [int(i) for i in positions]
        cached = self.cached[torch.as_tensor(positions, dtype=torch.long)] if self.cached is not None else None
        spec = f"{self.spec} ({note or f'{len(positions)} of {len(self)}'})"
        return ImageSource(spec, self.kind, [self.paths[i] for i in positions], [self.labels[i] for i in positions],
                           cached, self.skipped)


@dataclass
class Chunk:
    """Decoded images of a slice of a source: `positions` index the source, rows of `images` follow them."""

    positions: list[int]
    images: np.ndarray  # uint8 (n, 3, S, S)
    hashes: list[str]
    skipped: list[dict]  # {"path", "reason"}
    known: list[tuple[str, str]] = field(default_factory=list)  # (path, sha256) already in the index


def _skip_reason(name: str) -> str:
    suffix = Path(name).suffix.lower()
    if suffix in OPTIONAL_FORMATS.get("HEIF", ()):
        return f"not an image file type here ({suffix}: install the HEIC plugin, pip install 'hebbir[heif]')"
    return f"not an image file type ({suffix or 'no extension'})"


def _list_folder(root: Path, exclude: Iterable[str] = ()) -> tuple[list[str], list[str | None], list[dict]]:
    paths: list[str] = []
    labels: list[str | None] = []
    skipped: list[dict] = []
    for file in iter_files(root, exclude or ()):  # sorted, hidden files and `exclude` left out
        rel = file.relative_to(root)
        full = str(file.resolve())
        if is_image_name(file.name):
            paths.append(full)
            labels.append(rel.parts[0] if len(rel.parts) > 1 else None)
        else:
            skipped.append({"path": full, "reason": _skip_reason(file.name)})
    order = sorted(range(len(paths)), key=lambda i: paths[i])
    return [paths[i] for i in order], [labels[i] for i in order], skipped


def open_source(spec: str | os.PathLike, data_dir: Path | str | None = None, size: int = 32,
                exclude: Iterable[str] = ()) -> ImageSource:
    """List the images of `spec`: an existing folder, or `NAME[:train|val|test]` of the data directory.

    In a folder, hidden files and folders (`hebb.images.DEFAULT_EXCLUDE`) and whatever matches one of the
    glob patterns `exclude` are left out unlisted (see `hebb.images.iter_files`).

    A bare dataset name means its training split (`cifar10` = `cifar10:train`, the 40,000 images of
    docs/EVALUATION.md#splits). `size` is the side the dataset cache is decoded at (the network's input size).
    """
    text = str(spec)
    path = Path(text).expanduser()
    if path.is_dir():
        paths, labels, skipped = _list_folder(path, exclude)
        if not paths:
            raise UserError(f"{path}: no image files found ({', '.join(IMAGE_EXTENSIONS)})")
        return ImageSource(str(path.resolve()), "folder", paths, labels, None, skipped)
    if path.exists():
        raise UserError(f"{path}: expected a folder of images or a dataset name like cifar10:train")
    match = _DATASET_SPEC.match(text)
    if not match:
        raise UserError(f"{text}: no such folder, and not a dataset name (NAME or NAME:train|val|test)")
    from hebb.data import is_imported, load_splits

    name, split = match["name"].lower(), match["split"] or "train"
    if not is_imported(name, data_dir):
        raise UserError(f"{text}: no such folder, and dataset '{name}' is not imported in the data directory "
                        f"(hebbir data import {name} SOURCE)")
    part = load_splits(name, data_dir, size=size)[split]
    labels = [part.classes[i] for i in part.labels.tolist()]
    return ImageSource(f"{name}:{split}", "dataset", list(part.paths), labels, part.images)


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _read_one(path: str, size: int, decode: bool, known: frozenset | set
             ) -> tuple[np.ndarray | None, str | None, str | None]:
    """(pixels or None, sha256 or None, skip reason or None) for one file; known hashes are not decoded."""
    try:
        n_bytes = os.path.getsize(path)
        if n_bytes > MAX_FILE_BYTES:
            return None, None, f"file too large: {n_bytes:,} bytes (limit {MAX_FILE_BYTES:,})"
        if not decode:
            return None, _sha256_file(path), None
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        return None, None, f"cannot read: {exc.strerror or exc}"
    digest = hashlib.sha256(data).hexdigest()
    if digest in known:
        return None, digest, None
    if not data:
        return None, digest, "empty file"
    try:
        return image_to_array(load_image(data), size), digest, None
    except ImageLoadError as exc:
        return None, digest, exc.reason


def read_chunk(source: ImageSource, positions: list[int], size: int, known: set | frozenset = frozenset()
               ) -> Chunk:
    """Decode (or take from the dataset cache) the images at `positions` of `source`, at size x size.

    Files whose sha256 is in `known` (already indexed) are listed in `Chunk.known` and not decoded.
    """
    decode = source.cached is None
    with ThreadPoolExecutor(max_workers=_WORKERS) as pool:
        results = list(pool.map(lambda i: _read_one(source.paths[i], size, decode, known), positions))
    kept, arrays, hashes, skipped, already = [], [], [], [], []
    for pos, (arr, digest, reason) in zip(positions, results):
        if reason is not None:
            skipped.append({"path": source.paths[pos], "reason": reason})
            continue
        if digest in known:
            already.append((source.paths[pos], digest))
            continue
        kept.append(pos)
        hashes.append(digest)
        arrays.append(arr if arr is not None else source.cached[pos].numpy())
    images = np.stack(arrays) if arrays else np.zeros((0, 3, size, size), np.uint8)
    return Chunk(kept, images, hashes, skipped, already)


def load_query_images(images, size: int) -> np.ndarray:
    """Queries (PIL images, paths or bytes) as uint8 (Q, 3, size, size); a bad one is a `UserError`."""
    from PIL import Image

    from hebb.images import _to_rgb  # the loader's own mode conversion, for PIL images handed in directly

    arrays = []
    for img in images:
        if not isinstance(img, Image.Image):
            img = load_image(img)  # raises ImageLoadError (a UserError) with the path and the reason
        elif img.mode != "RGB":
            img = _to_rgb(img)
        arrays.append(image_to_array(img, size))
    return np.stack(arrays) if arrays else np.zeros((0, 3, size, size), np.uint8)
