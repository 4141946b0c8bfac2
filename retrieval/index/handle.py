"""An opened index directory: `open_index(path) -> IndexHandle`, searched by image or by vector.

Opening checks every file against the manifest (model copy, projection, vectors or FAISS file, item table);
a damaged one is a one-line `UserError` naming it and saying what to do, for the command line and the page.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

import retrieval.index.backends as backends
from hebb.errors import UserError
from hebb.runtime import resolve_device
from retrieval.features import FeatureExtractor
from retrieval.index.backends import load_vectors, make_backend, read_faiss_index, search_params
from retrieval.index.directory import FAISS_FILE, ITEMS_FILE, REBUILD, read_manifest, reading
from retrieval.index.manifest import Manifest
from retrieval.index.model import index_extractor
from retrieval.itemstore import ItemStore
from retrieval.sources import load_query_images


@dataclass(frozen=True)
class Hit:
    """One search result: 1-based `rank` (0 for a plain item lookup), item `id`, `score` = cosine."""

    rank: int
    id: int
    path: str
    label: str | None
    score: float

    def to_dict(self) -> dict:
        return asdict(self)


class IndexHandle:
    """An opened index directory: its manifest, model, feature extractor, items and search backend."""

    def __init__(self, index_dir: Path, manifest: Manifest, net, extractor: FeatureExtractor, items: ItemStore,
                 backend):
        self.path = index_dir
        self.manifest = manifest
        self.model = net
        self.extractor = extractor
        self.items = items
        self.backend = backend

    def __len__(self) -> int:
        return self.manifest.item_count

    def __enter__(self) -> "IndexHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.items.close()
        if hasattr(self.backend, "close"):
            self.backend.close()

    @property
    def dim(self) -> int:
        return int(self.manifest.dimension)

    def set_search_params(self, nprobe: int | None = None, ef_search: int | None = None,
                          params: str | None = None) -> None:
        """Query-time settings of approximate indexes (ignored by exact ones)."""
        text = search_params(nprobe, ef_search, params)
        if text and (self.backend.name.startswith("faiss") or self.backend.name == "milvus"):
            self.backend.set_params(text)

    def embed(self, images) -> np.ndarray:
        """Feature vectors (Q, d) of query images (PIL images, paths or bytes)."""
        return self.extractor.transform(load_query_images(images, self.extractor.side))

    def search_images(self, images, k: int = 10) -> list[list[Hit]]:
        """The k nearest items of each query image (PIL image, path or bytes)."""
        images = list(images) if isinstance(images, (list, tuple)) else [images]
        return self.search_vectors(self.embed(images), k)

    def search_vectors(self, x: np.ndarray, k: int = 10) -> list[list[Hit]]:
        """The k nearest items of each row of `x` (Q, d), best first."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim == 1:
            x = x[None]
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise UserError(f"query vectors must be (Q, {self.dim}), got {x.shape}")
        if k <= 0:
            raise UserError(f"k must be positive, got {k}")
        # The zero rows of deleted items (a synced index) may come up: ask for that many more, drop them.
        scores, ids = self.backend.search(x, k + self.manifest.deleted_rows)
        found = self.items.get_many(np.unique(ids[ids >= 0]).tolist())
        results = []
        for row_scores, row_ids in zip(scores, ids):
            hits = []
            for score, item_id in zip(row_scores.tolist(), row_ids.tolist()):
                it = found.get(item_id)
                if it is None:
                    continue  # a deleted row, or -1: an approximate index found fewer candidates
                if len(hits) == k:
                    break
                hits.append(Hit(len(hits) + 1, item_id, it.path, it.label, float(score)))
            results.append(hits)
        return results

    def item(self, item_id: int) -> Hit:
        """The item with id `item_id` (rank 0, score nan)."""
        it = self.items.get(item_id)
        if it is None:
            raise UserError(f"no item with id {item_id} (the index has {len(self)} items)")
        return Hit(0, it.id, it.path, it.label, math.nan)

    def vectors(self) -> np.ndarray:
        """All item vectors (N, d) float32, memory-mapped; row = item id (zero rows for deleted items)."""
        return load_vectors(self.path, self.manifest)


def open_items(index_dir: Path, manifest: Manifest) -> ItemStore:
    """The item table of an index, read-only, checked to hold the manifest's item count."""
    path = index_dir / ITEMS_FILE
    if not path.is_file():
        raise UserError(f"{path}: missing from the index; {REBUILD}")
    items = ItemStore(path)
    try:
        with reading(path):
            count = len(items)
    except UserError:
        items.close()
        raise
    if count != manifest.item_count:
        items.close()
        raise UserError(f"{path}: damaged index file ({count} items, the manifest says {manifest.item_count}); "
                        f"{REBUILD}")
    return items


def open_index(index_dir, device="cpu", backend: str = "auto", model=None, batch_size: int = 256) -> IndexHandle:
    """Open an index directory for searching, checking that its files and model agree with the manifest.

    `device`: where query features and the search run (cpu, cuda, auto). `model`: optionally a checkpoint
    the caller expects the index to have been built with; a different one is a `UserError`, and so is any
    damaged file of the index.
    """
    index_dir = Path(index_dir)
    manifest = read_manifest(index_dir)
    device = resolve_device(device)
    extractor = index_extractor(index_dir, manifest, device, model=model, batch_size=batch_size)
    if extractor.dim != manifest.dimension:
        raise UserError(f"{index_dir}: the model gives {extractor.dim}-d features, the index holds "
                        f"{manifest.dimension}-d vectors")
    engine = make_backend(index_dir, manifest, backend, device)
    try:
        if engine.name != "torch":
            load_vectors(index_dir, manifest)  # `add`, `vectors()` and the torch backend read it: check it now
        items = open_items(index_dir, manifest)
    except BaseException:
        if hasattr(engine, "close"):
            engine.close()
        raise
    return IndexHandle(index_dir, manifest, extractor.net, extractor, items, engine)


def check_index(index_dir) -> Manifest:
    """Check the files of an index without building a search backend; return its manifest.

    Raises the `UserError` that opening would, naming the first damaged file.
    """
    index_dir = Path(index_dir)
    manifest = read_manifest(index_dir)
    extractor = index_extractor(index_dir, manifest, "cpu")
    if extractor.dim != manifest.dimension:
        raise UserError(f"{index_dir}: the model gives {extractor.dim}-d features, the index holds "
                        f"{manifest.dimension}-d vectors; {REBUILD}")
    load_vectors(index_dir, manifest)
    if (index_dir / FAISS_FILE).is_file() and backends.faiss_or_none() is not None:
        read_faiss_index(index_dir, manifest)
    open_items(index_dir, manifest).close()
    if manifest.backend == "milvus":
        make_backend(index_dir, manifest, "milvus").close()  # reachable, this model's, as many vectors
    return manifest
