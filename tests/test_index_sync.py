"""`hebbir index sync` follows a folder that changed; `hebbir duplicates` finds identical and near images."""

from __future__ import annotations

import json
import shutil

import numpy as np
from PIL import Image

from _retrieval_helpers import FAST, tiny_model, write_folder  # noqa: F401 (fixtures)
from retrieval.cli import main
from retrieval.index import add_to_index, build_index, open_index, read_manifest

#: No projection: a fresh build fits no PCA, so its vectors are comparable with the synced ones.
NOPCA = {"layer": 2, "pooling": "grid", "projection": "none"}


def _contents(index_dir):
    """{path: (label, sha256, vector)} and {path: id} of an index."""
    with open_index(index_dir) as h:
        items = h.items.all()
        vectors = np.asarray(h.vectors())
    return ({it.path: (it.label, it.sha256, vectors[it.id]) for it in items}, {it.path: it.id for it in items})


def test_sync_after_delete_modify_add_equals_a_fresh_build(tiny_model, cifar_splits, tmp_path, capsys):
    folder = tmp_path / "photos"
    files = write_folder(folder, cifar_splits["train"], 2)  # 20 images, 2 per class
    idx = tmp_path / "idx"
    build_index(tiny_model, folder, idx, device="cpu", progress=False, **NOPCA)
    _, ids_before = _contents(idx)
    spare = write_folder(tmp_path / "spare", cifar_splits["train"], 1, offset=10)
    for f in files[:3]:
        f.unlink()  # deleted
    shutil.copy(spare[0], files[3])  # changed in place
    shutil.copy(spare[1], files[4])
    (folder / "new").mkdir()
    for s in spare[2:5]:
        shutil.copy(s, folder / "new" / s.name)  # added
    shutil.copy(files[10], folder / "new" / "copy.jpg")  # same bytes as an indexed file: not indexed twice
    moved = files[5].with_name("renamed.jpg")
    files[5].rename(moved)

    assert main(["index", "sync", "--index", str(idx), "--images", str(folder), "--dry-run", "--quiet"]) == 0
    assert "remove 5, would add 5, would move 1" in capsys.readouterr().out
    assert read_manifest(idx).item_count == 20  # a dry run writes nothing
    assert main(["index", "sync", "--index", str(idx), "--images", str(folder), "--device", "cpu", "--quiet"]) == 0
    assert "now holds 20 items" in capsys.readouterr().out

    fresh = tmp_path / "fresh"
    build_index(tiny_model, folder, fresh, device="cpu", progress=False, **NOPCA)
    synced, ids_after = _contents(idx)
    expected, _ = _contents(fresh)
    assert synced.keys() == expected.keys()
    for path, (label, digest, vector) in expected.items():
        assert synced[path][:2] == (label, digest), path
        np.testing.assert_allclose(synced[path][2], vector, atol=1e-5)
    untouched = [str(f.resolve()) for f in files[6:]]
    assert all(ids_after[p] == ids_before[p] for p in untouched)  # ids stay stable
    assert ids_after[str(moved.resolve())] == ids_before[str(files[5].resolve())]
    m = read_manifest(idx)
    assert m.duplicates == read_manifest(fresh).duplicates and len(m.duplicates) == 1
    assert m.format_version == 2 and m.deleted_rows == 5 and m.rows == 25
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".idx.")]

    with open_index(idx) as h:  # deleted rows never come back as hits, new files find themselves
        assert len(h) == 20
        hits = h.search_images([str(folder / "new" / spare[2].name)], k=25)[0]
        assert hits[0].path == str((folder / "new" / spare[2].name).resolve())
        assert len(hits) == 20 and len({hit.id for hit in hits}) == 20
    more = tmp_path / "more"
    write_folder(more, cifar_splits["train"], 1, offset=20)
    assert add_to_index(idx, more, device="cpu", progress=False)["added"] == 10
    with open_index(idx) as h:
        assert len(h) == 30 and max(it.id for it in h.items.all()) == 34


def test_sync_leaves_items_from_other_folders_alone(tiny_model, cifar_splits, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    files = write_folder(a, cifar_splits["train"], 1)
    write_folder(b, cifar_splits["train"], 1, offset=1)
    idx = tmp_path / "idx"
    build_index(tiny_model, a, idx, device="cpu", progress=False, **FAST)
    add_to_index(idx, b, device="cpu", progress=False)
    files[0].unlink()
    assert main(["index", "sync", "--index", str(idx), "--images", str(a), "--device", "cpu", "--quiet"]) == 0
    with open_index(idx) as h:
        paths = [it.path for it in h.items.all()]
    assert len(paths) == 19 and sum(p.startswith(str(b.resolve())) for p in paths) == 10


def test_duplicates_lists_identical_and_near_images(tiny_model, cifar_splits, tmp_path, capsys):
    folder = tmp_path / "photos"
    files = write_folder(folder, cifar_splits["train"], 2)
    shutil.copy(files[0], folder / "airplane" / "copy.jpg")  # same bytes
    Image.open(files[1]).save(folder / "airplane" / "resaved.jpg", quality=90)  # same picture, other bytes
    idx = tmp_path / "idx"
    build_index(tiny_model, folder, idx, device="cpu", progress=False, **FAST)
    assert main(["duplicates", "--index", str(idx), "--json", "--threshold", "0.97"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["exact"] == [[str(files[0].resolve()), str((folder / "airplane" / "copy.jpg").resolve())]]
    pair = {str(files[1].resolve()), str((folder / "airplane" / "resaved.jpg").resolve())}
    groups = [g for g in found["near"] if pair <= {it["path"] for it in g["items"]}]
    assert len(groups) == 1 and groups[0]["min_score"] >= 0.97
    assert main(["duplicates", "--index", str(idx)]) == 0
    assert "group(s) of near duplicates" in capsys.readouterr().out
