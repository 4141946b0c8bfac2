"""Shared fixtures: the CIFAR-10 archive imported once per test session, seeds fixed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
CIFAR_ARCHIVE = Path(os.environ.get("HEBBIR_CIFAR10_ARCHIVE",
                                    REPO.parent / "shared" / "datasets" / "cifar10-jpg.tar.gz"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """Run a test on one torch thread: tiny tensors on a loaded 2-core machine run ~50x slower on two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def cifar_data_dir() -> Path:
    """A data directory holding CIFAR-10 imported from the shared archive (skips if the archive is absent).

    It lives in the git-ignored `.test-data/` of the checkout and is reused by later sessions, since
    importing and decoding 60,000 JPEGs is the slowest step of the suite; tests only read it.
    """
    if not CIFAR_ARCHIVE.is_file():
        pytest.skip(f"CIFAR-10 archive not found at {CIFAR_ARCHIVE}")
    from hebb.data import import_dataset

    data_dir = REPO / ".test-data"
    import_dataset("cifar10", CIFAR_ARCHIVE, data_dir)  # returns at once when already imported
    return data_dir


@pytest.fixture(scope="session")
def cifar_splits(cifar_data_dir):
    """{'train','val','test'} ArraySets of CIFAR-10 (decoded once per session)."""
    from hebb.data import load_splits

    return load_splits("cifar10", cifar_data_dir)
