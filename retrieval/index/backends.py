"""Search backends over an index directory's vectors, and the faiss helpers that build them.

Backends, same neighbours on every path (ties aside):
  - `faiss`: the FAISS file, on the CPU, or on the GPU when faiss-gpu is installed and device is cuda;
    `nprobe` / `efSearch` and any other faiss ParameterSpace setting apply at query time.
  - `torch`: exact inner product (matrix product + top-k) over `vectors.npy`, on the CPU or a GPU; needs no
    faiss. It is what runs on a GPU without faiss-gpu, and on any machine without faiss.
faiss is imported lazily, so that this module loads where it is not installed.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from hebb.errors import UserError
from retrieval.index.directory import FAISS_FILE, VECTORS_FILE, reading
from retrieval.index.manifest import Manifest

BACKENDS = ("auto", "faiss", "torch", "milvus")
FAISS_MISSING = ("faiss is not installed: install it with pip install 'hebbir[cpu]' "
                 "(or 'hebbir[gpu]' on a CUDA machine)")


def repair_hint(index_dir: Path) -> str:
    return f"rebuild it from {VECTORS_FILE} with: hebbir index repair --index {index_dir}"


# ----------------------------------------------------------------------------------------------- faiss


def faiss_or_none():
    """The faiss module, or None when it is not installed."""
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def require_faiss(why: str = ""):
    """The faiss module, or a `UserError` saying how to install it."""
    faiss = faiss_or_none()
    if faiss is None:
        raise UserError(FAISS_MISSING + (f" ({why})" if why else ""))
    return faiss


def new_faiss_index(factory: str, dim: int, n_vectors: int):
    """An empty inner-product index for `factory` ("Flat" or any faiss index_factory string).

    Raises a `UserError` for a string faiss rejects, or when a trained type would get too few vectors.
    """
    faiss = require_faiss(f"index type {factory}")
    if factory == "Flat":
        return faiss.IndexFlatIP(dim)
    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
        why = re.sub(r"^Error in .*? at \S+:\d+: (Error: )?", "", lines[-1] if lines else "rejected")
        raise UserError(f"bad --factory '{factory}' for {dim}-d vectors: {why}") from None
    if not index.is_trained:
        ivf = faiss.try_extract_index_ivf(index) if hasattr(faiss, "try_extract_index_ivf") else None
        needed = max(getattr(ivf, "nlist", 0) if ivf is not None else 0, 256 if "PQ" in factory else 1)
        if n_vectors < needed:
            raise UserError(f"index type '{factory}' needs at least {needed} vectors to train, the collection "
                            f"has {n_vectors}; use a smaller one (e.g. Flat)")
    return index


def make_faiss_index(vectors: np.ndarray, factory: str = "Flat"):
    """A FAISS inner-product index of `vectors` (ids = row numbers), trained first when the type needs it."""
    index = new_faiss_index(factory, vectors.shape[1], len(vectors))
    if not index.is_trained:
        sample = vectors
        if len(vectors) > 100_000:
            idx = np.sort(np.random.default_rng(0).choice(len(vectors), 100_000, replace=False))
            sample = vectors[idx]
        index.train(np.ascontiguousarray(sample, dtype=np.float32))
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return index


def read_faiss_index(index_dir: Path, manifest: Manifest):
    """The FAISS index of `index_dir`, checked against the manifest; damage is a `UserError`."""
    faiss = require_faiss(f"this index has a {FAISS_FILE} to read")
    path = index_dir / FAISS_FILE
    with reading(path, repair_hint(index_dir)):
        if path.stat().st_size == 0:
            raise ValueError("empty file")
        try:
            index = faiss.read_index(str(path))
        except RuntimeError:
            raise ValueError("truncated, or not a FAISS index") from None  # faiss says where in its C++ code
    if index.ntotal != manifest.rows or index.d != manifest.dimension:
        raise UserError(f"{path}: damaged index file ({index.ntotal} vectors of {index.d} floats, the manifest "
                        f"says {manifest.rows} of {manifest.dimension}); {repair_hint(index_dir)}")
    return index


def load_vectors(index_dir: Path, manifest: Manifest, mmap: bool = True) -> np.ndarray:
    """`vectors.npy` (N, d) float32, memory-mapped unless `mmap` is False; damage is a `UserError`."""
    path = index_dir / VECTORS_FILE
    with reading(path):
        vectors = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    expected = (manifest.rows, manifest.dimension)
    if vectors.dtype != np.float32 or vectors.shape != expected:
        raise UserError(f"{path}: damaged index file ({vectors.dtype} {vectors.shape}, the manifest says float32 "
                        f"{expected}); rebuild the index with: hebbir index build --force")
    return vectors


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
    """A FAISS index (CPU, or GPU through faiss-gpu): a faiss index object, or the path of a file."""

    def __init__(self, index, device="cpu"):
        faiss = require_faiss()
        self.faiss = faiss
        self.index = faiss.read_index(str(index)) if isinstance(index, (str, Path)) else index
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


def make_backend(index_dir: Path, manifest: Manifest, backend: str = "auto", device="cpu"):
    """The search backend for `index_dir` (see the module docstring for the choice)."""
    if backend not in BACKENDS:
        raise UserError(f"unknown backend '{backend}' (choose from {', '.join(BACKENDS)})")
    device = torch.device(device)
    if backend == "auto" and manifest.backend == "milvus":
        backend = "milvus"
    if backend == "milvus":
        if manifest.backend != "milvus":
            raise UserError(f"{index_dir}: a faiss index has no Milvus collection; build one with "
                            f"hebbir index build --backend milvus")
        from retrieval.index.milvus_backend import MilvusBackend

        return MilvusBackend(index_dir, manifest)
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
        return FaissBackend(read_faiss_index(index_dir, manifest), device)
    return TorchBackend(load_vectors(index_dir, manifest), device)


def search_params(nprobe: int | None = None, ef_search: int | None = None, params: str | None = None) -> str | None:
    """faiss ParameterSpace string from the usual knobs ("nprobe=16,efSearch=64")."""
    parts = [p for p in (params or "").split(",") if p.strip()]
    if nprobe is not None:
        parts.append(f"nprobe={int(nprobe)}")
    if ef_search is not None:
        parts.append(f"efSearch={int(ef_search)}")
    return ",".join(parts) or None
