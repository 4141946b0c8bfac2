"""Index directories: broken files, duplicates, incremental add, interrupted builds, model checks, no faiss."""

from __future__ import annotations

import io
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

import retrieval.index.backends as backends_mod
from _retrieval_helpers import FAST, image_folder, make_checkpoint, tiny_model, write_folder  # noqa: F401
from hebb.errors import UserError
from retrieval.cli import main
from retrieval.features import FeatureExtractor
from retrieval.index import add_to_index, build_index, read_manifest
from retrieval.search import open_index


def _png_claiming(width: int, height: int) -> bytes:
    """A small PNG whose header claims width x height pixels (a decompression bomb, cheaply)."""
    import struct
    import zlib

    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = 8 + 8  # signature, then the IHDR chunk's length and type
    data[ihdr:ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr - 4:ihdr + 13]))
    data[ihdr + 13:ihdr + 17] = struct.pack(">I", crc)
    return bytes(data)


@pytest.fixture(scope="module")
def messy_folder(cifar_splits, tmp_path_factory):
    """20 good JPEGs, 4 odd-mode images (all usable), 5 bad files and 1 duplicate."""
    root = tmp_path_factory.mktemp("messy")
    good = write_folder(root, cifar_splits["train"], 2)
    rgb = Image.open(good[0]).convert("RGB")
    odd = root / "odd"
    odd.mkdir()
    rgb.convert("CMYK").save(odd / "cmyk.jpg")
    Image.fromarray((np.asarray(rgb.convert("L"), np.uint16) * 257)).save(odd / "grey16.png")
    rgb.convert("P", palette=Image.Palette.ADAPTIVE).save(odd / "palette.png")
    rgba = rgb.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(odd / "alpha.png")
    bad = root / "bad"
    bad.mkdir()
    data = good[1].read_bytes()
    (bad / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (bad / "empty.jpg").write_bytes(b"")
    (bad / "text.png").write_text("hello, not a picture")
    (bad / "notes.txt").write_text("a note")
    (bad / "huge.png").write_bytes(_png_claiming(8000, 8000))  # 64 megapixels: over the loader's limit
    shutil.copy(good[2], bad / "copy_of_good.jpg")
    return root


@pytest.fixture(scope="module")
def messy_index(tiny_model, messy_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("messy_index") / "idx"
    build_index(tiny_model, messy_folder, out, device="cpu", progress=False, **FAST)
    return out


def _copy(index_dir, tmp_path):
    dest = tmp_path / "idx"
    shutil.copytree(index_dir, dest)
    return dest


def test_messy_folder_indexes_exactly_the_good_images(messy_index, tmp_path):
    m = read_manifest(messy_index)
    assert m["item_count"] == 24
    skipped = {os.path.basename(s["path"]): s["reason"] for s in m["skipped"]}
    assert set(skipped) == {"truncated.jpg", "empty.jpg", "text.png", "notes.txt", "huge.png"}
    assert "too large" in skipped["huge.png"] and "empty" in skipped["empty.jpg"]
    assert "not an image" in skipped["text.png"]
    assert [os.path.basename(d["path"]) for d in m["duplicates"]] == ["copy_of_good.jpg"]
    with open_index(messy_index) as h:
        labels = [h.item(i).label for i in range(len(h))]
        paths = [os.path.basename(h.item(i).path) for i in range(len(h))]
    assert labels.count("odd") == 4 and "bad" not in labels
    assert {"cmyk.jpg", "grey16.png", "palette.png", "alpha.png"} <= set(paths)
    for key in ("format_version", "model_checksum", "architecture", "layer", "pooling", "dimension", "metric",
                "faiss_version", "item_count", "created", "build_time_s"):
        assert key in m


def test_add_only_adds_new_content(tiny_model, cifar_splits, tmp_path):
    first = tmp_path / "first"
    write_folder(first, cifar_splits["train"], 3)
    idx = tmp_path / "idx"
    build_index(tiny_model, first, idx, device="cpu", progress=False, **FAST)
    again = add_to_index(idx, first, device="cpu", progress=False)
    assert again["added"] == 0 and len(again["duplicates"]) == 30
    more = tmp_path / "more"
    new_files = write_folder(more, cifar_splits["train"], 1, offset=3)
    shutil.copytree(first / "cat", more / "cat", dirs_exist_ok=True)  # 3 already indexed
    r = add_to_index(idx, more, device="cpu", progress=False)
    assert r["added"] == 10 and len(r["duplicates"]) == 3
    with open_index(idx) as h:
        assert len(h) == 40 and h.manifest["item_count"] == 40
        hit = h.search_images([str(new_files[0])], k=1)[0][0]
        assert hit.path == str(new_files[0].resolve()) and hit.id >= 30
    assert read_manifest(idx)["additions"][-1]["added"] == 10


def test_an_index_with_the_read_out_head_builds_adds_and_searches(cifar_splits, tiny_model, tmp_path):
    """--head-weight: the manifest records it, added images and queries get the same vectors; a model whose head
    learned nothing (a pre-training) is refused."""
    import torch
    from hebb.checkpoint import load_checkpoint, save_checkpoint

    first = tmp_path / "first"
    write_folder(first, cifar_splits["train"], 3)
    with pytest.raises(UserError, match="--head-weight needs a fine-tuned"):
        build_index(tiny_model, first, tmp_path / "refused", head_weight=1.0, device="cpu", progress=False, **FAST)
    net, _ = load_checkpoint(tiny_model)
    torch.manual_seed(0)
    net.cut(2)  # a fresh head on layer 2 stands in for a trained one
    model = tmp_path / "ft.pt"
    save_checkpoint(model, net, {"stage": "finetune", "readout": "probe"})
    idx = tmp_path / "idx"
    m = build_index(model, first, idx, head_weight=1.0, device="cpu", progress=False, **FAST)
    assert m.dimension == m.features["dim"] + 10 and m.features["head_weight"] == 1.0
    more = tmp_path / "more"
    new_files = write_folder(more, cifar_splits["train"], 1, offset=3)
    assert add_to_index(idx, more, device="cpu", progress=False)["added"] == 10
    with open_index(idx) as h:
        hit = h.search_images([str(new_files[0])], k=1)[0][0]
        assert hit.path == str(new_files[0].resolve()) and hit.score == pytest.approx(1.0, abs=1e-4)


def _failing_transform(fail_on_call: int, exc: BaseException):
    real = FeatureExtractor.transform
    calls = {"n": 0}

    def transform(self, images):
        calls["n"] += 1
        if calls["n"] == fail_on_call:
            raise exc
        return real(self, images)

    return transform, calls


def test_interrupted_build_keeps_the_old_index_and_resumes(tiny_model, messy_index, cifar_splits, tmp_path,
                                                           monkeypatch):
    folder = tmp_path / "images"
    write_folder(folder, cifar_splits["train"], 4)  # 40 images
    out = _copy(messy_index, tmp_path)  # the old index: 24 items
    kwargs = dict(device="cpu", progress=False, force=True, chunk_size=8, **FAST)  # 5 chunks
    for fail_on, exc in ((3, RuntimeError("disk on fire")), (2, KeyboardInterrupt())):
        transform, _ = _failing_transform(fail_on, exc)
        monkeypatch.setattr(FeatureExtractor, "transform", transform)
        with pytest.raises(type(exc)):
            build_index(tiny_model, folder, out, **kwargs)
        with open_index(out) as h:  # the old index, intact
            assert len(h) == 24
        assert not list(tmp_path.glob(".idx.building-*"))
    transform, calls = _failing_transform(-1, RuntimeError())
    monkeypatch.setattr(FeatureExtractor, "transform", transform)
    build_index(tiny_model, folder, out, **kwargs)
    assert calls["n"] == 2  # 2 + 1 chunks were finished by the interrupted runs
    monkeypatch.undo()
    clean = tmp_path / "clean"
    build_index(tiny_model, folder, clean, device="cpu", progress=False, chunk_size=64, **FAST)
    resumed, fresh = np.load(out / "vectors.npy"), np.load(clean / "vectors.npy")
    assert resumed.shape == (40, 32)
    np.testing.assert_allclose(resumed, fresh, atol=1e-5)
    assert not (tmp_path / ".idx.partial").exists()


def test_crash_between_the_two_renames_is_recovered(messy_index, tmp_path):
    out = _copy(messy_index, tmp_path)
    os.replace(out, tmp_path / ".idx.previous")  # the state after the first rename of a swap
    with open_index(out) as h:
        assert len(h) == 24


def test_model_mismatch_is_a_clear_error(tiny_model, messy_index, cifar_splits, tmp_path):
    out = _copy(messy_index, tmp_path)
    other = make_checkpoint(tmp_path / "other.pt", cifar_splits["train"].images, seed=1)
    with pytest.raises(UserError, match="does not match"):
        open_index(out, model=other)
    open_index(out, model=tiny_model).close()

    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    shutil.copy(other, broken / "model.pt")  # someone replaced the model copy
    with pytest.raises(UserError, match="checksum"):
        open_index(broken)

    shutil.copytree(out, tmp_path / "dim", dirs_exist_ok=True)
    manifest = json.loads((tmp_path / "dim" / "manifest.json").read_text())
    manifest["features"]["dim"] = manifest["dimension"] = 64
    (tmp_path / "dim" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="64"):
        open_index(tmp_path / "dim")


def test_existing_index_needs_force_and_bad_factory_is_explained(tiny_model, messy_folder, messy_index,
                                                                 tmp_path):
    out = _copy(messy_index, tmp_path)
    with pytest.raises(UserError, match="--force"):
        build_index(tiny_model, messy_folder, out, device="cpu", progress=False, **FAST)
    with pytest.raises(UserError, match="factory"):
        build_index(tiny_model, messy_folder, tmp_path / "f", factory="Nonsense42", device="cpu", progress=False,
                    **FAST)
    with pytest.raises(UserError, match="at least 64"):
        build_index(tiny_model, messy_folder, tmp_path / "g", factory="IVF64,Flat", device="cpu",
                    progress=False, **FAST)


def test_without_faiss_the_torch_backend_serves(tiny_model, messy_folder, tmp_path, monkeypatch):
    monkeypatch.setattr(backends_mod, "faiss_or_none", lambda: None)
    out = tmp_path / "idx"
    build_index(tiny_model, messy_folder, out, device="cpu", progress=False, **FAST)
    assert not (out / "index.faiss").exists()
    with open_index(out) as h:
        assert h.backend.name == "torch"
        v = np.asarray(h.vectors()[:2])
        assert [row[0].id for row in h.search_vectors(v, k=3)] == [0, 1]
    with pytest.raises(UserError, match=r"hebbir\[cpu\]"):
        build_index(tiny_model, messy_folder, tmp_path / "ivf", factory="IVF4,Flat", progress=False, **FAST)


def test_cli_build_info_add(tiny_model, messy_folder, tmp_path, capsys):
    out = tmp_path / "idx"
    assert main(["index", "build", "--model", str(tiny_model), "--images", str(messy_folder), "--out", str(out),
                 "--layer", "2", "--pooling", "grid", "--dim", "32", "--device", "cpu", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "indexed 24 images" in text and "images/s" in text and "skipped 5 file(s)" in text
    assert main(["index", "info", "--index", str(out)]) == 0
    assert "24 from" in capsys.readouterr().out
    assert main(["index", "info", "--index", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["item_count"] == 24
    assert main(["index", "add", "--index", str(out), "--images", str(messy_folder), "--quiet"]) == 0
    assert "added 0 images" in capsys.readouterr().out
