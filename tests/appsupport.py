"""Helpers shared by the page's tests (test_app.py, test_browser.py): a tiny real index built through the
public API, and awkward image files."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

PER_CLASS = 10  # 10 classes x 10 = 100 CIFAR test images
INDEX_NAME = "quickstart"


def build_tiny_index(work: Path, cifar_data_dir: Path) -> Path:
    """Index 100 CIFAR-10 test JPEGs (and one broken file, which is skipped) with a randomly initialised,
    saved network; return the index root.

    The images are copied into `work/images/CLASS/`, the model to `work/model.pt`, the index to
    `work/index_data/quickstart`.
    """
    import torch

    from hebb.checkpoint import save_checkpoint
    from hebb.network import build_network
    from retrieval.index import build_index

    images = work / "images"
    test_root = Path(cifar_data_dir) / "cifar10" / "test"
    classes = sorted(p.name for p in test_root.iterdir() if p.is_dir())
    for cls in classes:
        (images / cls).mkdir(parents=True, exist_ok=True)
        for src in sorted((test_root / cls).iterdir())[:PER_CLASS]:
            shutil.copy(src, images / cls / src.name)
    (images / "cat" / "zz-broken.jpg").write_bytes(b"not a jpeg")  # the build skips it, with a reason
    torch.manual_seed(0)
    net = build_network("conv6", num_classes=len(classes), rule="hpca")
    model = work / "model.pt"
    save_checkpoint(model, net, {"classes": classes, "stage": "pretrain"})
    root = work / "index_data"
    build_index(model, images, root / INDEX_NAME, layer=3, dim=32, device="cpu", progress=False)
    return root


def image_bytes(img: Image.Image, fmt: str, **save) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save)
    return buf.getvalue()


def awkward_uploads(good_jpeg: bytes) -> dict[str, bytes]:
    """Files a visitor may drop on the page that the loader must read (value: usable) ..."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8))
    frames = [Image.new("P", (32, 32), i) for i in (10, 200)]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    deep = Image.fromarray((rng.integers(0, 65535, (30, 30))).astype(np.uint16))
    return {
        "animated.gif": gif.getvalue(),
        "cmyk.jpg": image_bytes(rgb.convert("CMYK"), "JPEG"),
        "sixteen-bit.png": image_bytes(deep, "PNG"),
        "alpha.webp": image_bytes(rgb.convert("RGBA"), "WEBP"),
    }


def bad_uploads(good_jpeg: bytes) -> dict[str, bytes]:
    """... and files it must refuse with a message."""
    huge = Image.new("1", (8000, 7000))  # 56 megapixels, a few kB as PNG
    return {
        "notes.png": b"this is not an image at all\n" * 10,
        "truncated.jpg": good_jpeg[: len(good_jpeg) // 2],
        "huge.png": image_bytes(huge, "PNG"),
    }
