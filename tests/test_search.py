"""Searching: an index finds its own images first; faiss exact, IVF (exhaustive) and torch agree; CLI search."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from _retrieval_helpers import FAST, image_folder, tiny_model  # noqa: F401 (fixtures)
from hebb.errors import UserError
from retrieval.cli import main
from retrieval.index import build_index
from retrieval.search import open_index


@pytest.fixture(scope="module")
def flat_index(tiny_model, image_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("idx") / "flat"
    build_index(tiny_model, image_folder, out, device="cpu", progress=False, **FAST)
    return out


def test_every_database_image_finds_itself_first(flat_index, image_folder):
    queries = sorted(image_folder.rglob("*.jpg"))[::15]  # 20 images across the classes
    for backend in ("faiss", "torch"):
        with open_index(flat_index, backend=backend) as handle:
            results = handle.search_images([str(q) for q in queries], k=5)
        assert len(results) == len(queries)
        for q, hits in zip(queries, results):
            assert hits[0].path == str(q.resolve()), backend
            assert hits[0].score == pytest.approx(1.0, abs=1e-4)
            assert hits[0].label == q.parent.name
            assert [h.rank for h in hits] == [1, 2, 3, 4, 5]
            assert all(hits[i].score >= hits[i + 1].score - 1e-6 for i in range(4))


@pytest.fixture(scope="module")
def ivf_index(flat_index, tiny_model, image_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("idx") / "ivf"
    build_index(tiny_model, image_folder, out, factory="IVF8,Flat", device="cpu", progress=False, **FAST)
    return out


def test_all_search_paths_return_the_same_neighbours(flat_index, ivf_index):
    with open_index(flat_index, backend="faiss") as h:
        queries = np.asarray(h.vectors()[::7])
        exact = h.search_vectors(queries, k=10)
    with open_index(flat_index, backend="torch") as h:
        torch_hits = h.search_vectors(queries, k=10)
    with open_index(ivf_index, backend="faiss") as h:
        h.set_search_params(nprobe=8)  # all lists: exhaustive
        ivf_hits = h.search_vectors(queries, k=10)
    for a, b, c in zip(exact, torch_hits, ivf_hits):
        assert [x.id for x in a] == [x.id for x in b] == [x.id for x in c]
        np.testing.assert_allclose([x.score for x in a], [x.score for x in b], atol=1e-5)


def test_ivf_with_one_probe_is_approximate_but_valid(ivf_index):
    with open_index(ivf_index) as h:
        h.set_search_params(nprobe=1)
        hits = h.search_vectors(np.asarray(h.vectors()[:3]), k=5)
        assert all(row[0].score == pytest.approx(1.0, abs=1e-4) for row in hits)
        with pytest.raises(UserError, match="do not apply"):
            h.set_search_params(params="bogus=3")


def test_bad_queries_are_user_errors(flat_index, tmp_path):
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not an image")
    with open_index(flat_index) as h:
        with pytest.raises(UserError, match="junk.jpg"):
            h.search_images([str(junk)])
        with pytest.raises(UserError, match="query vectors"):
            h.search_vectors(np.zeros((1, 7), np.float32))
        with pytest.raises(UserError, match="no item"):
            h.item(10_000)
        assert h.item(0).id == 0 and len(h) == 300


def test_search_json_output(flat_index, image_folder, capsys):
    queries = sorted(image_folder.rglob("*.jpg"))[:2]
    assert main(["search", "--index", str(flat_index), "--k", "3", "--json", "--device", "cpu",
                 *map(str, queries)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert isinstance(out, list) and len(out) == 2
    for q, hits in zip(queries, out):
        assert [h["rank"] for h in hits] == [1, 2, 3]
        assert set(hits[0]) == {"rank", "id", "path", "label", "score"}
        assert hits[0]["path"] == str(q.resolve()) and hits[0]["label"] == q.parent.name


def test_cli_errors_are_one_line(flat_index, tmp_path, capsys):
    cases = [
        ["search", "--index", str(tmp_path / "nothing"), "x.jpg"],
        ["search", "--index", str(flat_index), str(tmp_path / "missing.jpg")],
        ["index", "info", "--index", str(tmp_path)],
        ["index", "build", "--model", str(tmp_path / "no.pt"), "--images", str(tmp_path), "--out",
         str(tmp_path / "x")],
    ]
    for argv in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("hebbir: error: ") and err.count("\n") == 1, err
    # the installed entry point too, in a fresh process: no traceback
    r = subprocess.run([sys.executable, "-m", "retrieval.cli", *cases[1]], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("hebbir: error: ") and "Traceback" not in r.stderr


def test_unreadable_queries_get_one_line_each_and_the_others_answer(flat_index, image_folder, tmp_path, capsys):
    from badfiles import tiff_second_page_without_width, tiff_strip_past_end

    good = sorted(image_folder.rglob("*.jpg"))[:2]
    broken = tmp_path / "strip.tif"
    broken.write_bytes(tiff_strip_past_end())
    odd = tmp_path / "pages.tif"  # its second page lacks its width: the first one is searched with
    odd.write_bytes(tiff_second_page_without_width())
    queries = [str(good[0]), str(broken), str(odd), str(tmp_path / "missing.jpg"), str(good[1])]
    argv = ["search", "--index", str(flat_index), "--k", "2", "--device", "cpu"]
    assert main([*argv, "--json", *queries]) == 2
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert [entry is None for entry in out] == [False, True, False, True, False]
    assert out[0][0]["path"] == str(good[0].resolve()) and out[4][0]["path"] == str(good[1].resolve())
    errors = [line for line in captured.err.splitlines() if line.startswith("hebbir: error: ")]
    assert len(errors) == 2 and "strip.tif: cannot decode" in errors[0] and "missing.jpg: no such file" in errors[1]
    assert "Traceback" not in captured.err
    assert main([*argv, *queries]) == 2
    table = capsys.readouterr().out
    assert str(odd) in table and str(broken) not in table and "3 queries in" in table
