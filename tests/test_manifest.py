"""The typed manifest: format-1 files as hebbir has always written them load, and write back unchanged."""

from __future__ import annotations

import json

import pytest

from retrieval.index.manifest import Manifest, ManifestError

#: A manifest.json as written before the Manifest class existed (format version 1, plus a quickstart key).
OLD_V1 = {
    "format_version": 1, "model_file": "model.pt", "model_checksum": "ab" * 32,
    "model_source": "/home/me/checkpoints/quickstart-hpca-ft10.pt", "architecture": "conv6",
    "model_meta": {"stage": "finetune", "dataset": "cifar10"},
    "features": {"layer": 5, "pooling": "flatten", "projection": "pca", "dim": 256, "pooled_dim": 4096,
                 "input_size": 32},
    "layer": 5, "pooling": "flatten", "projection": "pca", "dimension": 256, "description": "layer 5, PCA 256",
    "metric": "inner_product", "factory": "Flat", "faiss_version": "1.9.0", "has_faiss_file": True,
    "source": "cifar10:train (64 of 40000)", "item_count": 64, "files_seen": 64,
    "created": "2026-11-23T10:00:00+00:00", "updated": None, "build_time_s": 3.2, "device": "cpu",
    "images_per_s": 94.0, "skipped": [], "duplicates": [], "additions": [], "quickstart_limit": 64,
}


def test_an_old_format_1_manifest_loads_and_round_trips():
    m = Manifest.from_json(json.dumps(OLD_V1))
    assert m.item_count == 64 and m.dimension == 256 and m.model_meta["stage"] == "finetune"
    assert m.extra == {"quickstart_limit": 64}
    assert m["layer"] == 5 and m.get("quickstart_limit") == 64 and m.get("nothing", "?") == "?"
    assert "created" in m and "extra" not in m
    back = m.to_dict()
    assert {k: v for k, v in back.items() if k in OLD_V1} == OLD_V1
    assert set(back) - set(OLD_V1) == {"fit_time_s", "deleted_rows"}
    assert Manifest.from_dict(json.loads(m.to_json())) == m


@pytest.mark.parametrize("data, message", [
    ([], "not a hebbir manifest"),
    ({**OLD_V1, "format_version": 3}, "format 3 is not supported"),
    ({**OLD_V1, "deleted_rows": 4}, "needs format 2"),
    ({k: v for k, v in OLD_V1.items() if k != "features"}, "missing features"),
    ({**OLD_V1, "item_count": "64"}, "item_count"),
    ({**OLD_V1, "model_file": "../../elsewhere.pt"}, "plain file name"),
])
def test_foreign_and_incomplete_manifests_are_refused(data, message):
    with pytest.raises(ManifestError, match=message):
        Manifest.from_dict(data)
