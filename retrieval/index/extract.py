"""Checkpointed feature extraction for build and add: the PCA fit, then features chunk by chunk.

Each finished chunk is saved in the work folder `.NAME.partial/`, keyed by the source listing, the model
checksum and the feature config, so that a rerun of an interrupted build resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from hebb.runtime import write_json_atomic
from retrieval.features import FIT_SAMPLES, FeatureExtractor
from retrieval.index.directory import PROJECTION_FILE, pause_at, save_npz
from retrieval.sources import ImageSource, read_chunk


def listing_digest(source: ImageSource) -> str:
    """A digest of a source's listing (paths, sizes, mtimes): a changed collection gets a new work folder."""
    h = hashlib.sha256(source.spec.encode())
    for p in source.paths:
        try:
            st = os.stat(p)
            h.update(f"{p}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{p}\t-\n".encode())
    return h.hexdigest()


def prepare_workdir(work: Path, key: dict) -> None:
    """Reuse `work` if it was started for the same `key`, else start it afresh."""
    key_file = work / "key.json"
    if work.is_dir():
        try:
            if json.loads(key_file.read_text()) == key:
                return
        except (OSError, json.JSONDecodeError):
            pass
        shutil.rmtree(work)
    work.mkdir(parents=True)
    write_json_atomic(key_file, key)


def fit_projection(ext: FeatureExtractor, source: ImageSource, work: Path | None,
                   fit_samples: int = FIT_SAMPLES, progress: bool = False) -> float:
    """Fit the extractor's projection on a seeded sample of `source` (or reload the fit saved in `work`).

    Returns the seconds this run spent on it.
    """
    if not ext.needs_fit:
        return 0.0
    proj_file = work / PROJECTION_FILE if work else None
    if proj_file is not None and proj_file.is_file():
        try:
            with np.load(proj_file) as z:
                ext.state = {k: torch.from_numpy(z[k]).to(ext.device) for k in z.files}
            return 0.0
        except (OSError, ValueError, EOFError):
            proj_file.unlink(missing_ok=True)  # a half-written checkpoint of a killed run: fit again
    t0 = time.perf_counter()
    positions = list(range(len(source)))
    if len(positions) > fit_samples:
        positions = np.sort(np.random.default_rng(0).choice(len(positions), fit_samples, replace=False)).tolist()
    images = read_chunk(source, positions, ext.side).images
    ext.progress = progress
    try:
        ext.fit(images, max_samples=fit_samples)
    finally:
        ext.progress = False
    if proj_file is not None:
        save_npz(proj_file, **ext.state_arrays())
    return time.perf_counter() - t0


def _load_chunk(f: Path) -> dict | None:
    try:
        with np.load(f) as z:
            return {"vectors": z["vectors"], "positions": z["positions"].tolist(),
                    "hashes": z["hashes"].tolist(), "skipped": json.loads(str(z["skipped"])),
                    "known": json.loads(str(z["known"]))}
    except (OSError, ValueError, EOFError, KeyError):
        return None


def extract_chunks(source: ImageSource, ext: FeatureExtractor, work: Path, known: set,
                   chunk_size: int, progress: bool) -> tuple[list[dict], float, int]:
    """Features of every chunk of `source`, resuming from the chunk files already in `work`.

    Returns (chunks as dicts, seconds spent on new chunks, images processed by this run).
    """
    starts = list(range(0, len(source), chunk_size))
    chunk_files = [work / f"chunk_{i:05d}.npz" for i in range(len(starts))]
    done = sum(min(chunk_size, len(source) - s) for s, f in zip(starts, chunk_files) if f.is_file())
    bar = tqdm(total=len(source), initial=done, desc="indexing", unit="img", disable=not progress,
               dynamic_ncols=True)
    chunks: list[dict | None] = [None] * len(starts)
    spent, processed = 0.0, 0
    try:
        for n, (start, f) in enumerate(zip(starts, chunk_files)):
            if f.is_file():
                chunks[n] = _load_chunk(f)
                if chunks[n] is not None:
                    continue
            t0 = time.perf_counter()
            positions = list(range(start, min(start + chunk_size, len(source))))
            chunk = read_chunk(source, positions, ext.side, known)
            vectors = ext.transform(chunk.images) if len(chunk.images) else np.zeros((0, ext.dim), np.float32)
            save_npz(f, vectors=vectors, positions=np.asarray(chunk.positions, np.int64),
                     hashes=np.asarray(chunk.hashes, dtype="U64"),
                     skipped=np.asarray(json.dumps(chunk.skipped)),
                     known=np.asarray(json.dumps(chunk.known)))
            chunks[n] = _load_chunk(f)
            pause_at("extract")
            spent += time.perf_counter() - t0
            processed += len(positions)
            bar.update(len(positions))
    finally:
        bar.close()
    return chunks, spent, processed


def collect(chunks: list[dict], source: ImageSource, known: dict[str, int]
            ) -> tuple[np.ndarray, list[int], list[str], list[dict], list[dict]]:
    """Concatenate chunks, keeping the first file of each content hash.

    Returns (vectors, source positions, hashes, skipped, duplicates) of the kept rows.
    """
    first_path = {}
    vectors, positions, hashes, skipped, duplicates = [], [], [], [], []
    for c in chunks:
        skipped.extend(c["skipped"])
        for path, digest in c["known"]:
            duplicates.append({"path": path, "same_as": known.get(digest)})
        keep = []
        for row, (pos, digest) in enumerate(zip(c["positions"], c["hashes"])):
            if digest in first_path:
                duplicates.append({"path": source.paths[pos], "same_as": first_path[digest]})
                continue
            first_path[digest] = source.paths[pos]
            keep.append(row)
            positions.append(pos)
            hashes.append(digest)
        vectors.append(c["vectors"][keep])
    d = chunks[0]["vectors"].shape[1] if chunks else 0
    all_vectors = np.concatenate(vectors) if vectors else np.zeros((0, d), np.float32)
    return all_vectors.astype(np.float32, copy=False), positions, hashes, skipped, duplicates
