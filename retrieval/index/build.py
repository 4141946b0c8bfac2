"""Writing index directories: build one from a collection, add new images to one, repair its FAISS file.

Every write goes into a temporary folder that replaces the index by rename (`retrieval.index.directory.staged`),
so a crash, Ctrl-C or kill -9 leaves the previous index as it was; the next writer removes what a dead run left.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Sequence

import numpy as np

import retrieval.index.backends as backends
import retrieval.index.milvus_backend as milvus_backend
from hebb.errors import UserError
from hebb.runtime import resolve_device, utc_now
from retrieval.features import FIT_SAMPLES, FeatureExtractor, describe
from retrieval.index.backends import FAISS_MISSING, load_vectors, make_faiss_index, new_faiss_index, require_faiss
from retrieval.index.directory import (FAISS_FILE, ITEMS_FILE, MANIFEST_FILE, OWNER_FILE, PROJECTION_FILE,
                                       VECTORS_FILE, clean_stale_tmp, is_replaceable, partial_path, pause_at,
                                       read_manifest, reading, recover, save_npz, staged, write_manifest)
from retrieval.index.extract import collect, extract_chunks, fit_projection, listing_digest, prepare_workdir
from retrieval.index.manifest import FORMAT_VERSION, METRIC, Manifest
from retrieval.index.model import architecture_of, default_layer, index_extractor, load_model
from retrieval.itemstore import ItemStore, write_items
from retrieval.sources import ImageSource, open_source

CHUNK_SIZE = 2048


def _rate(images: int, seconds: float) -> float | None:
    return round(images / seconds, 1) if seconds > 0 and images else None


def copy_model(model: Path, dest_dir: Path) -> str:
    """Put the checkpoint `model` into `dest_dir` as model.<ext>; return that name."""
    name = "model" + "".join(model.suffixes[-1:])
    try:
        os.link(model, dest_dir / name)  # the copy is never written to; a hard link costs no space
    except OSError:
        shutil.copy2(model, dest_dir / name)
    return name


def copy_index_files(index_dir: Path, manifest: Manifest, dest: Path, rewritten: Sequence[str]) -> None:
    """Copy the files of `index_dir` into `dest`, except the manifest and the `rewritten` ones (and the
    Milvus Lite database of a milvus index, a folder, with the rest)."""
    lite_db = milvus_backend.local_db_name(manifest)
    for f in index_dir.iterdir():
        if f.name == manifest.model_file:
            copy_model(f, dest)
        elif f.name == lite_db and f.name not in rewritten and f.is_dir() and not f.is_symlink():
            shutil.copytree(f, dest / f.name)
        elif f.is_file() and f.name not in (*rewritten, MANIFEST_FILE, OWNER_FILE):
            shutil.copy2(f, dest / f.name)


def check_out_dir(out: Path, force: bool) -> None:
    """Refuse an `--out` that is a file, an existing index without `force`, or a folder that is not an index."""
    if out.is_symlink():
        raise UserError(f"{out}: a symbolic link; give the folder it points to as --out, or another --out")
    if out.is_file() or (out.exists() and not out.is_dir()):
        raise UserError(f"{out}: a file is in the way (an index is a folder); choose another --out")
    if not out.exists() or not any(out.iterdir()):
        return  # an empty folder holds nothing to lose
    if not is_replaceable(out):
        raise UserError(f"{out}: a folder that is not a hebbir index; refusing to replace it, even with --force "
                        f"(choose another --out, or remove it yourself)")
    if not force:
        try:
            read_manifest(out)
            what = "an index"
        except UserError:
            what = "a damaged index"
        raise UserError(f"{out}: {what} already exists there; use --force to replace it "
                        f"(or hebbir index add to add images)")


def _open_images(images, data_dir, ext: FeatureExtractor, exclude: Sequence[str] | None) -> ImageSource:
    if isinstance(images, ImageSource):
        return images
    return open_source(images, data_dir, size=ext.side, exclude=exclude)


def build_index(model, images, out, layer: int | None = None, pooling: str | None = None, dim: int | None = None,
                factory: str = "Flat", device="auto", batch_size: int = 256, progress: bool = True,
                projection: str | None = None, data_dir=None, force: bool = False,
                chunk_size: int = CHUNK_SIZE, fit_samples: int = FIT_SAMPLES,
                exclude: Sequence[str] | None = None, extra: dict | None = None, backend: str = "faiss",
                milvus_uri: str | None = None, milvus_collection: str | None = None,
                milvus_index: str = "auto", head_weight: float = 0.0) -> Manifest:
    """Build the index directory `out` from the images of `images` with features of checkpoint `model`.

    `images` is an image folder, a dataset `NAME[:train|val|test]` of the data directory, or an already
    listed `retrieval.sources.ImageSource` (e.g. a subset); `exclude`: glob patterns of folder entries to
    leave out. `layer` defaults to the layer a fine-tuned model was cut at (else 3); pooling/projection/dim
    default per architecture and layer (the architecture registry's `reductions`, `hebb.architectures`). `factory` is "Flat" (exact) or
    any faiss `index_factory` string. The PCA is fitted on a seeded sample of `fit_samples` images. An
    existing index at `out` is replaced only with `force`, and nothing that is not an index ever is.
    `extra`: more manifest fields (JSON-able) to record. `backend` "milvus" puts the vectors into a Milvus
    collection instead of index.faiss: `milvus_uri` a .db file (Milvus Lite; default milvus.db inside the
    index) or a server's http(s) address, `milvus_collection` its name (default from the folder name),
    `milvus_index` auto (FLAT, HNSW from 100,000 vectors), FLAT, HNSW or IVF_FLAT. `head_weight` > 0 (a
    fine-tuned or probed model, its top layer) appends the read-out head's class probabilities with that weight
    (`retrieval.features`). Returns the manifest.
    """
    t_start = time.perf_counter()
    out, model = Path(out), Path(model)
    recover(out)
    check_out_dir(out, force)
    if backend not in ("faiss", "milvus"):
        raise UserError(f"unknown backend '{backend}' (choose from faiss, milvus)")
    milvus = None
    if backend == "milvus":
        if factory != "Flat":
            raise UserError("--factory chooses a faiss index type; a milvus index takes --milvus-index")
        milvus = milvus_backend.new_config(out, milvus_uri, milvus_collection, milvus_index, force)
    if factory != "Flat":
        require_faiss(f"index type {factory}")
    device = resolve_device(device)
    net, meta, checksum = load_model(model, device)
    if layer is None:
        layer = default_layer(net, meta)
    if head_weight and meta.get("stage") != "finetune":
        raise UserError(f"{model}: --head-weight needs a fine-tuned or probed model (hebbir finetune); the head of "
                        f"a {meta.get('stage') or 'untrained'} network has learned nothing")
    ext = FeatureExtractor(net, layer, pooling=pooling or "auto", dim=dim, projection=projection or "auto",
                           device=device, batch_size=batch_size, progress=False, head_weight=head_weight)
    source = _open_images(images, data_dir, ext, exclude)
    if factory != "Flat":
        new_faiss_index(factory, ext.dim, len(source))  # a bad factory string fails now, not after extraction
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{out.parent}: cannot create the folder for --out ({exc.strerror or exc})") from None
    clean_stale_tmp(out)
    work = partial_path(out)
    key = {"listing": listing_digest(source), "model_checksum": checksum, "features": ext.config(),
           "requested": {"pooling": pooling, "projection": projection, "dim": dim},
           "chunk_size": chunk_size, "fit_samples": fit_samples, "format_version": FORMAT_VERSION}
    prepare_workdir(work, key)
    fit_s = fit_projection(ext, source, work, fit_samples, progress)
    chunks, spent, processed = extract_chunks(source, ext, work, set(), chunk_size, progress)
    vectors, positions, hashes, skipped, duplicates = collect(chunks, source, {})
    if len(vectors) == 0:
        shutil.rmtree(work, ignore_errors=True)
        raise UserError(f"{images}: none of the {len(source)} files could be read as an image "
                        f"(first problem: {skipped[0]['path']}: {skipped[0]['reason']})" if skipped else
                        f"{images}: no images")
    faiss = backends.faiss_or_none() if backend == "faiss" else None
    if faiss is None and backend == "faiss" and factory == "Flat" and progress:
        print(f"note: {FAISS_MISSING}; writing vectors only (searches use the exact torch backend)")
    with staged(out, "building") as tmp:
        if faiss is not None:
            faiss.write_index(make_faiss_index(vectors, factory), str(tmp / FAISS_FILE))
        np.save(tmp / VECTORS_FILE, vectors)
        pause_at("write")
        write_items(tmp / ITEMS_FILE, ((i, source.paths[p], source.labels[p], h)
                                       for i, (p, h) in enumerate(zip(positions, hashes))))
        if ext.state is not None:
            save_npz(tmp / PROJECTION_FILE, **ext.state_arrays())
        if milvus is not None:
            milvus = milvus_backend.create_collection(
                tmp, milvus, int(vectors.shape[1]), checksum, range(len(vectors)), vectors,
                [(source.paths[p], source.labels[p], h) for p, h in zip(positions, hashes)], force=force)
        model_file = copy_model(model, tmp)
        manifest = Manifest(
            format_version=FORMAT_VERSION,
            model_file=model_file,
            model_checksum=checksum,
            model_source=str(model.resolve()),
            architecture=architecture_of(net, meta),
            model_meta={k: v for k, v in meta.items() if isinstance(v, (str, int, float, bool, type(None)))},
            features=ext.config(),
            layer=ext.layer,
            pooling=ext.pooling,
            projection=ext.projection,
            dimension=int(vectors.shape[1]),
            description=describe(ext.config()),
            metric=METRIC,
            factory=milvus["index_type"] if milvus else factory,
            faiss_version=getattr(faiss, "__version__", None) if faiss else None,
            has_faiss_file=faiss is not None,
            source=source.spec,
            item_count=int(len(vectors)),
            files_seen=len(source) + len(source.skipped),
            created=utc_now(),
            updated=None,
            build_time_s=round(time.perf_counter() - t_start, 2),
            fit_time_s=round(fit_s, 2),
            device=str(device),
            # The PCA-fit pass runs the network too: leaving it out overstated the rate about 2.5 times.
            images_per_s=_rate(processed, spent + fit_s),
            skipped=source.skipped + skipped,
            duplicates=duplicates,
            additions=[],
            backend=backend,
            milvus=milvus,
            extra=dict(extra or {}),
        )
        write_manifest(tmp, manifest)
    shutil.rmtree(work, ignore_errors=True)
    return manifest


def add_to_index(index_dir, images, device="auto", progress: bool = True, data_dir=None,
                 batch_size: int = 256, model=None, chunk_size: int = CHUNK_SIZE,
                 exclude: Sequence[str] | None = None) -> dict:
    """Add the images of `images` that the index lacks (by content hash) to `index_dir`, atomically.

    New vectors go through the index's own model copy and projection; a given `model` must be that same
    model. `exclude`: glob patterns of folder entries to leave out. Returns dict(added=, skipped=,
    duplicates=, manifest=, images_per_s=).
    """
    t_start = time.perf_counter()
    index_dir = Path(index_dir)
    manifest = read_manifest(index_dir)
    clean_stale_tmp(index_dir)
    device = resolve_device(device)
    ext = index_extractor(index_dir, manifest, device, model=model, batch_size=batch_size)
    old = load_vectors(index_dir, manifest)
    has_faiss = (index_dir / FAISS_FILE).is_file()
    faiss_index = backends.read_faiss_index(index_dir, manifest) if has_faiss else None
    source = _open_images(images, data_dir, ext, exclude)
    with reading(index_dir / ITEMS_FILE), ItemStore(index_dir / ITEMS_FILE) as store:
        known = store.known_hashes()
    next_id = manifest.rows  # ids are row numbers; a synced index has rows of deleted items too
    if len(known) != manifest.item_count:
        raise UserError(f"{index_dir / ITEMS_FILE}: damaged index file ({len(known)} items, the manifest says "
                        f"{manifest.item_count}); rebuild the index with: hebbir index build --force")
    work = partial_path(index_dir)
    key = {"listing": listing_digest(source), "add_to": manifest.model_checksum,
           "item_count": manifest.item_count, "created": manifest.created, "updated": manifest.updated,
           "chunk_size": chunk_size}
    prepare_workdir(work, key)
    chunks, spent, processed = extract_chunks(source, ext, work, set(known), chunk_size, progress)
    vectors, positions, hashes, skipped, duplicates = collect(chunks, source, {h: str(i) for h, i in known.items()})
    skipped = source.skipped + skipped
    if len(vectors):
        with staged(index_dir, "adding") as tmp:
            copy_index_files(index_dir, manifest, tmp, (VECTORS_FILE, FAISS_FILE))
            np.save(tmp / VECTORS_FILE, np.concatenate([old, vectors]))
            pause_at("write")
            if faiss_index is not None:
                faiss_index.add(np.ascontiguousarray(vectors))
                backends.require_faiss().write_index(faiss_index, str(tmp / FAISS_FILE))
            write_items(tmp / ITEMS_FILE, ((next_id + i, source.paths[p], source.labels[p], h)
                                           for i, (p, h) in enumerate(zip(positions, hashes))))
            if manifest.backend == "milvus":
                milvus_backend.update_collection(
                    tmp, manifest, upsert_ids=range(next_id, next_id + len(vectors)), vectors=vectors,
                    items=[(source.paths[p], source.labels[p], h) for p, h in zip(positions, hashes)])
            manifest.item_count = int(manifest.item_count + len(vectors))
            manifest.updated = utc_now()
            manifest.skipped = manifest.skipped + skipped
            manifest.duplicates = manifest.duplicates + duplicates
            manifest.additions.append({"source": source.spec, "added": int(len(vectors)), "time": utc_now(),
                                       "seconds": round(time.perf_counter() - t_start, 2)})
            write_manifest(tmp, manifest)
    shutil.rmtree(work, ignore_errors=True)
    return {"added": int(len(vectors)), "skipped": skipped, "duplicates": duplicates, "manifest": manifest,
            "images_per_s": _rate(processed, spent)}


def repair_index(index_dir) -> Manifest:
    """Rewrite `index.faiss` from `vectors.npy` (the index type of the manifest), atomically; for a milvus
    index, recreate its collection from `vectors.npy` and the item table instead.

    The FAISS file holds nothing the vectors do not, so a damaged or missing one costs only this; damage to
    any other file still needs a rebuild.
    """
    index_dir = Path(index_dir)
    manifest = read_manifest(index_dir)
    clean_stale_tmp(index_dir)
    vectors = load_vectors(index_dir, manifest, mmap=False)
    if manifest.backend == "milvus":
        return _reload_collection(index_dir, manifest, vectors)
    faiss = require_faiss("to write index.faiss")
    with staged(index_dir, "repairing") as tmp:
        copy_index_files(index_dir, manifest, tmp, (FAISS_FILE,))
        faiss.write_index(make_faiss_index(vectors, manifest.factory), str(tmp / FAISS_FILE))
        manifest.has_faiss_file = True
        manifest.faiss_version = getattr(faiss, "__version__", None)
        write_manifest(tmp, manifest)
    return manifest



def _reload_collection(index_dir: Path, manifest: Manifest, vectors: np.ndarray) -> Manifest:
    """Recreate the Milvus collection of `index_dir` from its vectors and item table (a fresh Milvus Lite file)."""
    with reading(index_dir / ITEMS_FILE), ItemStore(index_dir / ITEMS_FILE) as store:
        items = store.all()
    lite_db = milvus_backend.local_db_name(manifest)
    with staged(index_dir, "repairing") as tmp:
        copy_index_files(index_dir, manifest, tmp, (lite_db,) if lite_db else ())
        ids = [it.id for it in items]
        config = dict(manifest.milvus, index_type=manifest.milvus.get("index_type", "auto"))
        manifest.milvus = milvus_backend.create_collection(
            tmp, config, manifest.dimension, manifest.model_checksum, ids, vectors[ids],
            [(it.path, it.label, it.sha256) for it in items], force=True)
        write_manifest(tmp, manifest)
    return manifest
