"""Index files that lie and runs that die: --force never deletes what is not an index, damaged files are
one-line errors, dead runs' temporary folders are cleaned up, kill -9 leaves the old index, clear messages."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from _retrieval_helpers import FAST, tiny_model, write_folder  # noqa: F401 (fixtures)
from hebb.errors import UserError
from retrieval.cli import main
from retrieval.features import FeatureExtractor
from retrieval.index import add_to_index, build_index, open_index, read_manifest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def small_folder(cifar_splits, tmp_path_factory):
    root = tmp_path_factory.mktemp("small")
    write_folder(root, cifar_splits["train"], 2)  # 20 images
    return root


@pytest.fixture(scope="module")
def small_index(tiny_model, small_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("small_index") / "idx"
    build_index(tiny_model, small_folder, out, device="cpu", progress=False, **FAST)
    return out


@pytest.fixture
def idx(small_index, tmp_path):
    """A private copy of the small index at tmp_path/idx."""
    dest = tmp_path / "idx"
    shutil.copytree(small_index, dest)
    return dest


def _one_line_error(argv, capsys) -> str:
    assert main([str(a) for a in argv]) == 2, argv
    err = capsys.readouterr().err
    assert err.startswith("hebbir: error: ") and err.count("\n") == 1, err
    return err


def _leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


# ----------------------------------------------------------------------------------------------- 1. --force


def test_force_never_deletes_a_folder_that_is_not_an_index(tiny_model, small_folder, tmp_path, capsys):
    photos = tmp_path / "photos"
    shutil.copytree(small_folder, photos)
    (photos / "notes.txt").write_text("my holiday")
    before = sorted(p.relative_to(photos) for p in photos.rglob("*"))
    for extra in ([], ["--force"]):
        err = _one_line_error(["index", "build", "--model", tiny_model, "--images", small_folder, "--out", photos,
                               "--device", "cpu", "--quiet", *extra], capsys)
        assert "not a hebbir index" in err
    assert sorted(p.relative_to(photos) for p in photos.rglob("*")) == before


def test_force_replaces_an_index_a_damaged_index_and_an_empty_folder(tiny_model, small_folder, idx, tmp_path):
    (idx / "manifest.json").write_text("[]")  # damaged, but every file is an index file
    with pytest.raises(UserError, match="a damaged index already exists there; use --force"):
        build_index(tiny_model, small_folder, idx, device="cpu", progress=False, **FAST)
    (tmp_path / "empty").mkdir()
    for out, force in ((idx, True), (tmp_path / "empty", False)):  # an empty folder holds nothing to lose
        m = build_index(tiny_model, small_folder, out, device="cpu", progress=False, force=force, **FAST)
        assert m["item_count"] == 20 and read_manifest(out)["item_count"] == 20


# ----------------------------------------------------------------------------------------------- 4. damage


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _edit_manifest(idx: Path, change) -> None:
    m = json.loads((idx / "manifest.json").read_text())
    (idx / "manifest.json").write_text(json.dumps(change(m)))


DAMAGE = {
    "manifest-list": ("manifest.json", lambda d: (d / "manifest.json").write_text("[]")),
    "manifest-missing-keys": ("manifest.json", lambda d: _edit_manifest(
        d, lambda m: {k: v for k, v in m.items() if k not in ("model_checksum", "item_count")})),
    "manifest-wrong-type": ("manifest.json", lambda d: _edit_manifest(d, lambda m: {**m, "dimension": "wide"})),
    "faiss-truncated": ("index.faiss", lambda d: _truncate(d / "index.faiss")),
    "faiss-empty": ("index.faiss", lambda d: (d / "index.faiss").write_bytes(b"")),
    "vectors-truncated": ("vectors.npy", lambda d: _truncate(d / "vectors.npy")),
    "vectors-missing": ("vectors.npy", lambda d: (d / "vectors.npy").unlink()),
    "items-garbage": ("items.sqlite", lambda d: (d / "items.sqlite").write_bytes(os.urandom(4096))),
    "projection-truncated": ("projection.npz", lambda d: _truncate(d / "projection.npz")),
    "model-truncated": ("model.pt", lambda d: _truncate(d / "model.pt")),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_a_damaged_file_is_a_one_line_error_naming_it(case, idx, small_folder, capsys):
    name, damage = DAMAGE[case]
    damage(idx)
    query = sorted(small_folder.rglob("*.jpg"))[0]
    for argv in (["search", "--index", idx, "--device", "cpu", query],
                 ["index", "info", "--index", idx],
                 ["index", "add", "--index", idx, "--images", small_folder, "--device", "cpu", "--quiet"]):
        err = _one_line_error(argv, capsys)
        assert name in err and ("rebuild" in err or "repair" in err), (argv, err)
    with pytest.raises(UserError, match=name.replace(".", r"\.")):  # what the page calls, and shows as a message
        open_index(idx)


def test_repair_rewrites_a_damaged_faiss_file(idx, small_folder, capsys):
    _truncate(idx / "index.faiss")
    assert "index repair" in _one_line_error(["search", "--index", idx, "--device", "cpu",
                                              sorted(small_folder.rglob("*.jpg"))[0]], capsys)
    assert main(["index", "repair", "--index", str(idx)]) == 0
    with open_index(idx) as h:
        assert h.backend.name == "faiss" and len(h) == 20
        assert h.search_vectors(np.asarray(h.vectors()[:1]), k=1)[0][0].id == 0


# ----------------------------------------------------------------------------------------------- 6. leftovers


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _fake_tmp(parent: Path, name: str, owner: dict | None, age_s: float = 0.0) -> Path:
    d = parent / name
    d.mkdir()
    (d / "vectors.npy").write_bytes(b"\0" * 1000)
    if owner is not None:
        (d / "owner.json").write_text(json.dumps(owner))
    if age_s:
        t = time.time() - age_s
        os.utime(d, (t, t))
    return d


def test_the_next_run_removes_only_dead_runs_temporary_folders(idx, small_folder, tmp_path):
    from retrieval.index.directory import _owner_record

    dead = _fake_tmp(tmp_path, ".idx.adding-dead", _owner_record(_dead_pid()))
    reused = _fake_tmp(tmp_path, ".idx.building-reused", {**_owner_record(os.getpid()), "start_time": "1"})
    live = _fake_tmp(tmp_path, ".idx.adding-live", _owner_record(os.getpid()))
    fresh_orphan = _fake_tmp(tmp_path, ".idx.adding-fresh", None)
    old_orphan = _fake_tmp(tmp_path, ".idx.building-old", None, age_s=2 * 86400)
    others = [_fake_tmp(tmp_path, ".other.adding-dead", _owner_record(_dead_pid())),
              _fake_tmp(tmp_path, "idx.adding-notours", _owner_record(_dead_pid()))]
    r = add_to_index(idx, small_folder, device="cpu", progress=False)
    assert r["added"] == 0
    assert not dead.exists() and not reused.exists() and not old_orphan.exists()
    assert live.exists() and fresh_orphan.exists() and all(o.exists() for o in others)


def _run_until_paused(argv: list, phase: str, timeout: float = 240.0) -> None:
    """Run the CLI in a subprocess until it reaches `phase`, then kill -9 it."""
    env = dict(os.environ, HEBBIR_PAUSE_AT=phase, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-m", "retrieval.cli", *map(str, argv)], env=env, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(ln) for ln in proc.stderr] + [lines.put(None)], daemon=True).start()
    seen = []
    try:
        while True:
            line = lines.get(timeout=timeout)
            if line is None:
                pytest.fail(f"ended without pausing at {phase}: {''.join(seen)[-2000:]}")
            seen.append(line)
            if line.strip() == f"paused at {phase}":
                break
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


@pytest.mark.parametrize("phase", ["extract", "write", "swap"])
def test_kill_9_during_build_keeps_the_old_index_and_the_rerun_cleans_up(phase, tiny_model, cifar_splits, idx,
                                                                         tmp_path):
    bigger = tmp_path / "bigger"
    write_folder(bigger, cifar_splits["train"], 3, offset=2)  # 30 other images
    argv = ["index", "build", "--model", tiny_model, "--images", bigger, "--out", idx, "--force", "--layer", "2",
            "--pooling", "grid", "--dim", "32", "--device", "cpu", "--quiet"]
    _run_until_paused(argv, phase)
    assert _leftovers(idx)  # what the dead run left: its work, temporary or backup folder
    with open_index(idx) as h:  # the old index, intact (after a kill between the renames: recovered)
        assert len(h) == 20 and h.search_vectors(np.asarray(h.vectors()[:1]), k=1)[0][0].id == 0
    build_index(tiny_model, bigger, idx, device="cpu", progress=False, force=True, **FAST)
    assert read_manifest(idx)["item_count"] == 30
    assert _leftovers(idx) == []


@pytest.mark.parametrize("phase", ["extract", "write", "swap"])
def test_kill_9_during_add_keeps_the_old_index_and_the_rerun_cleans_up(phase, cifar_splits, idx, tmp_path):
    more = tmp_path / "more"
    write_folder(more, cifar_splits["train"], 1, offset=5)  # 10 new images
    _run_until_paused(["index", "add", "--index", idx, "--images", more, "--device", "cpu", "--quiet"], phase)
    assert _leftovers(idx)
    with open_index(idx) as h:
        assert len(h) == 20 and h.search_vectors(np.asarray(h.vectors()[:1]), k=1)[0][0].id == 0
    assert add_to_index(idx, more, device="cpu", progress=False)["added"] == 10
    with open_index(idx) as h:
        assert len(h) == 30
    assert _leftovers(idx) == []


@pytest.mark.parametrize("phase", ["extract", "write", "swap"])
def test_kill_9_during_sync_keeps_the_old_index_and_the_rerun_cleans_up(phase, cifar_splits, idx, tmp_path):
    from retrieval.index import sync_index

    more = tmp_path / "more"
    write_folder(more, cifar_splits["train"], 1, offset=5)  # 10 new images in a folder of their own
    _run_until_paused(["index", "sync", "--index", idx, "--images", more, "--device", "cpu", "--quiet"], phase)
    assert _leftovers(idx)
    with open_index(idx) as h:
        assert len(h) == 20 and h.search_vectors(np.asarray(h.vectors()[:1]), k=1)[0][0].id == 0
    sync_index(idx, more, device="cpu", progress=False)
    with open_index(idx) as h:
        assert len(h) == 30
    assert _leftovers(idx) == []


# ----------------------------------------------------------------------------------------------- 8. messages


def test_a_text_file_as_model_is_explained(small_folder, tmp_path, capsys):
    notes = tmp_path / "notes.pt"
    notes.write_text("these are my notes, not a model\n")
    err = _one_line_error(["index", "build", "--model", notes, "--images", small_folder, "--out",
                           tmp_path / "out", "--quiet"], capsys)
    assert "text file" in err and "(101)" not in err


def test_out_pointing_at_a_file_is_explained(tiny_model, small_folder, tmp_path, capsys):
    target = tmp_path / "out.txt"
    target.write_text("x")
    err = _one_line_error(["index", "build", "--model", tiny_model, "--images", small_folder, "--out", target,
                           "--quiet", "--force"], capsys)
    assert "a file" in err and "folder already exists" not in err
    assert target.read_text() == "x"


@pytest.mark.parametrize("model_file", ["../model.pt", "/etc/passwd", "sub/model.pt", ".."])
def test_model_file_must_stay_inside_the_index(model_file, idx):
    shutil.copy(idx / "model.pt", idx.parent / "model.pt")
    _edit_manifest(idx, lambda m: {**m, "model_file": model_file})
    with pytest.raises(UserError, match="plain file name"):
        open_index(idx)


def test_images_per_second_counts_the_pca_fit(tiny_model, small_folder, tmp_path, monkeypatch):
    real_fit = FeatureExtractor.fit

    def slow_fit(self, *args, **kwargs):
        time.sleep(1.0)  # the fit pass runs the network over the sample: it is part of the indexing work
        return real_fit(self, *args, **kwargs)

    monkeypatch.setattr(FeatureExtractor, "fit", slow_fit)
    m = build_index(tiny_model, small_folder, tmp_path / "idx", device="cpu", progress=False, **FAST)
    assert m["images_per_s"] is not None and m["images_per_s"] < m["item_count"] / 1.0


# ----------------------------------------------------------------------------------------------- --exclude


def test_exclude_patterns_and_default_junk_are_not_indexed(tiny_model, small_folder, tmp_path, capsys):
    photos = tmp_path / "photos"
    shutil.copytree(small_folder, photos)
    some = sorted(photos.rglob("*.jpg"))
    for junk in ("@eaDir/cat/thumb.jpg", "cat/._00001.jpg", ".git/objects/x.jpg"):
        (photos / junk).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(some[-1], photos / junk)
    raw = photos / "raw"
    raw.mkdir()
    shutil.copy(some[0], raw / "a.jpg")
    (raw / "b.txt").write_text("not listed either")
    out = tmp_path / "idx"
    assert main(["index", "build", "--model", str(tiny_model), "--images", str(photos), "--out", str(out),
                 "--layer", "2", "--pooling", "grid", "--dim", "32", "--device", "cpu", "--quiet",
                 "--exclude", "raw", "--exclude", "airplane/*"]) == 0
    m = read_manifest(out)
    with open_index(out) as h:
        paths = [h.item(i).path for i in range(len(h))]
    assert m["item_count"] == 18 and m["skipped"] == [] and m["duplicates"] == []
    assert not any("/airplane/" in p or "@eaDir" in p or "/." in p or "/raw/" in p for p in paths)
    capsys.readouterr()
    assert main(["index", "add", "--index", str(out), "--images", str(photos), "--device", "cpu", "--quiet",
                 "--exclude", "raw/*"]) == 0
    assert "added 2 images" in capsys.readouterr().out  # the airplanes; raw/ stays out
