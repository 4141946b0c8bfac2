"""Milvus as the second index backend: Milvus Lite equals FAISS Flat, add / dedup / delete / reopen, the model
check on the collection, and one-line errors for an unreachable server and a missing pymilvus."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from _retrieval_helpers import FAST, tiny_model, write_folder  # noqa: F401 (fixtures)
from hebb.errors import UserError
from retrieval.cli import main
from retrieval.index import add_to_index, build_index, delete_items, open_index, read_manifest
from retrieval.index.manifest import Manifest

UNREACHABLE = "http://127.0.0.1:1"  # loopback, a port nothing listens on


def _need_milvus():
    pytest.importorskip("pymilvus", reason="pymilvus is not installed (pip install 'hebbir[milvus]')")
    pytest.importorskip("milvus_lite", reason="milvus-lite is not installed (pip install 'hebbir[milvus]')")


def _unit(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _same(a, b, tol=1e-5):
    (sa, ia), (sb, ib) = a, b
    np.testing.assert_array_equal(ia, ib)
    np.testing.assert_allclose(sa, sb, atol=tol)


# ----------------------------------------------------------------------------------------------- random vectors


def test_lite_collection_equals_faiss_flat_through_insert_delete_and_reopen(tmp_path):
    _need_milvus()
    faiss = pytest.importorskip("faiss")
    from retrieval.index import milvus_backend as mb

    n, d = 3000, 32
    vectors, queries = _unit(n, d, 0), _unit(40, d, 1)
    items = [(f"img/{i}.jpg", None if i % 3 else "cat", f"{i:064x}") for i in range(n)]
    config = mb.create_collection(tmp_path, {"uri": "milvus.db", "collection": "c"}, d, "sum0",
                                  range(n), vectors, items)
    assert config["index_type"] == "FLAT" and config["metric_type"] == "IP"
    manifest = Manifest(model_file="model.pt", model_checksum="sum0", architecture="conv6", features={},
                        dimension=d, item_count=n, backend="milvus", milvus=config)
    flat = faiss.IndexFlatIP(d)
    flat.add(vectors)
    backend = mb.MilvusBackend(tmp_path, manifest)
    try:
        _same(backend.search(queries, 10), flat.search(queries, 10))
        assert backend.search(queries[:2], 5000)[1].shape == (2, n)  # k past the collection: all of it
    finally:
        backend.close()

    # Delete 100 items and put one back twice (an upsert of the same id adds nothing): equal to faiss on the rest.
    gone = list(range(0, 200, 2))
    manifest.item_count, manifest.deleted_rows = n - len(gone), len(gone)  # what delete_items records
    mb.update_collection(tmp_path, manifest, delete=gone)
    mb.update_collection(tmp_path, manifest, upsert_ids=[1, 1], vectors=vectors[[1, 1]], items=[items[1]] * 2)
    keep = np.setdiff1d(np.arange(n), gone)
    rest = faiss.IndexIDMap(faiss.IndexFlatIP(d))
    rest.add_with_ids(vectors[keep], keep.astype(np.int64))
    backend = mb.MilvusBackend(tmp_path, manifest)  # reopened: the Lite server was stopped and flushed
    try:
        assert len(backend) == len(keep)
        _same(backend.search(queries, 10), rest.search(queries, 10))
    finally:
        backend.close()


def test_auto_index_type_follows_the_collection_size():
    from retrieval.index.milvus_backend import choose_index

    assert choose_index(99_999)[0] == "FLAT"
    assert choose_index(100_000) == ("HNSW", {"M": 32, "efConstruction": 200})
    assert choose_index(10_000, "IVF_FLAT") == ("IVF_FLAT", {"nlist": 400})
    with pytest.raises(UserError, match="unknown Milvus index type"):
        choose_index(10, "DISKANN")


# ----------------------------------------------------------------------------------------------- index directories


@pytest.fixture(scope="module")
def folders(cifar_splits, tmp_path_factory):
    """Two folders of 20 CIFAR images; the second holds 5 files with the same bytes as the first's."""
    first, second = tmp_path_factory.mktemp("first"), tmp_path_factory.mktemp("second")
    written = write_folder(first, cifar_splits["train"], 2)
    write_folder(second, cifar_splits["train"], 2, offset=2)
    for i, path in enumerate(written[:5]):
        shutil.copy(path, second / f"copy{i}.jpg")
    return first, second


