"""Index directories: build, extend, open and check them.

Modules, each with one job (none imports this package's `__init__`, so any of them loads on its own):
  - `manifest`: the typed `Manifest` of `manifest.json` (format versions, required fields);
  - `directory`: file names, reading the manifest, atomic swap-in, temporary folders and their clean-up;
  - `backends`: faiss helpers and the faiss / torch search backends;
  - `model`: checkpoints, model checks, the index's feature extractor;
  - `extract`: checkpointed feature extraction (resumable builds);
  - `build`: `build_index`, `add_to_index`, `repair_index`;
  - `milvus_backend`: Milvus (Lite or a server) as the search backend of an index built with it;
  - `sync`: `sync_index`, an index brought up to date with a folder that changed; `delete_items`;
  - `handle`: `open_index(path) -> IndexHandle` and `check_index`;
  - `duplicates`: `find_duplicates`, groups of identical and nearly identical images.
The names below are the public API the command line, the page and the evaluation use. They load on first
use, so that importing a light module (`manifest`, `directory`) does not pull in torch and the network.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {
    "backends": ["BACKENDS", "FAISS_MISSING", "FaissBackend", "TorchBackend", "faiss_or_none", "make_backend",
                 "make_faiss_index", "new_faiss_index", "require_faiss", "search_params"],
    "build": ["CHUNK_SIZE", "add_to_index", "build_index", "repair_index"],
    "directory": ["FAISS_FILE", "ITEMS_FILE", "MANIFEST_FILE", "PROJECTION_FILE", "VECTORS_FILE",
                  "clean_stale_tmp", "is_index_dir", "read_manifest", "recover"],
    "handle": ["Hit", "IndexHandle", "check_index", "open_index"],
    "duplicates": ["find_duplicates"],
    "manifest": ["FORMAT_VERSION", "METRIC", "Manifest", "ManifestError"],
    "model": ["DEFAULT_LAYER", "architecture_of", "check_model", "default_layer", "index_extractor", "load_model"],
    "sync": ["delete_items", "sync_index"],
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:
    from retrieval.index.backends import (BACKENDS, FAISS_MISSING, FaissBackend, TorchBackend, faiss_or_none,
                                          make_backend, make_faiss_index, new_faiss_index, require_faiss,
                                          search_params)
    from retrieval.index.build import CHUNK_SIZE, add_to_index, build_index, repair_index
    from retrieval.index.directory import (FAISS_FILE, ITEMS_FILE, MANIFEST_FILE, PROJECTION_FILE, VECTORS_FILE,
                                           clean_stale_tmp, is_index_dir, read_manifest, recover)
    from retrieval.index.duplicates import find_duplicates
    from retrieval.index.handle import Hit, IndexHandle, check_index, open_index
    from retrieval.index.manifest import FORMAT_VERSION, METRIC, Manifest, ManifestError
    from retrieval.index.model import (DEFAULT_LAYER, architecture_of, check_model, default_layer,
                                       index_extractor, load_model)
    from retrieval.index.sync import delete_items, sync_index
