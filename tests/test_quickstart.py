"""`hebbir quickstart`: data -> model -> index, idempotent; tiny by default, the real one marked slow."""

from __future__ import annotations

import time

import pytest

from retrieval.cli import main
from retrieval.search import open_index


def _run(tmp_path, data_dir, *extra):
    return main(["quickstart", "--out", str(tmp_path / "index_data" / "quickstart"),
                 "--checkpoints", str(tmp_path / "checkpoints"), "--data-dir", str(data_dir), "--device", "cpu",
                 "--quiet", *extra])


def test_tiny_quickstart_builds_a_searchable_index_and_reruns_from_cache(cifar_data_dir, cifar_splits, tmp_path,
                                                                         capsys):
    assert _run(tmp_path, cifar_data_dir, "--limit", "64", "--finetune-epochs", "1") == 0
    out = capsys.readouterr().out
    assert "hebbir app" in out and "indexed 64 images" in out
    index_dir = tmp_path / "index_data" / "quickstart"
    with open_index(index_dir) as h:
        assert len(h) == 64
        assert h.manifest["layer"] == 3 and h.manifest["model_meta"]["stage"] == "finetune"
        assert h.manifest["model_meta"]["readout"] == "probe" and h.manifest.architecture == "wide3"
        assert h.manifest["features"]["head_weight"] == 1.0  # the probe's class probabilities shape the ranking
        first = h.item(0)
        hit = h.search_images([first.path], k=1)[0][0]
        assert hit.id == 0 and hit.label in cifar_splits["train"].classes
    created = h.manifest["created"]

    t0 = time.perf_counter()
    assert _run(tmp_path, cifar_data_dir, "--limit", "64", "--finetune-epochs", "1") == 0
    out = capsys.readouterr().out
    assert out.count("reusing") == 3 and time.perf_counter() - t0 < 30
    with open_index(index_dir) as h:
        assert h.manifest["created"] == created


@pytest.mark.slow
def test_full_quickstart_on_cpu(cifar_data_dir, tmp_path, capsys):
    t0 = time.perf_counter()
    assert _run(tmp_path, cifar_data_dir) == 0
    print(f"quickstart wall time {time.perf_counter() - t0:.0f} s")
    with open_index(tmp_path / "index_data" / "quickstart") as h:
        assert len(h) > 39_900  # the 40,000-image training split, less any byte-identical duplicates
