"""Staged writes of an index directory: a temporary folder that takes the index's place, or leaves no trace."""

from __future__ import annotations

import json
import os

import pytest

from retrieval.index.directory import OWNER_FILE, backup_path, staged


def _index(path, text: str):
    path.mkdir()
    (path / "manifest.json").write_text(text)
    return path


def test_a_finished_staged_write_replaces_the_index(tmp_path):
    out = _index(tmp_path / "idx", "old")
    with staged(out, "adding") as tmp:
        assert tmp.parent == out.parent and tmp.name.startswith(".idx.adding-")
        assert json.loads((tmp / OWNER_FILE).read_text())["pid"] == os.getpid()
        (tmp / "manifest.json").write_text("new")
        assert (out / "manifest.json").read_text() == "old"  # untouched until the block ends
    assert (out / "manifest.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]  # no temporary folder, no backup
    assert not (out / OWNER_FILE).exists() and not backup_path(out).exists()


def test_a_first_staged_write_creates_the_index(tmp_path):
    with staged(tmp_path / "idx", "building") as tmp:
        (tmp / "manifest.json").write_text("new")
    assert (tmp_path / "idx" / "manifest.json").read_text() == "new"


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_a_failed_staged_write_leaves_the_index_and_no_trace(tmp_path, error):
    out = _index(tmp_path / "idx", "old")
    with pytest.raises(error):
        with staged(out, "syncing") as tmp:
            (tmp / "manifest.json").write_text("half")
            raise error
    assert (out / "manifest.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]


def test_an_unknown_kind_of_write_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown kind"):
        with staged(tmp_path / "idx", "painting"):
            pass
    assert list(tmp_path.iterdir()) == []
