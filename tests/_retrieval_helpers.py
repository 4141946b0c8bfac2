"""Shared pieces of the retrieval tests: a tiny model checkpoint and a small CIFAR image folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

#: Cheap features for tests: layer 2, 2x2 grid pooling (512 floats), PCA to 32.
FAST = {"layer": 2, "pooling": "grid", "dim": 32}


def make_checkpoint(path: Path, images: torch.Tensor, seed: int = 0) -> Path:
    """A randomly initialised 6-layer net with its input normalisation fitted, saved at `path`."""
    from hebb.checkpoint import save_checkpoint
    from hebb.network import build_network

    torch.manual_seed(seed)
    net = build_network(arch="conv6", rule="hpca")
    net.fit_input(images[:500])
    save_checkpoint(path, net, {"stage": "pretrain", "seed": seed})
    return path


def write_folder(root: Path, split, n_per_class: int = 30, offset: int = 0) -> list[Path]:
    """Copy n_per_class JPEGs of each class of `split` into root/CLASS/; return the written paths."""
    labels = split.labels.numpy()
    written = []
    for c, name in enumerate(split.classes):
        members = np.flatnonzero(labels == c)[offset:offset + n_per_class]
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in members:
            dest = root / name / f"{i:05d}.jpg"
            shutil.copy(split.paths[i], dest)
            written.append(dest)
    return written


@pytest.fixture(scope="module")
def tiny_model(cifar_splits, tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("model") / "tiny.pt", cifar_splits["train"].images)


@pytest.fixture(scope="module")
def image_folder(cifar_splits, tmp_path_factory) -> Path:
    """300 CIFAR-10 training JPEGs, 30 per class, in CLASS/ folders."""
    root = tmp_path_factory.mktemp("images")
    write_folder(root, cifar_splits["train"], 30)
    return root
