"""`find_duplicates`: groups of identical files (same bytes) and of nearly identical images (cosine).

Identical files are never indexed twice: the manifest lists each one with the file it repeats. Near
duplicates are pairs of items whose vectors' cosine similarity reaches a threshold, joined into groups
(connected components); every pair is compared, in blocks, with torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from hebb.errors import UserError
from retrieval.index.backends import load_vectors
from retrieval.index.directory import read_manifest
from retrieval.index.handle import open_items

DEFAULT_THRESHOLD = 0.95


def _exact_groups(duplicates: list, path_of: dict[int, str]) -> list[list[str]]:
    groups: dict[str, list[str]] = {}
    for d in duplicates:
        first = d.get("same_as")
        if isinstance(first, str) and first.isdigit():  # `add` records the id of the indexed item
            first = path_of.get(int(first), first)
        if first is not None:
            groups.setdefault(str(first), []).append(str(d.get("path")))
    return [[first, *sorted(set(rest))] for first, rest in sorted(groups.items())]


def _find(parent: list[int], i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


def find_duplicates(index_dir, threshold: float = DEFAULT_THRESHOLD, block: int = 512) -> dict:
    """{"exact": [[indexed path, same-bytes paths...]], "near": [{"items": [{id, path}], "min_score": s}]}.

    Near groups join items whose cosine similarity is at least `threshold` (0 < threshold <= 1).
    """
    if not 0 < threshold <= 1:
        raise UserError(f"threshold must be in (0, 1], got {threshold}")
    index_dir = Path(index_dir)
    manifest = read_manifest(index_dir)
    vectors = torch.from_numpy(np.array(load_vectors(index_dir, manifest), dtype=np.float32))
    with open_items(index_dir, manifest) as store:
        items = {it.id: it for it in store.all()}
    parent = list(range(len(vectors)))
    pairs: list[tuple[int, float]] = []
    with torch.inference_mode():
        for start in range(0, len(vectors), block):
            sims = vectors[start:start + block] @ vectors.T
            rows, cols = torch.nonzero(sims >= threshold - 1e-6, as_tuple=True)
            for r, c in zip(rows.tolist(), cols.tolist()):
                i = start + r
                if c > i and i in items and c in items:  # each pair once; deleted rows are zero: never similar
                    a, b = _find(parent, i), _find(parent, c)
                    parent[max(a, b)] = min(a, b)
                    pairs.append((i, float(sims[r, c])))
    weakest: dict[int, float] = {}
    for i, score in pairs:
        root = _find(parent, i)
        weakest[root] = min(score, weakest.get(root, 1.0))
    members: dict[int, list[int]] = {}
    for i in items:
        members.setdefault(_find(parent, i), []).append(i)
    near = [{"items": [{"id": i, "path": items[i].path} for i in sorted(ids)], "min_score": round(weakest[root], 4)}
            for root, ids in sorted(members.items()) if len(ids) > 1]
    return {"exact": _exact_groups(manifest.duplicates, {i: it.path for i, it in items.items()}), "near": near}
