"""Datasets: import into the data directory, decode once into uint8 caches, seeded splits and label regimes.

A dataset in the data directory is an image-folder tree `DATA_DIR/NAME/{train,test}/CLASS/*.jpg`. The first
load of a split decodes every image once (through `hebb.images.load_image`) into a uint8 array cached beside
it, so that training reads from memory, not from 50,000 JPEG files per epoch.

Splits (docs/EVALUATION.md#splits): the training split is 80% of each class of the official training images, chosen by a
seeded shuffle of the sorted paths (40,000 for CIFAR-10), validation is the rest (10,000), test is the official
test set. Label regime s% keeps s% of each class of the training split, seeded; smaller regimes are subsets of
larger ones for the same seed.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tarfile
import tempfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from hebb.errors import UserError
from hebb.images import ImageLoadError, image_to_array, iter_image_files, load_image
from hebb.runtime import atomic_write, write_json_atomic

DATA_DIR_ENV = "HEBBIR_DATA_DIR"
TORCHVISION_DATASETS = ("cifar10", "cifar100")
REGIMES = (1, 2, 3, 4, 5, 10, 25, 100)
VALIDATION_FRACTION = 0.2
CACHE_VERSION = 1
_DONE_MARKER = ".hebbir-dataset.json"


def default_data_dir() -> Path:
    """The data directory: `$HEBBIR_DATA_DIR` if set, else `./data`."""
    return Path(os.environ.get(DATA_DIR_ENV, "data"))


@dataclass
class ArraySet:
    """Decoded images of one split: uint8 (N, 3, H, W) images, int64 labels, absolute paths, class names."""

    images: torch.Tensor
    labels: torch.Tensor
    paths: list[str]
    classes: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> "ArraySet":
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        return ArraySet(self.images[idx], self.labels[idx], [self.paths[i] for i in idx.tolist()], self.classes)

    def class_counts(self) -> list[int]:
        return torch.bincount(self.labels, minlength=len(self.classes)).tolist()


def to_float(images: torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
    """uint8 images -> float32 in [0, 1] on `device` (the transfer happens before the conversion)."""
    if device is not None:
        images = images.to(device, non_blocking=True)
    return images.float().div_(255.0)


# ----------------------------------------------------------------------------------------------- import


def _dataset_root(name: str, data_dir: Path | str | None) -> Path:
    return Path(data_dir if data_dir is not None else default_data_dir()) / name


def is_imported(name: str, data_dir: Path | str | None = None) -> bool:
    """Whether `name` has been fully imported into the data directory."""
    return (_dataset_root(name, data_dir) / _DONE_MARKER).is_file()


def _safe_extract(archive: Path, dest: Path) -> None:
    """Extract a .tar(.gz/.bz2/.xz) or .zip archive, refusing members that would land outside `dest`."""
    dest_resolved = dest.resolve()
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for member in zf.namelist():
                if not (dest / member).resolve().is_relative_to(dest_resolved):
                    raise UserError(f"{archive}: unsafe path in archive: {member}")
            zf.extractall(dest)
        return
    try:
        with tarfile.open(archive) as tf:
            tf.extractall(dest, filter="data")
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise UserError(f"{archive}: cannot read archive: {exc}") from None


def _find_split_root(tree: Path) -> Path:
    """The folder inside an extracted tree that holds `train/` (archives may wrap it in one top folder)."""
    if (tree / "train").is_dir():
        return tree
    children = [c for c in tree.iterdir() if c.is_dir() and not c.name.startswith(".")]
    if len(children) == 1 and (children[0] / "train").is_dir():
        return children[0]
    return tree


def _export_torchvision(name: str, work: Path) -> None:
    """Download CIFAR-10/100 through torchvision and write it as PNG image folders under `work`."""
    import torchvision

    cls = {"cifar10": torchvision.datasets.CIFAR10, "cifar100": torchvision.datasets.CIFAR100}[name]
    raw = work / ".download"
    for split, train in (("train", True), ("test", False)):
        try:
            ds = cls(root=str(raw), train=train, download=True)
        except Exception as exc:  # network errors come in many types
            raise UserError(
                f"cannot download {name} ({exc}); without internet, import the archive instead: "
                f"hebbir data import {name} PATH/TO/{name}-jpg.tar.gz"
            ) from None
        counters: dict[int, int] = {}
        for img, label in tqdm(zip(ds.data, ds.targets), total=len(ds.targets), desc=f"writing {split}"):
            k = counters.get(label, 0)
            counters[label] = k + 1
            out = work / split / ds.classes[label] / f"{k:05d}.png"
            out.parent.mkdir(parents=True, exist_ok=True)
            from PIL import Image

            Image.fromarray(img).save(out)
    shutil.rmtree(raw, ignore_errors=True)


def import_dataset(name: str, source: str | Path | None, data_dir: Path | str | None = None,
                   force: bool = False) -> Path:
    """Lay dataset `name` into `data_dir/name` from `source` and return that folder.

    `source` is an archive (.tar.gz, .tgz, .tar, .zip) or a folder, holding `train/CLASS/*` and
    `test/CLASS/*` (or just `CLASS/*`, which becomes the training images); `None` downloads CIFAR-10/100
    through torchvision. The import is atomic: the dataset appears whole or not at all. The uint8 cache is
    built at the end, so that the first training run starts at once.
    """
    name = name.lower()
    root = _dataset_root(name, data_dir)
    if is_imported(name, data_dir) and not force:
        return root
    if source is None and name not in TORCHVISION_DATASETS:
        raise UserError(f"no source given for dataset '{name}': give an archive or an image folder")
    if source is not None:
        source = Path(source).expanduser()
        if not source.exists():
            raise UserError(f"{source}: no such file or folder")
    root.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{name}.importing-", dir=root.parent))
    try:
        if source is None:
            _export_torchvision(name, work)
            tree = work
        elif source.is_dir():
            tree = _find_split_root(source)
        else:
            _safe_extract(source, work / "extracted")
            tree = _find_split_root(work / "extracted")
        if not (tree / "train").is_dir():
            # A plain class-folder tree: everything is training material.
            files = list(iter_image_files(tree))
            if not files:
                raise UserError(f"{source}: no images found (expected CLASS/*.jpg or train/CLASS/*.jpg)")
            dest = work / "train"
            dest.mkdir(parents=True, exist_ok=True)
            for cls_dir in sorted(p for p in tree.iterdir() if p.is_dir() and not p.name.startswith(".")):
                shutil.copytree(cls_dir, dest / cls_dir.name, dirs_exist_ok=True)
        elif tree != work:
            for split in ("train", "test"):
                if (tree / split).is_dir():
                    if tree.is_relative_to(work):
                        shutil.move(str(tree / split), str(work / split))
                    else:
                        shutil.copytree(tree / split, work / split)
        shutil.rmtree(work / "extracted", ignore_errors=True)
        if not any(iter_image_files(work / "train")):
            raise UserError(f"{source}: the training folder holds no images")
        (work / _DONE_MARKER).write_text(json.dumps({"name": name, "source": str(source or "torchvision")}))
        if root.exists():
            shutil.rmtree(root)
        os.replace(work, root)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    for split in ("train", "test"):
        if (root / split).is_dir():
            load_split(name, split, data_dir)
    return root


# ----------------------------------------------------------------------------------------------- caches


def _decode(path: Path, size: int) -> np.ndarray | None:
    try:
        return image_to_array(load_image(path), size)
    except ImageLoadError:
        return None


def _folder_listing(split_dir: Path) -> tuple[list[Path], list[int], list[str]]:
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise UserError(f"{split_dir}: no class folders (expected {split_dir}/CLASS/*.jpg)")
    paths, labels = [], []
    for label, cls in enumerate(classes):
        for p in iter_image_files(split_dir / cls):
            paths.append(p)
            labels.append(label)
    return paths, labels, classes


def load_folder(split_dir: Path | str, size: int = 32, cache_dir: Path | str | None = None,
                desc: str | None = None) -> ArraySet:
    """Decode an image folder `split_dir/CLASS/*` into an `ArraySet` of size x size images.

    With `cache_dir`, the decoded arrays are saved there once and reused while the file list is unchanged.
    Files that cannot be decoded are left out (and listed in the cache's metadata as `skipped`).
    """
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise UserError(f"{split_dir}: no such folder")
    split_dir = split_dir.resolve()  # once here: resolving 60,000 paths one by one costs seconds
    paths, labels, classes = _folder_listing(split_dir)
    rel = [str(p.relative_to(split_dir)) for p in paths]
    meta_file = array_file = None
    if cache_dir is not None:
        cache_dir = Path(cache_dir)
        stem = f"{split_dir.name}-{size}px"
        meta_file, array_file = cache_dir / f"{stem}.json", cache_dir / f"{stem}.npy"
        if meta_file.is_file() and array_file.is_file():
            meta = json.loads(meta_file.read_text())
            if meta.get("version") == CACHE_VERSION and meta.get("listing") == rel:
                keep = meta["kept"]
                images = torch.from_numpy(np.load(array_file))
                return ArraySet(images, torch.tensor([labels[i] for i in keep], dtype=torch.long),
                                [str(paths[i]) for i in keep], classes)
    arrays: list[np.ndarray | None] = [None] * len(paths)
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 2) * 2)) as pool:
        it = pool.map(lambda p: _decode(p, size), paths, chunksize=256)
        for i, arr in enumerate(tqdm(it, total=len(paths), desc=desc or f"decoding {split_dir}", unit="img",
                                     leave=False)):
            arrays[i] = arr
    keep = [i for i, a in enumerate(arrays) if a is not None]
    skipped = [rel[i] for i, a in enumerate(arrays) if a is None]
    images = np.stack([arrays[i] for i in keep]) if keep else np.zeros((0, 3, size, size), np.uint8)
    if cache_dir is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        with atomic_write(array_file, "wb") as f:
            np.save(f, images)
        write_json_atomic(meta_file, {"version": CACHE_VERSION, "listing": rel, "kept": keep, "skipped": skipped,
                                      "classes": classes}, indent=None)
    return ArraySet(torch.from_numpy(images), torch.tensor([labels[i] for i in keep], dtype=torch.long),
                    [str(paths[i]) for i in keep], classes)


def load_split(name: str, split: str, data_dir: Path | str | None = None, size: int = 32) -> ArraySet:
    """The official `split` ('train' or 'test') of an imported dataset, decoded (and cached) at size x size."""
    root = _dataset_root(name, data_dir)
    if not is_imported(name, data_dir):
        hint = (f"hebbir data import {name} SOURCE" + (" (or without SOURCE to download it)"
                                                      if name in TORCHVISION_DATASETS else ""))
        raise UserError(f"dataset '{name}' is not in {root.parent}: import it first with: {hint}")
    return load_folder(root / split, size=size, cache_dir=root / ".cache", desc=f"decoding {name}/{split}")


def split_indices(labels: torch.Tensor | np.ndarray, split_seed: int = 0,
                  val_fraction: float = VALIDATION_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """Stratified seeded split of range(len(labels)) into sorted (training, validation) index arrays.

    Each class gives `val_fraction` of its images (half rounds up) to validation: CIFAR-10's 5,000 images
    per class become 4,000 + 1,000.
    """
    labels = np.asarray(labels)
    train, val = [], []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        order = np.random.default_rng([split_seed, int(c), 7]).permutation(len(members))
        n_val = math.floor(len(members) * val_fraction + 0.5)
        val.append(members[order[:n_val]])
        train.append(members[order[n_val:]])
    if not train:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def load_splits(name: str, data_dir: Path | str | None = None, split_seed: int = 0, size: int = 32
                ) -> dict[str, ArraySet]:
    """{'train', 'val', 'test'} of dataset `name` (docs/EVALUATION.md#splits).

    A dataset without a `test` folder gets a seeded 20% of its images as the test split.
    """
    full = load_split(name, "train", data_dir, size)
    root = _dataset_root(name, data_dir)
    if (root / "test").is_dir():
        test = load_split(name, "test", data_dir, size)
    else:
        rest, held = split_indices(full.labels, split_seed + 10_000)
        full, test = full.subset(rest), full.subset(held)
    train_idx, val_idx = split_indices(full.labels, split_seed)
    return {"train": full.subset(train_idx), "val": full.subset(val_idx), "test": test}


def regime_count(class_size: int, percent: float) -> int:
    """How many labelled images a class of `class_size` keeps at `percent`% (half rounds up, at least 1)."""
    if not 0 < percent <= 100:
        raise UserError(f"label regime must be in (0, 100], got {percent}")
    return max(1, min(class_size, math.floor(class_size * percent / 100 + 0.5)))


def regime_indices(labels: torch.Tensor | np.ndarray, percent: float, seed: int = 0) -> np.ndarray:
    """Sorted indices of the labelled subset at `percent`% of each class, seeded and nested across regimes."""
    labels = np.asarray(labels)
    chosen = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        order = np.random.default_rng([seed, int(c)]).permutation(len(members))
        chosen.append(members[order[: regime_count(len(members), percent)]])
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)
