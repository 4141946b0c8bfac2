"""End to end: `hebbir app` on a tiny index, driven by headless Chromium through Playwright."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from appsupport import build_tiny_index

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts"
K = 6

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed at /usr/bin/chromium "
                                                     "(bash scripts/install.sh --dev installs it)"),
]
sync_api = pytest.importorskip("playwright.sync_api")
pytest.importorskip("faiss")

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_healthy(url: str, server: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"hebbir app exited with status {server.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"the page did not answer at {url} within {timeout:.0f} s")


@pytest.fixture(scope="module")
def server(tmp_path_factory, cifar_data_dir):
    """`hebbir app` on the tiny index, on a free loopback port; stopped (its whole process group) afterwards."""
    work = tmp_path_factory.mktemp("browser")
    index_root = build_tiny_index(work, cifar_data_dir)
    (work / "reports").mkdir()
    port = free_port()
    hebbir = Path(sys.executable).with_name("hebbir")
    command = [str(hebbir)] if hebbir.exists() else [sys.executable, "-m", "retrieval.cli"]
    log = open(work / "server.log", "w")
    proc = subprocess.Popen(
        command + ["app", "--index-dir", str(index_root), "--reports-dir", str(work / "reports"),
                   "--port", str(port), "--no-browser"],
        cwd=work, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url, proc)
        yield url, index_root
    finally:
        stop(proc)
        log.close()


def stop(proc: subprocess.Popen) -> None:
    """Terminate the server's process group (it started its own session), then kill it if it lingers."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 15)):
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            pass


@pytest.fixture(scope="module")
def page(server):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=60_000)
        try:
            yield browser.new_page(viewport={"width": 1400, "height": 1000})
        finally:
            browser.close()


def all_images_loaded(page) -> None:
    """Wait for the script run to end (the running indicator goes away) and every image to be decoded."""
    page.locator("[data-testid=stStatusWidget]").wait_for(state="hidden")
    page.wait_for_function("() => [...document.querySelectorAll('[role=tabpanel] img')]"
                           ".every(i => i.complete && i.naturalWidth > 0)")


def test_upload_shows_k_results_and_a_result_can_be_searched_with(server, page):
    url, index_root = server
    page.set_default_timeout(60_000)
    sync_api.expect.set_options(timeout=60_000)  # a busy CI machine can take seconds per rerun
    page.goto(url)
    slider = page.get_by_role("slider")
    slider.wait_for()
    slider.focus()
    for _ in range(10 - K):  # default k is 10
        page.keyboard.press("ArrowLeft")
    query = sorted((index_root.parent / "images" / "dog").iterdir())[0]
    page.locator("input[type=file]").set_input_files(str(query))

    search_buttons = page.get_by_role("button", name="Similar", exact=True)
    sync_api.expect(search_buttons).to_have_count(K)
    results = page.locator("[role=tabpanel]:visible [data-testid=stImage] img")
    sync_api.expect(results).to_have_count(K + 1)  # the query and its K results
    sync_api.expect(page.get_by_text("#1", exact=True)).to_be_visible()
    all_images_loaded(page)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "app_search.png"), full_page=True)

    search_buttons.nth(1).click()
    sync_api.expect(page.get_by_text("Indexed image")).to_be_visible()
    sync_api.expect(page.get_by_role("button", name="Similar", exact=True)).to_have_count(K)
    all_images_loaded(page)
    page.screenshot(path=str(ARTIFACTS / "app_search_with_result.png"), full_page=True)

    page.get_by_role("tab", name="Index").click()
    sync_api.expect(page.get_by_text("First-layer kernels")).to_be_visible()
    all_images_loaded(page)
    page.screenshot(path=str(ARTIFACTS / "app_index.png"), full_page=True)
