"""hebbir's page: search an index by uploaded images, browse the evaluation reports, inspect the index.

Start it with `hebbir app` (or `streamlit run app.py`). The model and index are opened once per process
(`st.cache_resource`) and only read afterwards; everything a visitor does (uploads, the result being searched
with) lives in that visitor's `st.session_state`, so several people never see each other's queries.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import streamlit as st

from retrieval import appkit
from retrieval.appkit import UserError, load_image

PINNED = "pinned_item"  # session key: (index name, item id) of the indexed image being searched with
#: Shown instead of an unexpected error: its details (paths, trace) are for the server log, not visitors.
FAILED = "Something went wrong while searching with this image. The details are in the server's log."
log = logging.getLogger("hebbir.app")


@st.cache_resource(show_spinner="Loading the model and the index…", max_entries=4)
def open_handle(index_dir: str, version: float):
    """The opened index (model included), shared read-only by all sessions; `version` reloads a rebuilt one."""
    from retrieval.search import open_index

    appkit.one_thread_per_query()
    return open_index(index_dir)


@st.cache_data(show_spinner=False, max_entries=256, ttl=3600)
def search_upload(index_dir: str, version: float, name: str, data: bytes, k: int, max_mb: int):
    """(query thumbnail, hits, error message) for uploaded bytes; keyed by content, so nothing leaks across
    visitors: the same bytes give the same answer to anyone."""
    try:
        query = appkit.read_upload(name, data, max_bytes=max_mb << 20)
        hits = open_handle(index_dir, version).search_images([query.image], k=k)[0]
    except UserError as exc:
        return None, [], str(exc)
    return np.asarray(appkit.thumbnail(query.image)), hits, None


@st.cache_data(show_spinner=False, max_entries=256, ttl=3600)
def search_item(index_dir: str, version: float, item_id: int, k: int):
    """(query thumbnail, caption, hits, error message) searching with an indexed image, itself left out."""
    handle = open_handle(index_dir, version)
    try:
        item = handle.item(item_id)
        image = load_image(item.path)
        hits = handle.search_images([image], k=k + 1)[0]
    except UserError as exc:
        return None, "", [], str(exc)
    hits = [replace(hit, rank=rank) for rank, hit in
            enumerate((hit for hit in hits if hit.id != item_id), start=1)][:k]
    caption = f"{Path(item.path).name}" + (f" · {item.label}" if item.label else "")
    return np.asarray(appkit.thumbnail(image)), caption, hits, None


@st.cache_data(show_spinner=False, max_entries=4096)
def result_thumbnail(path: str):
    """Thumbnail of an indexed image, or None when its file is gone or unreadable."""
    try:
        return np.asarray(appkit.thumbnail(load_image(path)))
    except UserError:
        return None
    except Exception:
        log.exception("thumbnail of %s failed", path)
        return None


@st.cache_data(show_spinner=False, max_entries=8)
def kernel_image(index_dir: str, version: float) -> np.ndarray:
    return appkit.kernel_mosaic(open_handle(index_dir, version).model.first_layer_kernels(), columns=12)


def pin(index_name: str, item_id: int) -> None:
    st.session_state[PINNED] = (index_name, item_id)


def unpin() -> None:
    st.session_state.pop(PINNED, None)


def no_index_message(root: Path) -> None:
    st.info(
        f"**No index yet** in `{root}`.  \n"
        "Build the default one (CIFAR-10 and a Hebbian model, end to end) with\n\n"
        "    hebbir quickstart\n\n"
        "or index your own images with a trained model:\n\n"
        f"    hebbir index build --model CKPT --images DIR --out {root}/NAME\n\n"
        f"then reload this page. (Another folder: `hebbir app --index-dir DIR` or `${appkit.INDEX_DIR_ENV}`.)",
        icon=":material/info:",
    )


def show_hits(hits, index_name: str, key: str) -> None:
    """The result grid: thumbnail, rank, score, label, file name, and a button to search with it."""
    grid = st.grid("auto", min_column_width=120, gap="small", border=True)
    for hit in hits:
        with grid.cell():
            thumb = result_thumbnail(hit.path)
            if thumb is None:
                st.caption(":material/broken_image: file missing")
            else:
                st.image(thumb, width="stretch")
            st.markdown(f"**#{hit.rank}** · `{hit.score:.3f}`")
            st.caption(f"**{hit.label}** · {Path(hit.path).name}" if hit.label else Path(hit.path).name)
            st.button("Similar", key=f"{key}-{hit.id}", icon=":material/search:", width="stretch",
                      on_click=pin, args=(index_name, hit.id), help="search with this image")


def show_query(thumb, title: str, caption: str, hits, error: str | None, index_name: str, key: str) -> None:
    with st.container(border=True):
        left, right = st.columns([1, 5], gap="medium")
        with left:
            st.markdown(f"**{title}**")
            if thumb is not None:
                st.image(thumb, width="stretch")
            st.caption(caption)
        with right:
            if error:
                st.error(error, icon=":material/error:")
            elif not hits:
                st.warning("The index is empty: no results.")
            else:
                show_hits(hits, index_name, key)


def search_tab(index_dir: Path, version: float, index_name: str, k: int) -> None:
    max_mb = int(st.get_option("server.maxUploadSize"))  # hebbir app --max-upload-mb, or config.toml
    uploads = st.file_uploader(
        "Query images", type=appkit.UPLOAD_TYPES, accept_multiple_files=True, key="uploads",
        on_change=unpin, help=f"{appkit.UPLOAD_HELP}, up to {max_mb} MB each.")

    pinned = st.session_state.get(PINNED)
    if pinned and pinned[0] == index_name:
        try:
            thumb, caption, hits, error = search_item(str(index_dir), version, pinned[1], k)
        except Exception:  # not cached: a failure is retried on the next run
            log.exception("search with indexed item %s of %s failed", pinned[1], index_dir)
            thumb, caption, hits, error = None, "", [], FAILED
        st.button("Back to my uploads", icon=":material/arrow_back:", on_click=unpin)
        show_query(thumb, "Indexed image", caption, hits, error, index_name, "pinned")
        return

    if not uploads:
        st.caption("Upload one or more images to find the most similar ones in the index. "
                   "Click **Search** under a result to search with it.")
        return
    for n, upload in enumerate(uploads):
        try:
            thumb, hits, error = search_upload(str(index_dir), version, upload.name, upload.getvalue(), k, max_mb)
        except Exception:  # not cached: a failure is retried on the next run
            log.exception("search with upload %r failed", upload.name)
            thumb, hits, error = None, [], f"{upload.name}: {FAILED}"
        show_query(thumb, "Query", upload.name, hits, error, index_name, f"q{n}")


def index_tab(handle, index_dir: Path, version: float) -> None:
    manifest = handle.manifest
    network = handle.model.config() if hasattr(handle.model, "config") else {}
    facts = appkit.index_facts(manifest, len(handle), network)
    skipped = appkit.skipped_rows(manifest)
    headline = st.columns(4)
    headline[0].metric("Images indexed", f"{len(handle):,}", border=True)
    headline[1].metric("Vector size", manifest.get("dimension", "?"), border=True)
    headline[2].metric("Feature layer", manifest.get("layer", "?"), border=True)
    headline[3].metric("Skipped files", len(skipped), border=True)

    details, kernels = st.columns([3, 2], gap="large")
    with details:
        st.subheader("Details")
        st.table({"": [name for name, _ in facts], "value": [value for _, value in facts]},
                 hide_index=True, hide_header=True)
    with kernels:
        st.subheader("First-layer kernels")
        try:
            st.image(kernel_image(str(index_dir), version), width="stretch",
                     caption="the learned colour kernels of the first layer, each min-max normalised "
                             "(oriented edges and colour blobs once learned; noise when random)")
        except (AttributeError, ValueError) as exc:
            st.caption(f"Kernels not available for this model ({exc}).")
    if skipped:
        st.subheader("Skipped files")
        st.dataframe(skipped, hide_index=True, width="stretch")


@st.cache_data(show_spinner="Comparing every pair of images…", max_entries=8)
def duplicate_groups(index_dir: str, version: float, threshold: float) -> dict:
    from retrieval.index import find_duplicates

    return find_duplicates(index_dir, threshold=threshold)


def duplicates_tab(index_dir: Path, version: float, max_groups: int = 30) -> None:
    from retrieval.index.duplicates import DEFAULT_THRESHOLD

    threshold = st.slider("Near-duplicate threshold (cosine)", 0.80, 1.0, DEFAULT_THRESHOLD, 0.005,
                          key="dup_threshold", help="images whose features are at least this similar are grouped")
    if not st.toggle("Find duplicates", key="dup_on", help="compares every pair of indexed images (seconds for "
                     "tens of thousands)"):
        st.caption("Identical files (same bytes) were found when the index was built; near duplicates are "
                   "grouped by the cosine of their features.")
        return
    try:
        groups = duplicate_groups(str(index_dir), version, float(threshold))
    except UserError as exc:
        st.error(str(exc), icon=":material/error:")
        return
    except Exception:
        log.exception("duplicates of %s failed", index_dir)
        st.error("Something went wrong while looking for duplicates. The details are in the server's log.",
                 icon=":material/error:")
        return
    exact, near = groups["exact"], groups["near"]
    st.markdown(f"**{len(exact)}** group(s) of identical files, **{len(near)}** group(s) of near duplicates "
                f"at cosine ≥ {threshold:.3f}" + (f" (the first {max_groups} shown)" if len(near) > max_groups else ""))
    for paths in exact[:max_groups]:
        with st.container(border=True):
            st.caption(f"identical files · {len(paths)}")
            show_paths(paths)
    for group in near[:max_groups]:
        with st.container(border=True):
            st.caption(f"near duplicates · {len(group['items'])} images · lowest cosine {group['min_score']:.3f}")
            show_paths([item["path"] for item in group["items"]])


def show_paths(paths: list[str]) -> None:
    grid = st.grid("auto", min_column_width=110, gap="small")
    for path in paths[:12]:
        with grid.cell():
            thumb = result_thumbnail(path)
            if thumb is None:
                st.caption(":material/broken_image: file missing")
            else:
                st.image(thumb, width="stretch")
            st.caption(Path(path).name)


def evaluation_tab(root: Path) -> None:
    reports = appkit.list_reports(root)
    if not reports:
        st.info(f"No evaluation reports in `{root}` yet. Make one with, for example,\n\n"
                "    hebbir evaluate --dataset cifar10 --methods hpca,sgd --regimes 1,10 --seeds 1 "
                f"--out {root}/first", icon=":material/info:")
        return
    for n, report in enumerate(reports):
        with st.expander(report.title, expanded=n == 0, icon=":material/analytics:"):
            st.markdown(report.summary)
            plots = st.grid(2, gap="medium")
            for plot in report.plots:
                plots.image(str(plot), caption=plot.stem.replace("_", " "))


def main() -> None:
    st.set_page_config(page_title="hebbir · image search", page_icon=":material/image_search:", layout="wide")
    root = appkit.index_root()
    names = appkit.list_indexes(root)

    with st.sidebar:
        st.title("hebbir")
        st.caption("Image retrieval on features learned with fast Hebbian rules and few labels.")
        index_name = st.selectbox("Index", names, index=0 if names else None, key="index_name",
                                  placeholder="no index yet", on_change=unpin, disabled=not names)
        k = st.slider("Results per query (k)", 1, 50, 10, key="k")
        st.caption(f"Indexes in `{root}`")

    search, evaluation, about, dups = st.tabs([":material/search: Search", ":material/analytics: Evaluation",
                                               ":material/dataset: Index", ":material/content_copy: Duplicates"])
    with evaluation:  # first: it needs no model, so it shows while the index loads
        evaluation_tab(appkit.reports_root())
    handle = None
    with search:
        if not names:
            no_index_message(root)
        else:
            index_dir = root / index_name
            version = appkit.index_version(index_dir)
            try:
                handle = open_handle(str(index_dir), version)
            except UserError as exc:
                st.error(f"Cannot open index **{index_name}**: {exc}", icon=":material/error:")
            else:
                search_tab(index_dir, version, index_name, k)
    with about:
        if handle is not None:
            index_tab(handle, index_dir, version)
        elif not names:
            no_index_message(root)
        else:
            st.caption("No index open.")
    with dups:
        if handle is not None:
            duplicates_tab(index_dir, version)
        else:
            st.caption("No index open.")


main()
