"""The one image loader of the project.

Every path that turns a file (or uploaded bytes) into pixels goes through `load_image`: EXIF orientation is
applied, grey / palette / alpha / CMYK / 16-bit images become 8-bit RGB, animated images give their first
frame, a pixel-count limit guards against decompression bombs, and anything unreadable raises
`ImageLoadError` with the path and a one-line reason instead of an arbitrary exception.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Iterator, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from hebb.errors import UserError

#: Largest accepted image, in pixels (width x height). 50 megapixels covers any camera photo.
MAX_PIXELS = 50_000_000

#: File endings treated as images when scanning folders.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")

Source = Union[str, os.PathLike, bytes, io.IOBase]


class ImageLoadError(UserError):
    """An image that cannot be used; `path` and `reason` say which and why."""

    def __init__(self, path: str, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def _describe(src: Source) -> str:
    if isinstance(src, (bytes, bytearray)):
        return "<bytes>"
    if isinstance(src, io.IOBase):
        return getattr(src, "name", "<stream>")
    return str(src)


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB, compositing transparency onto white."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if arr.max() > 255 or img.mode.startswith("I;16") else 255.0
        arr8 = np.clip(np.round(arr * (255.0 / hi)), 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, mode="L").convert("RGB")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr8 = np.zeros(arr.shape, np.uint8) if hi <= lo else ((arr - lo) / (hi - lo) * 255).astype(np.uint8)
        return Image.fromarray(arr8, mode="L").convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("LA", "PA", "La"):
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "RGBa"):
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img, mask=img.getchannel("A"))
        return background
    if img.mode != "RGB":
        img = img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV
    return img


def load_image(src: Source, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open `src` (a path, bytes or a binary stream) as an 8-bit RGB PIL image, fully decoded.

    Raises `ImageLoadError` for a missing, non-image, truncated or corrupt file, or one larger than
    `max_pixels`.
    """
    name = _describe(src)
    if isinstance(src, (bytes, bytearray)):
        src = io.BytesIO(src)
    elif not isinstance(src, io.IOBase):
        path = Path(src)
        if not path.exists():
            raise ImageLoadError(name, "no such file")
        if not path.is_file():
            raise ImageLoadError(name, "not a regular file")
        if path.stat().st_size == 0:
            raise ImageLoadError(name, "empty file")
    try:
        with warnings.catch_warnings():
            # PIL warns (and past twice the limit raises) on big images; we apply our own limit first.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            saved_limit = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
            try:
                img = Image.open(src)
            finally:
                Image.MAX_IMAGE_PIXELS = saved_limit
            width, height = img.size
            if width * height > max_pixels:
                raise ImageLoadError(
                    name, f"too large: {width}x{height} = {width * height:,} pixels (limit {max_pixels:,})"
                )
            if getattr(img, "n_frames", 1) > 1:
                img.seek(0)
            img.load()
            img = ImageOps.exif_transpose(img)
            return _to_rgb(img)
    except ImageLoadError:
        raise
    except UnidentifiedImageError:
        raise ImageLoadError(name, "not an image file (unrecognised format)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        reason = str(exc).strip() or type(exc).__name__
        if "truncated" in reason.lower():
            reason = "truncated or corrupt image data"
        raise ImageLoadError(name, f"cannot decode: {reason}") from None


def iter_image_files(root: Union[str, os.PathLike]) -> Iterator[Path]:
    """All files under `root` with an image ending, sorted, hidden files and folders skipped."""
    root = Path(root)
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in filenames:
            if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS):
                found.append(Path(dirpath) / f)
    return iter(sorted(found))


def image_to_array(img: Image.Image, size: int | None = None) -> np.ndarray:
    """An RGB PIL image as a uint8 (3, H, W) array, resized to size x size (bicubic, antialiased) if given."""
    if size is not None and img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=3.0)
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1))
