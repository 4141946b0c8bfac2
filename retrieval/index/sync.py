"""`sync_index`: bring an index up to date with an image folder that changed since it was indexed.

The folder is listed and every file hashed again. What a fresh build of the folder would index is the first
file (in listing order) of each content hash; against that target:
  - items of the index under the folder whose content is no longer there leave (deleted or changed files);
  - contents the index lacks are embedded (new or changed files) with the index's own model and projection;
  - contents it has keep their id and vector; their path and label follow the file (a moved file).
Items from elsewhere (added from another folder) are left alone. Ids stay stable: a removed item leaves a zero
row in the vectors (manifest `deleted_rows`, format 2) instead of renumbering the others. Atomic like build.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np

import retrieval.index.backends as backends
import retrieval.index.milvus_backend as milvus_backend
from hebb.errors import UserError
from hebb.runtime import resolve_device, utc_now
from retrieval.index.backends import load_vectors, make_faiss_index
from retrieval.index.build import CHUNK_SIZE, copy_index_files
from retrieval.index.directory import (FAISS_FILE, ITEMS_FILE, VECTORS_FILE, clean_stale_tmp, partial_path,
                                       pause_at, read_manifest, reading, staged, write_manifest)
from retrieval.index.extract import collect, extract_chunks, listing_digest, prepare_workdir
from retrieval.index.manifest import HOLES_VERSION, Manifest
from retrieval.index.model import index_extractor
from retrieval.itemstore import ItemStore, write_items
from retrieval.sources import open_source


def _sha256(path: str) -> str | None:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError:
        return None  # unreadable now: treated as gone; a build would skip it too
    return h.hexdigest()


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _elsewhere(entries: list, root: str) -> list:
    return [e for e in entries if not (isinstance(e, dict) and _inside(str(e.get("path", "")), root))]


def sync_index(index_dir, images, device="auto", progress: bool = True, batch_size: int = 256,
               exclude: Sequence[str] | None = None, dry_run: bool = False, chunk_size: int = CHUNK_SIZE) -> dict:
    """Make the items of `index_dir` that lie under the folder `images` match the folder now (see the module
    docstring). With `dry_run` nothing is embedded or written. Returns dict(removed=[paths], added=[paths],
    moved=[(old, new)], kept=int, skipped=[{path, reason}], manifest=Manifest).
    """
    t_start = time.perf_counter()
    index_dir = Path(index_dir)
    manifest = read_manifest(index_dir)
    source = open_source(images, exclude=exclude) if Path(images).is_dir() else None
    if source is None or source.kind != "folder":
        raise UserError(f"{images}: hebbir index sync works on an image folder (a dataset does not change)")
    root = source.spec
    with reading(index_dir / ITEMS_FILE), ItemStore(index_dir / ITEMS_FILE) as store:
        items = store.all()
    by_hash = {it.sha256: it for it in items}

    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 2) * 2)) as pool:
        digests = list(pool.map(_sha256, source.paths))
    target: dict[str, int] = {}  # content -> position of its first file in the listing
    unreadable = []
    for pos, digest in enumerate(digests):
        if digest is None:
            unreadable.append({"path": source.paths[pos], "reason": "cannot read"})
        else:
            target.setdefault(digest, pos)
    duplicates = [{"path": source.paths[pos], "same_as": source.paths[target[d]]}
                  for pos, d in enumerate(digests) if d is not None and target[d] != pos]
    removed = [it for it in items if _inside(it.path, root) and it.sha256 not in target]
    new_positions = sorted(pos for digest, pos in target.items() if digest not in by_hash)
    moves = {}  # item id -> (new path, new label)
    for digest, pos in target.items():
        it, now = by_hash.get(digest), (source.paths[pos], source.labels[pos])
        if it is not None and _inside(it.path, root) and (it.path, it.label) != now:
            moves[it.id] = now
    by_id = {it.id: it for it in items}
    report = {"removed": [it.path for it in removed], "added": [source.paths[p] for p in new_positions],
              "moved": [(by_id[i].path, path) for i, (path, _) in moves.items()],
              "kept": len(items) - len(removed), "skipped": source.skipped + unreadable, "manifest": manifest}
    if dry_run or not (removed or new_positions or moves):
        return report

    clean_stale_tmp(index_dir)
    old = load_vectors(index_dir, manifest)
    sub = source.subset(new_positions, note="new or changed files")
    vectors, positions, hashes = np.zeros((0, manifest.dimension), np.float32), [], []
    work = partial_path(index_dir)
    if new_positions:
        ext = index_extractor(index_dir, manifest, resolve_device(device), batch_size=batch_size)
        prepare_workdir(work, {"sync_listing": listing_digest(sub), "add_to": manifest.model_checksum,
                               "rows": manifest.rows, "updated": manifest.updated, "chunk_size": chunk_size})
        chunks, _, _ = extract_chunks(sub, ext, work, set(), chunk_size, progress)
        vectors, positions, hashes, skipped, _ = collect(chunks, sub, {})
        report["skipped"] += skipped
    report["added"] = [sub.paths[p] for p in positions]

    rows = np.concatenate([old, vectors]).astype(np.float32, copy=False)
    gone = {it.id for it in removed}
    if gone:
        rows[sorted(gone)] = 0.0  # ids stay row numbers: a deleted item keeps a zero row
    kept = [(it.id, *moves.get(it.id, (it.path, it.label)), it.sha256) for it in items if it.id not in gone]
    added = [(manifest.rows + i, sub.paths[p], sub.labels[p], h) for i, (p, h) in enumerate(zip(positions, hashes))]
    with staged(index_dir, "syncing") as tmp:
        copy_index_files(index_dir, manifest, tmp, (VECTORS_FILE, FAISS_FILE, ITEMS_FILE))
        np.save(tmp / VECTORS_FILE, rows)
        pause_at("write")
        if (index_dir / FAISS_FILE).is_file():
            faiss = backends.require_faiss("this index has a FAISS file to rewrite")
            faiss.write_index(make_faiss_index(rows, manifest.factory), str(tmp / FAISS_FILE))
        write_items(tmp / ITEMS_FILE, kept + added)
        if manifest.backend == "milvus":
            changed = [(i, *moves[i], by_id[i].sha256) for i in moves if i not in gone] + added
            milvus_backend.update_collection(tmp, manifest, delete=sorted(gone), upsert_ids=[r[0] for r in changed],
                                             vectors=rows[[r[0] for r in changed]], items=[r[1:] for r in changed])
        manifest.deleted_rows += len(gone)
        manifest.item_count = len(kept) + len(added)
        if manifest.deleted_rows:
            manifest.format_version = max(manifest.format_version, HOLES_VERSION)
        manifest.updated = utc_now()
        # what this folder's build would record now, beside the entries of other folders
        manifest.skipped = _elsewhere(manifest.skipped, root) + report["skipped"]
        manifest.duplicates = _elsewhere(manifest.duplicates, root) + duplicates
        manifest.additions.append({"source": source.spec, "sync": True, "added": len(added),
                                   "removed": len(gone), "moved": len(moves), "time": utc_now(),
                                   "seconds": round(time.perf_counter() - t_start, 2)})
        write_manifest(tmp, manifest)
    shutil.rmtree(work, ignore_errors=True)
    return report


def delete_items(index_dir, ids: Sequence[int]) -> Manifest:
    """Remove the items `ids` from `index_dir`, atomically: from the item table, the FAISS file or the Milvus
    collection; their rows of vectors.npy become zero rows (format 2, like a sync). Returns the manifest."""
    index_dir = Path(index_dir)
    manifest = read_manifest(index_dir)
    with reading(index_dir / ITEMS_FILE), ItemStore(index_dir / ITEMS_FILE) as store:
        items = store.all()
    present = {it.id for it in items}
    gone_set = {int(i) for i in ids}
    gone = sorted(gone_set)
    unknown = [i for i in gone if i not in present]
    if unknown:
        raise UserError(f"{index_dir}: no item with id {', '.join(map(str, unknown[:5]))}")
    if not gone:
        return manifest
    clean_stale_tmp(index_dir)
    rows = np.array(load_vectors(index_dir, manifest), dtype=np.float32)
    rows[gone] = 0.0
    with staged(index_dir, "deleting") as tmp:
        copy_index_files(index_dir, manifest, tmp, (VECTORS_FILE, FAISS_FILE, ITEMS_FILE))
        np.save(tmp / VECTORS_FILE, rows)
        if (index_dir / FAISS_FILE).is_file():
            faiss = backends.require_faiss("this index has a FAISS file to rewrite")
            faiss.write_index(make_faiss_index(rows, manifest.factory), str(tmp / FAISS_FILE))
        write_items(tmp / ITEMS_FILE, [(it.id, it.path, it.label, it.sha256) for it in items if it.id not in gone_set])
        if manifest.backend == "milvus":
            milvus_backend.update_collection(tmp, manifest, delete=gone)
        manifest.deleted_rows += len(gone)
        manifest.item_count -= len(gone)
        manifest.format_version = max(manifest.format_version, HOLES_VERSION)
        manifest.updated = utc_now()
        manifest.additions.append({"source": "delete_items", "added": 0, "removed": len(gone), "time": utc_now()})
        write_manifest(tmp, manifest)
    return manifest
