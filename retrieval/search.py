"""Searching an index directory: the public `open_index(path) -> IndexHandle` and the search backends.

A thin module kept for the callers that import from here (the page, the benchmarks); the code lives in
`retrieval.index.handle` and `retrieval.index.backends`.
"""

from retrieval.index.backends import (BACKENDS, FaissBackend, TorchBackend, faiss_or_none, make_backend,
                                      search_params)
from retrieval.index.handle import Hit, IndexHandle, check_index, open_index

__all__ = ["BACKENDS", "FaissBackend", "Hit", "IndexHandle", "TorchBackend", "check_index", "faiss_or_none",
           "make_backend", "open_index", "search_params"]
