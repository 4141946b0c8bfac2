"""Page logic of the Streamlit app that needs no Streamlit: where indexes and reports live, reading uploads,
thumbnails, the index facts table and the first-layer kernel mosaic. Pure functions, easy to test.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

# UserError, ImageLoadError and load_image are also re-exported for the page (app.py), which uses
# retrieval's API only.
from hebb.errors import UserError  # noqa: F401
from hebb.images import FORMATS, IMAGE_EXTENSIONS, MAX_PIXELS, ImageLoadError, load_image
from retrieval.index.directory import MANIFEST_FILE
from retrieval.index.manifest import Manifest

INDEX_DIR_ENV = "HEBBIR_INDEX_DIR"
REPORTS_DIR_ENV = "HEBBIR_REPORTS_DIR"
DEFAULT_INDEX = "quickstart"

#: Default upload cap in MB: `hebbir app --max-upload-mb` and .streamlit/config.toml (server.maxUploadSize).
MAX_UPLOAD_MB = 20
#: File endings the uploader accepts: exactly those the loader reads.
UPLOAD_TYPES = [ext.lstrip(".") for ext in IMAGE_EXTENSIONS]
#: The uploader's tooltip, naming the formats.
UPLOAD_HELP = (", ".join(FORMATS).replace("PPM", "Netpbm") + " (animated images: their first frame; "
               "TIFF: its first page)")

THUMB_SIZE = 160


def one_thread_per_query() -> None:
    """Make torch and faiss compute each query on the calling thread only.

    The page answers one small query at a time per visitor (one image, one exact search), and Streamlit runs
    visitors on threads of their own: intra-op thread pools only add hand-offs there, and on a loaded
    machine they cost more than the work (measured: median 48 ms with 2 threads against 13 ms with 1 for one
    query on a 40,000-image index, on a busy 2-core CPU).
    """
    import torch

    torch.set_num_threads(1)
    try:
        import faiss
    except ImportError:
        return
    faiss.omp_set_num_threads(1)


def index_root() -> Path:
    """Folder holding the indexes: `$HEBBIR_INDEX_DIR`, else ./index_data."""
    return Path(os.environ.get(INDEX_DIR_ENV) or "index_data")


def reports_root() -> Path:
    """Folder holding the evaluation reports: `$HEBBIR_REPORTS_DIR`, else ./reports."""
    return Path(os.environ.get(REPORTS_DIR_ENV) or "reports")


def list_indexes(root: Path) -> list[str]:
    """Names of the index directories under `root` (those with a manifest), `quickstart` first."""
    if not root.is_dir():
        return []
    names = sorted(p.name for p in root.iterdir() if p.is_dir() and (p / MANIFEST_FILE).is_file())
    if DEFAULT_INDEX in names:
        names.remove(DEFAULT_INDEX)
        names.insert(0, DEFAULT_INDEX)
    return names


def index_version(index_dir: Path) -> float:
    """Modification time of the manifest: a rebuilt index gets a new value (cache key of the open handle)."""
    try:
        return (index_dir / MANIFEST_FILE).stat().st_mtime
    except OSError:
        return 0.0


@dataclass(frozen=True)
class Query:
    """An uploaded image to search with: its file name and its RGB pixels."""

    name: str
    image: Image.Image


def read_upload(name: str, data: bytes, max_bytes: int = MAX_UPLOAD_MB << 20,
                max_pixels: int = MAX_PIXELS) -> Query:
    """Decode uploaded bytes into a `Query`; raise `ImageLoadError` with a short reason when unusable."""
    if len(data) > max_bytes:
        raise ImageLoadError(name, f"file too large: {len(data) / 2**20:.1f} MB (limit {max_bytes >> 20} MB)")
    if not data:
        raise ImageLoadError(name, "empty file")
    try:
        image = load_image(data, max_pixels=max_pixels)
    except ImageLoadError as exc:
        raise ImageLoadError(name, exc.reason) from None
    return Query(name=name, image=image)


def thumbnail(image: Image.Image, size: int = THUMB_SIZE) -> Image.Image:
    """A square-fitting copy of `image` for the grid; tiny images (CIFAR's 32x32) are enlarged, not blurred away."""
    w, h = image.size
    scale = size / max(w, h)
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    resample = Image.Resampling.NEAREST if scale >= 3 else Image.Resampling.LANCZOS
    return image.resize(new, resample)


def kernel_mosaic(kernels, scale: int = 8, columns: int = 16, gap: int = 2) -> np.ndarray:
    """Kernels (K, 3, h, w) as one uint8 RGB image: each kernel min-max normalised on its own and enlarged
    `scale` times (nearest neighbour), laid out `columns` per row on a white background."""
    k = np.asarray(kernels.detach().cpu() if hasattr(kernels, "detach") else kernels, dtype=np.float32)
    if k.ndim != 4:
        raise ValueError(f"expected kernels of shape (K, C, h, w), got {k.shape}")
    if k.shape[1] == 1:
        k = np.repeat(k, 3, axis=1)
    k = k[:, :3]
    count, _, h, w = k.shape
    lo = k.reshape(count, -1).min(axis=1)[:, None, None, None]
    hi = k.reshape(count, -1).max(axis=1)[:, None, None, None]
    k = (k - lo) / np.where(hi > lo, hi - lo, 1.0)
    tiles = np.round(k * 255).astype(np.uint8).transpose(0, 2, 3, 1)  # (K, h, w, 3)
    tiles = tiles.repeat(scale, axis=1).repeat(scale, axis=2)
    th, tw = h * scale, w * scale
    columns = max(1, min(columns, count))
    rows = -(-count // columns)
    mosaic = np.full((rows * (th + gap) + gap, columns * (tw + gap) + gap, 3), 255, np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        y, x = gap + r * (th + gap), gap + c * (tw + gap)
        mosaic[y:y + th, x:x + tw] = tile
    return mosaic


def index_facts(manifest: Manifest, item_count: int, network: dict | None = None) -> list[tuple[str, str]]:
    """(name, value) rows describing an index for the page's table, from its manifest and the network's
    `config()` (architecture, rule, layer spec)."""
    network = network or {}
    m = manifest
    meta = m.model_meta or {}
    rows = [
        ("model", m.model_source or m.model_file),
        ("model checksum", m.model_checksum[:16] if m.model_checksum else None),
        ("architecture", m.architecture or network.get("arch")),
        ("rule", network.get("rule") or meta.get("rule")),
        ("layers (H Hebbian, G backprop, R random)", network.get("spec")),
        ("training", meta.get("stage")),
        ("feature layer", m.layer),
        ("pooling", m.pooling),
        ("projection", m.projection),
        ("dimension", m.dimension),
        ("features", m.description),
        ("metric", m.metric),
        ("index type", m.factory),
        ("items", f"{item_count:,}"),
        ("images from", m.source),
        ("built", m.created),
        ("build time", _seconds(m.build_time_s)),
        ("last addition", m.updated),
    ]
    return [(name, str(value)) for name, value in rows if value not in (None, "")]


def _seconds(value) -> str | None:
    try:
        return None if value is None else f"{float(value):.1f} s"
    except (TypeError, ValueError):
        return str(value)


def skipped_rows(manifest: Manifest) -> list[dict]:
    """The images the index build skipped, as table rows {file, reason}."""
    rows = []
    for entry in manifest.skipped or []:
        if isinstance(entry, dict):
            rows.append({"file": str(entry.get("path", "")), "reason": str(entry.get("reason", ""))})
        else:
            rows.append({"file": str(entry), "reason": ""})
    return rows


@dataclass(frozen=True)
class Report:
    """A saved evaluation report: its folder name, summary text (markdown) and PNG plots."""

    name: str
    summary: str
    plots: tuple[Path, ...]
    kind: str = "partial"  # "main" (the report of record), "transfer", "smoke" or "partial"

    @property
    def title(self) -> str:
        """The report's name with what it is: the main report, a smoke run or a partial report."""
        return {"main": f"{self.name} (main report)", "smoke": f"{self.name} (smoke run: reduced sizes)",
                "transfer": f"{self.name} (transfer: retrieval among classes the network never saw)",
                "partial": f"{self.name} (partial: one regime or method subset)"}[self.kind]


#: The report the Evaluation tab opens on: the full CIFAR-10 evaluation.
MAIN_REPORT = "cifar10"


_LOCAL_IMAGE = re.compile(r"!\[[^\]]*\]\((?!https?://)[^)]*\)")
_HEADING = re.compile(r"^(#{1,4}) ", re.MULTILINE)


def list_reports(root: Path) -> list[Report]:
    """Every `root/*/summary.md` with the PNG plots beside it: the main report (`MAIN_REPORT`) first, then
    transfer reports, then the others newest first, each labelled main, transfer, smoke or partial.

    Markdown image links to local files are dropped from the summary (the page shows the plots itself), and
    headings go two levels down, to sit under the page's own.
    """
    if not root.is_dir():
        return []
    found = []
    for summary in root.glob("*/summary.md"):
        try:
            text = summary.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        plots = tuple(sorted(summary.parent.glob("*.png")))
        name = summary.parent.name
        kind = ("main" if name == MAIN_REPORT else "smoke" if "smoke" in name
                else "transfer" if text.startswith("# Transfer evaluation") else "partial")
        text = _HEADING.sub(r"##\1 ", _LOCAL_IMAGE.sub("", text))
        rank = ("main", "transfer").index(kind) if kind in ("main", "transfer") else 2
        found.append((rank, -summary.stat().st_mtime, Report(name, text, plots, kind)))
    return [report for *_, report in sorted(found, key=lambda item: item[:2])]
