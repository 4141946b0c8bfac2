"""The page (app.py) driven by Streamlit's AppTest on a tiny real index: guidance without an index, results
for uploads, messages for bad files, searching with a result, the index and evaluation tabs."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from appsupport import awkward_uploads, bad_uploads, build_tiny_index, image_bytes

pytest.importorskip("streamlit")
pytest.importorskip("faiss")
from streamlit.testing.v1 import AppTest  # noqa: E402

APP = Path(__file__).resolve().parent.parent / "app.py"
RESULT = re.compile(r"^\*\*#(\d+)\*\* · `(-?[0-9.]+)`")
TIMEOUT = 120  # first run imports torch and opens the index on a busy 2-core machine


@pytest.fixture(scope="module", autouse=True)
def _restore_thread_counts():
    """The page runs torch and faiss on one thread; the rest of the suite must get its threads back."""
    import faiss
    import torch

    threads, omp = torch.get_num_threads(), faiss.omp_get_max_threads()
    yield
    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(omp)


@pytest.fixture(scope="module")
def index_root(tmp_path_factory, cifar_data_dir) -> Path:
    return build_tiny_index(tmp_path_factory.mktemp("app"), cifar_data_dir)


@pytest.fixture
def page(index_root, tmp_path, monkeypatch):
    monkeypatch.setenv("HEBBIR_INDEX_DIR", str(index_root))
    monkeypatch.setenv("HEBBIR_REPORTS_DIR", str(tmp_path / "no-reports"))
    return AppTest.from_file(str(APP), default_timeout=TIMEOUT)


def indexed_jpeg(index_root: Path) -> tuple[str, bytes]:
    path = sorted((index_root.parent / "images" / "cat").iterdir())[0]
    return path.name, path.read_bytes()


def results(at) -> list[tuple[int, float]]:
    """(rank, score) of every result card on the page, in page order."""
    found = []
    for md in at.markdown:
        m = RESULT.match(md.value)
        if m:
            found.append((int(m.group(1)), float(m.group(2))))
    return found


def upload(at, files: dict[str, bytes] | list[tuple[str, bytes]]):
    items = files.items() if isinstance(files, dict) else files
    at.file_uploader(key="uploads").set_value([(name, data, "application/octet-stream") for name, data in items])
    return at.run()


def test_without_an_index_the_page_says_how_to_build_one(tmp_path, monkeypatch):
    monkeypatch.setenv("HEBBIR_INDEX_DIR", str(tmp_path / "empty"))
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    assert not at.exception
    guidance = " ".join(info.value for info in at.info)
    assert "No index yet" in guidance
    assert "hebbir quickstart" in guidance and "hebbir index build" in guidance


def test_an_upload_gets_k_ranked_results_itself_first(page, index_root):
    at = page.run()
    assert not at.exception
    assert at.selectbox(key="index_name").value == "quickstart"
    at.slider(key="k").set_value(7)
    name, data = indexed_jpeg(index_root)
    at = upload(at, [(name, data)])
    assert not at.exception and not at.error
    found = results(at)
    assert [rank for rank, _ in found] == list(range(1, 8))
    scores = [score for _, score in found]
    assert scores == sorted(scores, reverse=True)
    assert scores[0] == pytest.approx(1.0, abs=1e-3)  # the query is in the index: it comes back first
    assert any(name in caption.value for caption in at.caption)
    other_visitor = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    assert results(other_visitor) == [], "a second visitor must not see the first one's results"


def test_bad_files_get_a_message_and_awkward_ones_results(page, index_root):
    _, good = indexed_jpeg(index_root)
    at = page.run()
    at.slider(key="k").set_value(3)
    awkward, bad = awkward_uploads(good), bad_uploads(good)
    at = upload(at, {**awkward, **bad})
    assert not at.exception
    errors = [e.value for e in at.error]
    assert len(errors) == len(bad)
    for name, fragment in (("notes.png", "not an image"), ("truncated.jpg", "corrupt"), ("huge.png", "too large")):
        assert any(name in e and fragment in e for e in errors), (name, errors)
    assert len(results(at)) == 3 * len(awkward)


def test_search_with_a_result_makes_it_the_query(page, index_root):
    at = page.run()
    at.slider(key="k").set_value(5)
    at = upload(at, [indexed_jpeg(index_root)])
    second = [b for b in at.button if b.key and b.key.startswith("q0-")][1]
    clicked_id = int(second.key.split("-")[1])
    at = second.click().run()
    assert not at.exception
    assert any(m.value == "**Indexed image**" for m in at.markdown)
    assert [rank for rank, _ in results(at)] == [1, 2, 3, 4, 5]
    keys = [b.key for b in at.button if b.key and b.key.startswith("pinned-")]
    assert len(keys) == 5 and f"pinned-{clicked_id}" not in keys  # the query itself is left out
    at = next(b for b in at.button if b.label == "Back to my uploads").click().run()
    assert not any(m.value == "**Indexed image**" for m in at.markdown)
    assert len(results(at)) == 5


def test_index_tab_describes_the_index(page):
    at = page.run()
    facts = at.tabs[2].table[0].value
    rows = dict(zip(facts.iloc[:, 0], facts.iloc[:, 1]))
    assert rows["items"] == "100" and at.tabs[2].metric[0].value == "100"
    assert rows["feature layer"] == "3" and rows["dimension"] == "32"
    assert rows["rule"] == "hpca"
    assert len(at.tabs[2].get("image")) == 1  # the kernel mosaic
    skipped = at.tabs[2].dataframe[0].value
    assert len(skipped) == 1 and skipped["file"][0].endswith("zz-broken.jpg") and skipped["reason"][0]


def test_evaluation_tab_shows_saved_reports(page, tmp_path, monkeypatch):
    report = tmp_path / "reports" / "tiny"
    report.mkdir(parents=True)
    (report / "summary.md").write_text("# Tiny sweep\n\n| method | mAP |\n|---|---|\n| hpca | 0.25 |\n"
                                       "\n![P@k](p_at_k.png)\n")
    Image.new("RGB", (60, 40), "white").save(report / "p_at_k.png")
    monkeypatch.setenv("HEBBIR_REPORTS_DIR", str(tmp_path / "reports"))
    at = page.run()
    tab = at.tabs[1]
    assert any("| hpca | 0.25 |" in m.value for m in tab.markdown)
    assert not any("![" in m.value for m in tab.markdown)  # local image links are shown as images instead
    assert len(tab.get("image")) == 1


def test_a_broken_index_gets_a_message_not_a_traceback(tmp_path, monkeypatch):
    broken = tmp_path / "indexes" / "quickstart"
    broken.mkdir(parents=True)
    (broken / "manifest.json").write_text("{ half a manifest")
    monkeypatch.setenv("HEBBIR_INDEX_DIR", str(tmp_path / "indexes"))
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    assert not at.exception
    assert any("Cannot open index" in e.value and "manifest" in e.value for e in at.error)


def test_indexes_are_listed_quickstart_first(tmp_path):
    from retrieval.appkit import list_indexes

    for name in ("zebra", "quickstart", "alpha", "not-an-index"):
        (tmp_path / name).mkdir()
        if name != "not-an-index":
            (tmp_path / name / "manifest.json").write_text("{}")
    assert list_indexes(tmp_path) == ["quickstart", "alpha", "zebra"]
    assert list_indexes(tmp_path / "missing") == []


def test_uploads_over_the_byte_limit_are_refused_unread():
    from hebb.images import ImageLoadError
    from retrieval.appkit import read_upload

    png = image_bytes(Image.new("RGB", (600, 600), "red"), "PNG")
    assert read_upload("ok.png", png).image.size == (600, 600)
    with pytest.raises(ImageLoadError, match="too large"):
        read_upload("big.png", png + b"\0" * (2 << 20), max_bytes=1 << 20)


def test_kernel_mosaic_normalises_each_kernel_and_enlarges_it():
    import torch

    from retrieval.appkit import kernel_mosaic

    kernels = torch.randn(96, 3, 5, 5)
    kernels[1] = 7.0  # a constant kernel must not turn into NaN
    kernels[2] *= 1000  # nor drown the others: each one is scaled on its own
    mosaic = kernel_mosaic(kernels, scale=4, columns=16, gap=1)
    assert mosaic.dtype == np.uint8 and mosaic.shape == (6 * 21 + 1, 16 * 21 + 1, 3)
    for i in (0, 2, 50):
        r, c = divmod(i, 16)
        tile = mosaic[1 + r * 21:1 + r * 21 + 20, 1 + c * 21:1 + c * 21 + 20]
        assert tile.min() == 0 and tile.max() == 255


def test_hebbir_app_binds_loopback_and_caps_uploads(tmp_path):
    from retrieval.cli import build_parser, main
    from retrieval.commands.app import app_path, streamlit_command

    assert app_path() == APP
    args = build_parser().parse_args(["app", "--port", "8765", "--no-browser"])
    command = streamlit_command(args)
    flags = dict(zip(command[5::2], command[6::2]))
    assert command[3:5] == ["run", str(APP)]
    assert flags["--server.address"] == "127.0.0.1" and flags["--server.port"] == "8765"
    assert flags["--server.maxUploadSize"] == "20" and flags["--server.headless"] == "true"
    assert main(["app", "--index-dir", str(tmp_path / "nowhere")]) == 2


def test_the_page_applies_the_server_upload_cap(page):
    from streamlit import config

    noisy = np.random.default_rng(0).integers(0, 255, (900, 900, 3), dtype=np.uint8)
    png = image_bytes(Image.fromarray(noisy), "PNG")  # about 2.4 MB, incompressible
    saved = config.get_option("server.maxUploadSize")
    config.set_option("server.maxUploadSize", 1)  # what `hebbir app --max-upload-mb 1` passes
    try:
        at = upload(page.run(), [("photo.png", png)])
    finally:
        config.set_option("server.maxUploadSize", saved)
    assert not at.exception
    assert any("photo.png" in e.value and "too large" in e.value for e in at.error)
    assert results(at) == []


def test_files_that_lie_get_a_message_or_their_first_page(page):
    from badfiles import tiff_second_page_without_width, tiff_strip_past_end

    at = page.run()
    at.slider(key="k").set_value(2)
    at = upload(at, {"pages.tif": tiff_second_page_without_width(), "strip.tif": tiff_strip_past_end()})
    assert not at.exception
    assert [e.value for e in at.error] == ["strip.tif: cannot decode: corrupt TIFF image data (the decoder "
                                           "stopped with error -2)"]
    assert len(results(at)) == 2


def test_an_unexpected_failure_shows_a_friendly_message_and_goes_to_the_log(page, monkeypatch, caplog):
    from retrieval import appkit

    def explode(name, data, **kwargs):
        raise RuntimeError("/srv/secret/site-packages/PIL/Image.py exploded")

    monkeypatch.setattr(appkit, "read_upload", explode)
    at = upload(page.run(), {"unlucky.png": image_bytes(Image.new("RGB", (9, 7), "teal"), "PNG")})
    assert not at.exception
    shown = [e.value for e in at.error]
    assert len(shown) == 1 and shown[0].startswith("unlucky.png: Something went wrong") and "/srv" not in shown[0]
    logged = [r for r in caplog.records if r.name == "hebbir.app" and r.exc_info]
    assert logged and "exploded" in str(logged[0].exc_info[1])


def test_visitors_never_see_error_details(tmp_path):
    import tomllib

    from retrieval.cli import build_parser
    from retrieval.commands.app import streamlit_command

    command = streamlit_command(build_parser().parse_args(["app"]))
    assert command[command.index("--client.showErrorDetails") + 1] == "none"
    config = tomllib.loads((APP.parent / ".streamlit" / "config.toml").read_text())
    assert config["client"]["showErrorDetails"] == "none"


def test_the_page_uses_retrievals_api_only():
    import ast

    tree = ast.parse(APP.read_text())
    modules = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    modules += [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module]
    assert not [m for m in modules if m == "hebb" or m.startswith("hebb.")], modules


def test_evaluation_tab_opens_on_the_main_report_and_labels_the_others(tmp_path):
    import os

    from retrieval import appkit

    for name, age in (("cifar10", 300), ("cifar10-cpu-smoke", 100), ("cifar10-cpu-1pct", 0), ("unseen", 400)):
        (tmp_path / name).mkdir()
        title = "Transfer evaluation: cifar10" if name == "unseen" else name
        (tmp_path / name / "summary.md").write_text(f"# {title}\n")
        os.utime(tmp_path / name / "summary.md", (1e9 - age, 1e9 - age))
    reports = appkit.list_reports(tmp_path)
    assert [r.name for r in reports] == ["cifar10", "unseen", "cifar10-cpu-1pct", "cifar10-cpu-smoke"]
    assert [r.kind for r in reports] == ["main", "transfer", "partial", "smoke"]
    assert "main report" in reports[0].title and "never saw" in reports[1].title and "smoke run" in reports[3].title


def test_duplicates_tab_groups_identical_and_similar_images(page):
    at = page.run()
    tab = at.tabs[3]
    assert any("Identical files" in c.value for c in tab.caption)  # nothing computed until asked
    tab.toggle(key="dup_on").set_value(True)
    at = at.run()
    assert not at.exception
    summary = next(m.value for m in at.tabs[3].markdown if "group(s) of identical files" in m.value)
    exact, near = (int(v) for v in re.findall(r"\*\*(\d+)\*\* group", summary))
    assert near >= 0 and exact >= 0
    at.slider(key="dup_threshold").set_value(0.8)
    at = at.run()
    summary = next(m.value for m in at.tabs[3].markdown if "group(s) of identical files" in m.value)
    assert int(re.findall(r"\*\*(\d+)\*\* group", summary)[1]) >= near  # a lower threshold joins more
    assert len(at.tabs[3].get("image")) > 0