@pytest.fixture(scope="module")
def built(tiny_model, folders, tmp_path_factory):
    """(milvus index, faiss index) of the first folder, the same model and features."""
    _need_milvus()
    root = tmp_path_factory.mktemp("built")
    kw = dict(device="cpu", progress=False, **FAST)
    build_index(tiny_model, folders[0], root / "mil", backend="milvus", **kw)
    build_index(tiny_model, folders[0], root / "fai", **kw)
    return root / "mil", root / "fai"


@pytest.fixture
def mil(built, tmp_path):
    dest = tmp_path / "mil"
    shutil.copytree(built[0], dest)
    return dest


def _results(index_dir, queries, k=10, backend="auto"):
    with open_index(index_dir, backend=backend) as handle:
        return handle.backend.name, [[(h.id, h.path, h.score) for h in hits] for hits in handle.search_vectors(queries, k)]


def _equal(a, b):
    assert [[(i, p) for i, p, _ in row] for row in a] == [[(i, p) for i, p, _ in row] for row in b]
    np.testing.assert_allclose([[s for *_, s in row] for row in a], [[s for *_, s in row] for row in b], atol=1e-5)


def test_milvus_index_round_trip_equals_faiss(built, mil, folders, tmp_path, capsys):
    m = read_manifest(mil)
    assert (m.backend, m.factory, m.has_faiss_file) == ("milvus", "FLAT", False)
    assert m.milvus["uri"] == "milvus.db" and m.milvus["collection"] == "hebbir_mil"
    assert (mil / "milvus.db").is_dir() and not (mil / "index.faiss").exists() and (mil / "vectors.npy").is_file()
    assert "backend" not in json.loads((built[1] / "manifest.json").read_text())  # faiss manifests as before
    queries = _unit(6, m.dimension, 3)
    name, got = _results(mil, queries)
    assert name == "milvus"
    _equal(got, _results(built[1], queries)[1])
    _equal(got, _results(mil, queries, backend="torch")[1])

    r = add_to_index(mil, folders[1], device="cpu", progress=False)
    assert r["added"] == 20 and len(r["duplicates"]) == 5
    assert add_to_index(mil, folders[1], device="cpu", progress=False)["added"] == 0  # same content: nothing
    m = read_manifest(mil)
    assert m.item_count == 40
    _equal(_results(mil, queries, k=40)[1], _results(mil, queries, k=40, backend="torch")[1])

    m = delete_items(mil, [0, 5, 21])
    assert (m.item_count, m.deleted_rows, m.format_version) == (37, 3, 2)
    name, got = _results(mil, queries, k=40)  # reopened after each write
    assert all(len(row) == 37 and not {0, 5, 21} & {i for i, *_ in row} for row in got)
    _equal(got, _results(mil, queries, k=40, backend="torch")[1])

    # The command line finds the backend in the manifest.
    assert main(["index", "info", "--index", str(mil)]) == 0
    assert "Milvus FLAT" in capsys.readouterr().out
    image = next(folders[1].glob("*/*.jpg"))
    assert main(["search", "--index", str(mil), "--json", "--k", "3", str(image)]) == 0
    hits = json.loads(capsys.readouterr().out)[0]
    assert hits[0]["path"] == str(image) and hits[0]["score"] == pytest.approx(1.0, abs=1e-4)


def test_repair_reloads_a_lost_collection(mil, capsys):
    shutil.rmtree(mil / "milvus.db")
    (mil / "milvus.db").mkdir()
    with pytest.raises(UserError, match="does not exist; recreate it .* hebbir index repair"):
        open_index(mil)
    assert main(["index", "repair", "--index", str(mil)]) == 0
    assert "reloaded Milvus collection" in capsys.readouterr().out
    assert len(_results(mil, _unit(1, read_manifest(mil).dimension, 4), k=50)[1][0]) == 20


def test_a_collection_of_another_model_is_refused(mil):
    from pymilvus import MilvusClient

    client = MilvusClient(str(mil / "milvus.db"))
    client.alter_collection_properties("hebbir_mil", properties={"hebbir.model_checksum": "f" * 64})
    client.close()
    from milvus_lite.server_manager import server_manager_instance

    server_manager_instance.release_server(str(mil / "milvus.db"))
    with pytest.raises(UserError, match="holds vectors of another model"):
        open_index(mil)


