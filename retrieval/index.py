"""Index directories: build, extend and validate them (DESIGN §5).

An index directory holds

    manifest.json       format version, model checksum, architecture, feature config, metric, faiss version,
                        item count, times, throughput, images skipped and why, duplicates
    index.faiss         the FAISS index (ids = row numbers); absent when built without faiss installed
    vectors.npy         the same vectors as float32 (N, d): the torch backend and `add` read them without faiss
    items.sqlite        id -> path, label, sha256 of the file bytes (unique)
    projection.npz      the fitted PCA, when the features use one
    model.<ext>         a copy of the checkpoint, so that the directory is self-contained

Writes are atomic: everything is written into a temporary folder beside the target, which then takes the
target's place by rename; a crash or Ctrl-C leaves the previous index as it was. Feature extraction is
checkpointed per chunk in `.NAME.partial/` (keyed by the source listing, the model checksum and the feature
config), so that a rerun of an interrupted build resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from hebb.errors import UserError
from retrieval.features import FIT_SAMPLES, FeatureExtractor, describe
from retrieval.itemstore import ITEMS_FILE, ItemStore, write_items
from retrieval.sources import ImageSource, open_source, read_chunk

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
FAISS_FILE = "index.faiss"
VECTORS_FILE = "vectors.npy"
PROJECTION_FILE = "projection.npz"
METRIC = "inner_product"
CHUNK_SIZE = 2048
DEFAULT_LAYER = 3

FAISS_MISSING = ("faiss is not installed: install it with pip install 'hebbir[cpu]' "
                 "(or 'hebbir[gpu]' on a CUDA machine)")


# ----------------------------------------------------------------------------------------------- helpers


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


def resolve_device(device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("device cuda: no CUDA GPU is visible to torch")
    return device


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _backup_path(out: Path) -> Path:
    return out.parent / f".{out.name}.previous"


def _partial_path(out: Path) -> Path:
    return out.parent / f".{out.name}.partial"


def recover(out: Path | str) -> None:
    """Finish a swap that a crash interrupted between its two renames (restores the previous index)."""
    out = Path(out)
    backup = _backup_path(out)
    if backup.exists():
        if not out.exists():
            os.replace(backup, out)
        else:
            shutil.rmtree(backup, ignore_errors=True)


def _swap_in(tmp: Path, out: Path) -> None:
    """Put the finished folder `tmp` at `out`, replacing what was there."""
    backup = _backup_path(out)
    if backup.exists():
        shutil.rmtree(backup)
    if out.exists():
        os.replace(out, backup)
    os.replace(tmp, out)
    shutil.rmtree(backup, ignore_errors=True)


def _new_tmp_dir(out: Path, what: str) -> Path:
    """A fresh folder beside `out`, with the permissions a plain mkdir would give (mkdtemp's are 0700)."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.{what}-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    return tmp


def _save_npz(path: Path, **arrays) -> None:
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def is_index_dir(path: Path | str) -> bool:
    return (Path(path) / MANIFEST_FILE).is_file()


def read_manifest(index_dir: Path | str) -> dict:
    """The manifest of an index directory, with a clear error when it is not one."""
    index_dir = Path(index_dir)
    recover(index_dir)
    mf = index_dir / MANIFEST_FILE
    if not mf.is_file():
        what = "no such folder" if not index_dir.exists() else "not an index directory (no manifest.json)"
        raise UserError(f"{index_dir}: {what}; build one with: hebbir index build")
    try:
        manifest = json.loads(mf.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{mf}: unreadable manifest ({exc})") from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{index_dir}: index format {manifest.get('format_version')} is not supported "
                        f"(this hebbir reads format {FORMAT_VERSION}); rebuild it with hebbir index build")
    return manifest


# ----------------------------------------------------------------------------------------------- model


def load_model(path: Path | str, device="cpu"):
    """(net, meta, checksum) of a checkpoint file."""
    from hebb.checkpoint import file_checksum, load_checkpoint

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such model checkpoint")
    net, meta = load_checkpoint(path, device=device)
    return net, dict(meta or {}), file_checksum(path)


def architecture_of(net, meta: dict) -> str:
    network = meta.get("network") if isinstance(meta.get("network"), dict) else {}
    return str(network.get("arch") or getattr(net, "arch", None) or type(net).__name__)


def default_layer(net, meta: dict) -> int:
    """The top layer of a fine-tuned (cut) network, else DEFAULT_LAYER."""
    n_layers = getattr(net, "num_feature_layers", 5)
    if meta.get("stage") == "finetune":
        return n_layers
    return min(DEFAULT_LAYER, n_layers)


def check_model(manifest: dict, checksum: str, arch: str, where: str = "") -> None:
    """Raise a `UserError` when a model does not match the one an index was built with."""
    if checksum != manifest["model_checksum"]:
        raise UserError(f"{where}model checksum {checksum[:12]} does not match the index's model "
                        f"{manifest['model_checksum'][:12]} ({manifest.get('model_source', '?')}): the vectors were "
                        f"computed with another model; rebuild the index or use its own model copy")
    if arch != manifest["architecture"]:
        raise UserError(f"{where}model architecture {arch} does not match the index's {manifest['architecture']}")


# ----------------------------------------------------------------------------------------------- faiss


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


# ----------------------------------------------------------------------------------------------- extraction


def _listing_digest(source: ImageSource) -> str:
    h = hashlib.sha256(source.spec.encode())
    for p in source.paths:
        try:
            st = os.stat(p)
            h.update(f"{p}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{p}\t-\n".encode())
    return h.hexdigest()


def _prepare_workdir(work: Path, key: dict) -> None:
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
    _write_json(key_file, key)


def _fit_projection(ext: FeatureExtractor, source: ImageSource, work: Path | None,
                    fit_samples: int = FIT_SAMPLES, progress: bool = False) -> None:
    if not ext.needs_fit:
        return
    proj_file = work / PROJECTION_FILE if work else None
    if proj_file is not None and proj_file.is_file():
        with np.load(proj_file) as z:
            ext.state = {k: torch.from_numpy(z[k]).to(ext.device) for k in z.files}
        return
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
        _save_npz(proj_file, **ext.state_arrays())


def _extract_chunks(source: ImageSource, ext: FeatureExtractor, work: Path, known: set,
                    chunk_size: int, progress: bool) -> tuple[list[dict], float, int]:
    """Features of every chunk of `source`, resuming from the chunk files already in `work`.

    Returns (chunks as dicts, seconds spent on new chunks, images processed by this run).
    """
    starts = list(range(0, len(source), chunk_size))
    chunk_files = [work / f"chunk_{i:05d}.npz" for i in range(len(starts))]
    done = sum(min(chunk_size, len(source) - s) for s, f in zip(starts, chunk_files) if f.is_file())
    bar = tqdm(total=len(source), initial=done, desc="indexing", unit="img", disable=not progress,
               dynamic_ncols=True)
    spent, processed = 0.0, 0
    try:
        for start, f in zip(starts, chunk_files):
            if f.is_file():
                continue
            t0 = time.perf_counter()
            positions = list(range(start, min(start + chunk_size, len(source))))
            chunk = read_chunk(source, positions, ext.side, known)
            vectors = ext.transform(chunk.images) if len(chunk.images) else np.zeros((0, ext.dim), np.float32)
            _save_npz(f, vectors=vectors, positions=np.asarray(chunk.positions, np.int64),
                      hashes=np.asarray(chunk.hashes, dtype="U64"),
                      skipped=np.asarray(json.dumps(chunk.skipped)),
                      known=np.asarray(json.dumps(chunk.known)))
            spent += time.perf_counter() - t0
            processed += len(positions)
            bar.update(len(positions))
    finally:
        bar.close()
    chunks = []
    for f in chunk_files:
        with np.load(f) as z:
            chunks.append({"vectors": z["vectors"], "positions": z["positions"].tolist(),
                           "hashes": z["hashes"].tolist(), "skipped": json.loads(str(z["skipped"])),
                           "known": json.loads(str(z["known"]))})
    return chunks, spent, processed


def _collect(chunks: list[dict], source: ImageSource, known: dict[str, int]
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


def _copy_model(model: Path, dest_dir: Path) -> str:
    name = "model" + "".join(model.suffixes[-1:])
    try:
        os.link(model, dest_dir / name)  # the copy is never written to; a hard link costs no space
    except OSError:
        shutil.copy2(model, dest_dir / name)
    return name


# ----------------------------------------------------------------------------------------------- build / add


def build_index(model, images, out, layer: int | None = None, pooling: str | None = None, dim: int | None = None,
                factory: str = "Flat", device="auto", batch_size: int = 256, progress: bool = True,
                projection: str | None = None, data_dir=None, force: bool = False,
                chunk_size: int = CHUNK_SIZE, fit_samples: int = FIT_SAMPLES) -> dict:
    """Build the index directory `out` from the images of `images` with features of checkpoint `model`.

    `images` is an image folder, a dataset `NAME[:train|val|test]` of the data directory, or an already
    listed `retrieval.sources.ImageSource` (e.g. a subset); `layer` defaults
    to the layer a fine-tuned model was cut at (else 3); pooling/projection/dim default per architecture and
    layer (`retrieval.features.ARCH_DEFAULTS`). `factory` is "Flat" (exact) or any faiss `index_factory` string.
    The PCA is fitted on a seeded sample of `fit_samples` images. An existing index at `out` is replaced
    only with `force`. Returns the manifest.
    """
    t_start = time.perf_counter()
    out, model = Path(out), Path(model)
    recover(out)
    if out.exists() and not force:
        what = "an index" if is_index_dir(out) else "a folder"
        raise UserError(f"{out}: {what} already exists there; use --force to replace it "
                        f"(or hebbir index add to add images)")
    if factory != "Flat":
        require_faiss(f"index type {factory}")
    device = resolve_device(device)
    net, meta, checksum = load_model(model, device)
    if layer is None:
        layer = default_layer(net, meta)
    ext = FeatureExtractor(net, layer, pooling=pooling or "auto", dim=dim, projection=projection or "auto",
                           device=device, batch_size=batch_size, progress=False)
    source = images if isinstance(images, ImageSource) else open_source(images, data_dir, size=ext.side)
    if factory != "Flat":
        new_faiss_index(factory, ext.dim, len(source))  # a bad factory string fails now, not after extraction
    out.parent.mkdir(parents=True, exist_ok=True)
    work = _partial_path(out)
    key = {"listing": _listing_digest(source), "model_checksum": checksum, "features": ext.config(),
           "requested": {"pooling": pooling, "projection": projection, "dim": dim},
           "chunk_size": chunk_size, "fit_samples": fit_samples, "format_version": FORMAT_VERSION}
    _prepare_workdir(work, key)
    _fit_projection(ext, source, work, fit_samples, progress)
    chunks, spent, processed = _extract_chunks(source, ext, work, set(), chunk_size, progress)
    vectors, positions, hashes, skipped, duplicates = _collect(chunks, source, {})
    if len(vectors) == 0:
        shutil.rmtree(work, ignore_errors=True)
        raise UserError(f"{images}: none of the {len(source)} files could be read as an image "
                        f"(first problem: {skipped[0]['path']}: {skipped[0]['reason']})" if skipped else
                        f"{images}: no images")
    faiss = faiss_or_none()
    if faiss is None and factory == "Flat" and progress:
        print(f"note: {FAISS_MISSING}; writing vectors only (searches use the exact torch backend)")
    tmp = _new_tmp_dir(out, "building")
    try:
        if faiss is not None:
            faiss.write_index(make_faiss_index(vectors, factory), str(tmp / FAISS_FILE))
        np.save(tmp / VECTORS_FILE, vectors)
        write_items(tmp / ITEMS_FILE, ((i, source.paths[p], source.labels[p], h)
                                       for i, (p, h) in enumerate(zip(positions, hashes))))
        if ext.state is not None:
            _save_npz(tmp / PROJECTION_FILE, **ext.state_arrays())
        model_file = _copy_model(model, tmp)
        build_time = time.perf_counter() - t_start
        manifest = {
            "format_version": FORMAT_VERSION,
            "model_file": model_file,
            "model_checksum": checksum,
            "model_source": str(model.resolve()),
            "architecture": architecture_of(net, meta),
            "model_meta": {k: v for k, v in meta.items() if isinstance(v, (str, int, float, bool, type(None)))},
            "features": ext.config(),
            "layer": ext.layer,
            "pooling": ext.pooling,
            "projection": ext.projection,
            "dimension": int(vectors.shape[1]),
            "description": describe(ext.config()),
            "metric": METRIC,
            "factory": factory,
            "faiss_version": getattr(faiss, "__version__", None) if faiss else None,
            "has_faiss_file": faiss is not None,
            "source": source.spec,
            "item_count": int(len(vectors)),
            "files_seen": len(source) + len(source.skipped),
            "created": _now(),
            "updated": None,
            "build_time_s": round(build_time, 2),
            "device": str(device),
            "images_per_s": round(processed / spent, 1) if spent > 0 else None,
            "skipped": source.skipped + skipped,
            "duplicates": duplicates,
            "additions": [],
        }
        _write_json(tmp / MANIFEST_FILE, manifest)
        _swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(work, ignore_errors=True)
    return manifest


def index_extractor(index_dir, manifest: dict, device, model=None, batch_size: int = 256) -> FeatureExtractor:
    """The feature extractor of an index: its model copy (checked against the manifest) and projection.

    `model`: optionally a checkpoint the caller expects the index to have been built with; a different one
    is a `UserError`.
    """
    index_dir = Path(index_dir)
    model_path = index_dir / manifest["model_file"]
    net, meta, checksum = load_model(model_path, device)
    check_model(manifest, checksum, architecture_of(net, meta), where=f"{model_path}: ")
    if model is not None:
        from hebb.checkpoint import file_checksum

        check_model(manifest, file_checksum(model), manifest["architecture"], where=f"{model}: ")
    state = None
    if (index_dir / PROJECTION_FILE).is_file():
        with np.load(index_dir / PROJECTION_FILE) as z:
            state = {k: z[k] for k in z.files}
    return FeatureExtractor.from_config(net, manifest["features"], state, device=device, batch_size=batch_size)


def add_to_index(index_dir, images, device="auto", progress: bool = True, data_dir=None,
                 batch_size: int = 256, model=None, chunk_size: int = CHUNK_SIZE) -> dict:
    """Add the images of `images` that the index lacks (by content hash) to `index_dir`, atomically.

    New vectors go through the index's own model copy and projection; a given `model` must be that same
    model. Returns dict(added=, skipped=, duplicates=, manifest=).
    """
    t_start = time.perf_counter()
    index_dir = Path(index_dir)
    manifest = read_manifest(index_dir)
    device = resolve_device(device)
    ext = index_extractor(index_dir, manifest, device, model=model, batch_size=batch_size)
    source = images if isinstance(images, ImageSource) else open_source(images, data_dir, size=ext.side)
    with ItemStore(index_dir / ITEMS_FILE) as store:
        known = store.known_hashes()
        next_id = store.next_id()
    work = _partial_path(index_dir)
    key = {"listing": _listing_digest(source), "add_to": manifest["model_checksum"],
           "item_count": manifest["item_count"], "created": manifest["created"], "updated": manifest["updated"],
           "chunk_size": chunk_size}
    _prepare_workdir(work, key)
    chunks, spent, processed = _extract_chunks(source, ext, work, set(known), chunk_size, progress)
    vectors, positions, hashes, skipped, duplicates = _collect(chunks, source, {h: str(i) for h, i in known.items()})
    skipped = source.skipped + skipped
    if len(vectors):
        tmp = _new_tmp_dir(index_dir, "adding")
        try:
            for f in index_dir.iterdir():
                if f.name == manifest["model_file"]:
                    _copy_model(f, tmp)
                elif f.is_file() and f.name not in (VECTORS_FILE, FAISS_FILE):
                    shutil.copy2(f, tmp / f.name)
            old = np.load(index_dir / VECTORS_FILE, mmap_mode="r")
            np.save(tmp / VECTORS_FILE, np.concatenate([old, vectors]))
            if (index_dir / FAISS_FILE).is_file():
                faiss = require_faiss("this index has a FAISS file to extend")
                index = faiss.read_index(str(index_dir / FAISS_FILE))
                index.add(np.ascontiguousarray(vectors))
                faiss.write_index(index, str(tmp / FAISS_FILE))
            write_items(tmp / ITEMS_FILE, ((next_id + i, source.paths[p], source.labels[p], h)
                                           for i, (p, h) in enumerate(zip(positions, hashes))))
            manifest["item_count"] = int(manifest["item_count"] + len(vectors))
            manifest["updated"] = _now()
            manifest["skipped"] = manifest["skipped"] + skipped
            manifest["duplicates"] = manifest["duplicates"] + duplicates
            manifest["additions"].append({"source": source.spec, "added": int(len(vectors)), "time": _now(),
                                          "seconds": round(time.perf_counter() - t_start, 2)})
            _write_json(tmp / MANIFEST_FILE, manifest)
            _swap_in(tmp, index_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    shutil.rmtree(work, ignore_errors=True)
    return {"added": int(len(vectors)), "skipped": skipped, "duplicates": duplicates, "manifest": manifest,
            "images_per_s": round(processed / spent, 1) if spent > 0 else None}


def open_index(index_dir, device="cpu", **kwargs):
    """Shortcut for `retrieval.search.open_index`."""
    from retrieval.search import open_index as _open

    return _open(index_dir, device=device, **kwargs)
