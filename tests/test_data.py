"""Datasets: the CIFAR-10 archive, image folders, caches, seeded splits and label regimes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from hebb.data import (REGIMES, import_dataset, is_imported, load_folder, load_split, load_splits,
                       regime_count, regime_indices, split_indices)
from hebb.errors import UserError


def test_cifar10_splits_have_the_reference_sizes(cifar_splits):
    sizes = {name: len(s) for name, s in cifar_splits.items()}
    assert sizes == {"train": 40_000, "val": 10_000, "test": 10_000}
    assert cifar_splits["train"].class_counts() == [4000] * 10
    assert cifar_splits["val"].class_counts() == [1000] * 10
    assert cifar_splits["test"].class_counts() == [1000] * 10
    train = cifar_splits["train"]
    assert train.images.shape == (40_000, 3, 32, 32) and train.images.dtype == torch.uint8
    assert train.classes[:3] == ["airplane", "automobile", "bird"]
    # train and validation partition the official training images
    assert not set(train.paths) & set(cifar_splits["val"].paths)
    assert all("/train/" in p for p in train.paths) and all("/test/" in p for p in cifar_splits["test"].paths)


def test_cifar10_splits_are_identical_across_loads(cifar_data_dir, cifar_splits):
    again = load_splits("cifar10", cifar_data_dir)
    for name in ("train", "val", "test"):
        assert again[name].paths == cifar_splits[name].paths
        assert torch.equal(again[name].labels, cifar_splits[name].labels)
        assert torch.equal(again[name].images[:500], cifar_splits[name].images[:500])
    other_seed = load_splits("cifar10", cifar_data_dir, split_seed=1)
    assert other_seed["train"].paths != cifar_splits["train"].paths


def test_cached_pixels_match_the_jpeg_files(cifar_splits):
    train = cifar_splits["train"]
    for i in (0, 12_345, 39_999):
        decoded = np.asarray(Image.open(train.paths[i]).convert("RGB")).transpose(2, 0, 1)
        assert np.array_equal(decoded, train.images[i].numpy())
        assert train.classes[int(train.labels[i])] in train.paths[i]


@pytest.mark.parametrize("percent", REGIMES)
def test_regimes_are_stratified(cifar_splits, percent):
    labels = cifar_splits["train"].labels
    idx = regime_indices(labels, percent, seed=0)
    counts = np.bincount(labels.numpy()[idx], minlength=10)
    assert (counts == 4000 * percent // 100).all()  # 40 ... 4,000 per class
    assert len(np.unique(idx)) == len(idx)


def test_regimes_are_reproducible_nested_and_seeded(cifar_splits):
    labels = cifar_splits["train"].labels
    a, b = regime_indices(labels, 5, seed=3), regime_indices(labels, 5, seed=3)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, regime_indices(labels, 5, seed=4))
    assert set(regime_indices(labels, 1, seed=3)) <= set(a) <= set(regime_indices(labels, 10, seed=3))


def test_regime_rounding_is_consistent():
    assert [regime_count(4000, p) for p in REGIMES] == [40, 80, 120, 160, 200, 400, 1000, 4000]
    assert regime_count(5, 10) == 1 and regime_count(15, 10) == 2 and regime_count(25, 10) == 3
    labels = np.repeat([0, 1, 2], [7, 15, 25])
    assert np.bincount(labels[regime_indices(labels, 10)]).tolist() == [1, 2, 3]
    with pytest.raises(UserError):
        regime_count(100, 0)
    with pytest.raises(UserError):
        regime_count(100, 101)


def test_split_indices_are_stratified_and_disjoint():
    labels = np.repeat(np.arange(4), [10, 20, 30, 40])
    train, val = split_indices(labels, split_seed=0)
    assert np.bincount(labels[val]).tolist() == [2, 4, 6, 8]
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(100))


def _write_folder(root, classes=("cat", "dog"), per_class=6, size=(20, 16)):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).save(root / c / f"{i}.png")


def test_any_image_folder_is_a_dataset(tmp_path):
    _write_folder(tmp_path / "pets", per_class=10)
    (tmp_path / "pets" / "cat" / "broken.jpg").write_text("not an image")
    import_dataset("pets", tmp_path / "pets", tmp_path / "data")
    assert is_imported("pets", tmp_path / "data")
    splits = load_splits("pets", tmp_path / "data")
    assert splits["train"].classes == ["cat", "dog"]
    assert sum(len(s) for s in splits.values()) == 20  # the broken file is skipped, not fatal
    assert splits["test"].class_counts() == [2, 2]
    assert splits["train"].images.shape[1:] == (3, 32, 32)


def test_import_from_an_extracted_folder_with_train_and_test(tmp_path):
    _write_folder(tmp_path / "src" / "train", per_class=5)
    _write_folder(tmp_path / "src" / "test", per_class=2)
    import_dataset("tiny", tmp_path / "src", tmp_path / "data")
    assert len(load_split("tiny", "test", tmp_path / "data")) == 4
    assert (tmp_path / "src" / "train").is_dir()  # the source is copied, not moved


def test_cache_is_rebuilt_when_the_folder_changes(tmp_path):
    _write_folder(tmp_path / "f", per_class=3)
    cache = tmp_path / "cache"
    first = load_folder(tmp_path / "f", size=8, cache_dir=cache)
    assert len(first) == 6 and first.images.shape == (6, 3, 8, 8)
    again = load_folder(tmp_path / "f", size=8, cache_dir=cache)
    assert torch.equal(first.images, again.images)
    _write_folder(tmp_path / "f", classes=("emu",), per_class=2)
    assert len(load_folder(tmp_path / "f", size=8, cache_dir=cache)) == 8


def test_bad_sources_are_clear_errors_and_leave_nothing(tmp_path):
    data = tmp_path / "data"
    with pytest.raises(UserError, match="no such file"):
        import_dataset("cifar10", tmp_path / "missing.tar.gz", data)
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"definitely not gzip")
    with pytest.raises(UserError, match="cannot read archive"):
        import_dataset("cifar10", bad, data)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no images"):
        import_dataset("mine", tmp_path / "empty", data)
    with pytest.raises(UserError, match="not in"):
        load_split("cifar10", "train", data)
    assert not data.exists() or not any(data.iterdir())  # no half-imported leftovers