def test_an_unreachable_server_is_a_one_line_error(tiny_model, folders, mil, tmp_path, capsys):
    argv = ["index", "build", "--model", str(tiny_model), "--images", str(folders[0]), "--out",
            str(tmp_path / "new"), "--backend", "milvus", "--milvus-uri", UNREACHABLE, "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("hebbir: error: cannot reach Milvus at http://127.0.0.1:1") and err.count("\n") == 1
    assert not (tmp_path / "new").exists()

    data = json.loads((mil / "manifest.json").read_text())
    data["milvus"]["uri"] = UNREACHABLE
    (mil / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(UserError, match="cannot reach Milvus at http://127.0.0.1:1"):
        open_index(mil)


def test_missing_pymilvus_is_a_one_line_error(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pymilvus", None)  # `import pymilvus` now raises ImportError
    with pytest.raises(UserError, match=r"pymilvus is not installed: install it with pip install 'hebbir\[milvus\]'"):
        build_index(tiny_model, tmp_path, tmp_path / "idx", backend="milvus", device="cpu", progress=False)
    from retrieval.index.milvus_backend import require_pymilvus

    with pytest.raises(UserError, match="pymilvus is not installed"):
        require_pymilvus()


def test_sync_keeps_the_collection_equal_to_the_item_table(tiny_model, cifar_splits, tmp_path):
    _need_milvus()
    folder = tmp_path / "photos"
    files = write_folder(folder, cifar_splits["train"], 2)
    idx = tmp_path / "idx"
    build_index(tiny_model, folder, idx, backend="milvus", device="cpu", progress=False, **FAST)
    spare = write_folder(tmp_path / "spare", cifar_splits["train"], 1, offset=10)
    for f in files[:3]:
        f.unlink()
    shutil.copy(spare[0], folder / spare[0].name)
    moved = files[5].with_name("renamed.jpg")
    files[5].rename(moved)
    assert main(["index", "sync", "--index", str(idx), "--images", str(folder), "--device", "cpu", "--quiet"]) == 0
    m = read_manifest(idx)
    assert (m.item_count, m.deleted_rows) == (18, 3)
    queries = _unit(4, m.dimension, 5)
    name, got = _results(idx, queries, k=30)
    assert name == "milvus" and all(len(row) == 18 for row in got)
    assert str(moved.resolve()) in {p for row in got for _, p, _ in row}  # the moved file's new path
    _equal(got, _results(idx, queries, k=30, backend="torch")[1])


def test_the_page_searches_a_milvus_index_unchanged(built, folders, tmp_path, monkeypatch):
    pytest.importorskip("streamlit")
    import torch
    from streamlit.testing.v1 import AppTest

    root = tmp_path / "index_data"
    shutil.copytree(built[0], root / "quickstart")
    monkeypatch.setenv("HEBBIR_INDEX_DIR", str(root))
    monkeypatch.setenv("HEBBIR_REPORTS_DIR", str(tmp_path / "no-reports"))
    threads = torch.get_num_threads()
    try:
        at = AppTest.from_file(str(Path(__file__).resolve().parent.parent / "app.py"), default_timeout=120).run()
        assert not at.exception
        image = sorted(folders[0].glob("*/*.jpg"))[0]
        at.file_uploader(key="uploads").set_value([(image.name, image.read_bytes(), "image/jpeg")])
        at = at.run()
    finally:
        torch.set_num_threads(threads)
    assert not at.exception and not at.error
    scores = [float(m.group(1)) for md in at.markdown if (m := re.match(r"^\*\*#1\*\* · `(-?[0-9.]+)`", md.value))]
    assert scores and scores[0] == pytest.approx(1.0, abs=1e-3)  # the query is indexed: it comes back first


def test_a_handle_opened_after_an_add_sees_the_new_folder(mil, folders):
    """The page keeps a handle open while `add` swaps a new folder in; reopening must read the new one."""
    old = open_index(mil)
    add_to_index(mil, folders[1], device="cpu", progress=False)
    with open_index(mil) as new:
        assert len(new.backend) == 40
        old.close()  # closing the replaced handle leaves the new one's server alone
        assert len(new.search_vectors(_unit(1, new.dim, 6), k=40)[0]) == 40


def test_a_manifest_cannot_point_the_lite_database_outside_the_index(built):
    from retrieval.index.manifest import ManifestError

    data = json.loads((built[0] / "manifest.json").read_text())
    for uri in ("../other/milvus.db", "sub/milvus.db", ".hidden.db"):
        data["milvus"]["uri"] = uri
        with pytest.raises(ManifestError, match="plain file name inside the index"):
            Manifest.from_dict(data)
