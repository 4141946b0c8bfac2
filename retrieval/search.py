"""Searching an index directory: backends and the public `open_index(path) -> IndexHandle`.

Backends, same neighbours on every path (ties aside):
  - `faiss`: the FAISS file, on the CPU, or on the GPU when faiss-gpu is installed and device is cuda;
    `nprobe` / `efSearch` and any other faiss ParameterSpace setting apply at query time.
  - `torch`: exact inner product (matrix product + top-k) over `vectors.npy`, on the CPU or a GPU; needs no
    faiss. It is what runs on a GPU without faiss-gpu, and on any machine without faiss.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from hebb.errors import UserError
from retrieval.features import FeatureExtractor
from retrieval.index import (FAISS_FILE, VECTORS_FILE, faiss_or_none, index_extractor, read_manifest,
                             require_faiss, resolve_device)
from retrieval.itemstore import ITEMS_FILE, ItemStore
from retrieval.sources import load_query_images

BACKENDS = ("auto", "faiss", "torch")


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


# ----------------------------------------------------------------------------------------------- backends


class TorchBackend:
    """Exact inner-product k-NN with torch on `device`."""

    name = "torch"

    def __init__(self, vectors: np.ndarray, device="cpu", query_block: int = 1024):
        self.device = torch.device(device)
        self.db = torch.from_numpy(np.array(vectors, dtype=np.float32)).to(self.device)  # copy: memmaps are read-only
        self.query_block = query_block

    def __len__(self) -> int:
        return self.db.shape[0]

    def set_params(self, params: str | None) -> None:
        """Exact search has no parameters; accepted and ignored so callers need not care."""

    @torch.inference_mode()
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, len(self))
        scores, ids = [], []
        q_all = torch.from_numpy(np.array(queries, dtype=np.float32))  # a copy: memmaps are read-only
        for s in range(0, len(q_all), self.query_block):
            sims = q_all[s:s + self.query_block].to(self.device) @ self.db.T
            top = torch.topk(sims, k, dim=1)
            scores.append(top.values.cpu())
            ids.append(top.indices.cpu())
        if not scores:
            return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
        return torch.cat(scores).numpy(), torch.cat(ids).numpy().astype(np.int64)


class FaissBackend:
    """A FAISS index (CPU, or GPU through faiss-gpu)."""

    def __init__(self, path: Path, device="cpu"):
        faiss = require_faiss()
        self.faiss = faiss
        self.index = faiss.read_index(str(path))
        self.on_gpu = False
        if torch.device(device).type == "cuda":
            if not hasattr(faiss, "StandardGpuResources"):
                raise UserError("this faiss has no GPU support: install 'hebbir[gpu]' or use the torch backend")
            self._res = faiss.StandardGpuResources()
            self.index = faiss.index_cpu_to_gpu(self._res, torch.device(device).index or 0, self.index)
            self.on_gpu = True
        self.name = "faiss-gpu" if self.on_gpu else "faiss"

    def __len__(self) -> int:
        return self.index.ntotal

    def set_params(self, params: str | None) -> None:
        """Apply faiss search parameters, e.g. "nprobe=32" or "efSearch=128" (comma-separated)."""
        if not params:
            return
        space = self.faiss.GpuParameterSpace() if self.on_gpu else self.faiss.ParameterSpace()
        try:
            space.set_index_parameters(self.index, params)
        except RuntimeError as exc:
            lines = str(exc).strip().splitlines()
            raise UserError(f"search parameters '{params}' do not apply to this index "
                            f"({lines[-1] if lines else 'rejected'})") from None

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, len(self))
        scores, ids = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return scores, ids.astype(np.int64)


def make_backend(index_dir: Path, manifest: dict, backend: str = "auto", device="cpu"):
    """The search backend for `index_dir` (see the module docstring for the choice)."""
    if backend not in BACKENDS:
        raise UserError(f"unknown backend '{backend}' (choose from {', '.join(BACKENDS)})")
    device = torch.device(device)
    faiss_file = index_dir / FAISS_FILE
    faiss = faiss_or_none()
    if backend == "auto":
        usable = faiss is not None and faiss_file.is_file()
        if usable and device.type == "cuda" and not hasattr(faiss, "StandardGpuResources"):
            usable = False  # faiss-cpu on a GPU machine: exact torch search on the GPU instead
        backend = "faiss" if usable else "torch"
    if backend == "faiss":
        if not faiss_file.is_file():
            raise UserError(f"{index_dir}: built without faiss (no {FAISS_FILE}); use the torch backend")
        return FaissBackend(faiss_file, device)
    return TorchBackend(np.load(index_dir / VECTORS_FILE, mmap_mode="r"), device)


def search_params(nprobe: int | None = None, ef_search: int | None = None, params: str | None = None) -> str | None:
    """faiss ParameterSpace string from the usual knobs ("nprobe=16,efSearch=64")."""
    parts = [p for p in (params or "").split(",") if p.strip()]
    if nprobe is not None:
        parts.append(f"nprobe={int(nprobe)}")
    if ef_search is not None:
        parts.append(f"efSearch={int(ef_search)}")
    return ",".join(parts) or None


# ----------------------------------------------------------------------------------------------- handle


class IndexHandle:
    """An opened index directory: its manifest, model, feature extractor, items and search backend."""

    def __init__(self, index_dir: Path, manifest: dict, net, extractor: FeatureExtractor, items: ItemStore,
                 backend):
        self.path = index_dir
        self.manifest = manifest
        self.model = net
        self.extractor = extractor
        self.items = items
        self.backend = backend

    def __len__(self) -> int:
        return len(self.backend)

    def __enter__(self) -> "IndexHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.items.close()

    @property
    def dim(self) -> int:
        return int(self.manifest["dimension"])

    def set_search_params(self, nprobe: int | None = None, ef_search: int | None = None,
                          params: str | None = None) -> None:
        """Query-time settings of approximate indexes (ignored by exact ones)."""
        text = search_params(nprobe, ef_search, params)
        if text and self.backend.name.startswith("faiss"):
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
        scores, ids = self.backend.search(x, k)
        found = self.items.get_many(np.unique(ids[ids >= 0]).tolist())
        results = []
        for row_scores, row_ids in zip(scores, ids):
            hits = []
            for score, item_id in zip(row_scores.tolist(), row_ids.tolist()):
                if item_id < 0:
                    continue  # an approximate index found fewer than k candidates
                it = found[item_id]
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
        """All item vectors (N, d) float32, memory-mapped."""
        return np.load(self.path / VECTORS_FILE, mmap_mode="r")


def open_index(index_dir, device="cpu", backend: str = "auto", model=None, batch_size: int = 256) -> IndexHandle:
    """Open an index directory for searching, checking that its files and model agree with the manifest.

    `device`: where query features and the search run (cpu, cuda, auto). `model`: optionally a checkpoint
    the caller expects the index to have been built with; a different one is a `UserError`.
    """
    index_dir = Path(index_dir)
    manifest = read_manifest(index_dir)
    device = resolve_device(device)
    extractor = index_extractor(index_dir, manifest, device, model=model, batch_size=batch_size)
    if extractor.dim != manifest["dimension"]:
        raise UserError(f"{index_dir}: the model gives {extractor.dim}-d features, the index holds "
                        f"{manifest['dimension']}-d vectors")
    search_device = device
    engine = make_backend(index_dir, manifest, backend, search_device)
    items = ItemStore(index_dir / ITEMS_FILE)
    if not (len(engine) == len(items) == manifest["item_count"]):
        items.close()
        raise UserError(f"{index_dir}: damaged index: {len(engine)} vectors, {len(items)} items, manifest says "
                        f"{manifest['item_count']}; rebuild it")
    return IndexHandle(index_dir, manifest, extractor.net, extractor, items, engine)
