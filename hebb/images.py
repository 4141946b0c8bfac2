"""The one image loader of the project.

Every path that turns a file (or uploaded bytes) into pixels goes through `load_image`: only the formats of
`FORMATS` are opened, EXIF orientation is applied, grey / palette / alpha / CMYK / 16-bit images become 8-bit
RGB, animated and multi-page images give their first frame, a per-call pixel limit guards against
decompression bombs, and any failure to read a file raises `ImageLoadError` with the path and a one-line
reason, never another exception. The loader is thread-safe: it changes no process-wide Pillow setting, and
the decoders' warnings are recorded per call (`hebb.imagenoise`) instead of printed.

`iter_image_files` lists the images of a folder, skipping `DEFAULT_EXCLUDE` and caller-given patterns.
"""

from __future__ import annotations

import errno
import fnmatch
import importlib.util
import io
import logging
import os
import re
import threading
from pathlib import Path
from typing import Iterable, Iterator, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from hebb.errors import UserError
from hebb.imagenoise import recorded_warnings

logger = logging.getLogger(__name__)

#: Largest accepted image, in pixels (width x height). 50 megapixels covers any camera photo. Pillow's own
#: limit (twice `PIL.Image.MAX_IMAGE_PIXELS`, 179 megapixels by default) still applies above it.
MAX_PIXELS = 50_000_000


def _optional(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _has_avif() -> bool:
    try:
        from PIL import features

        return bool(features.check_module("avif"))
    except (ImportError, ValueError):
        return False


#: Pillow format -> file endings, for every format the loader opens. Files are opened by content, not by
#: name, so this allow-list is what keeps the other decoders away: EPS/PS/PDF would run Ghostscript on the
#: file, and Pillow's dozens of rarely used readers (ICO, PSD, FLI, SGI, ...) are attack surface no photo
#: collection needs. Kept: the photo and web formats, TIFF (scanners, archives), and Netpbm (PPM plugin:
#: plain, well-specified, common in vision datasets). Left out: PCX (DOS-era, no photo source writes it) and
#: JPEG 2000 (rare in collections, a slow and memory-hungry decoder with a long record of CVEs). AVIF comes
#: with Pillow >= 11.3; HEIC/HEIF with the optional plugin (`pip install 'hebbir[heif]'`, pillow-heif).
FORMAT_EXTENSIONS: dict[str, tuple[str, ...]] = {
    "JPEG": (".jpg", ".jpeg", ".jpe", ".jfif"),
    "PNG": (".png", ".apng"),
    "WEBP": (".webp",),
    "BMP": (".bmp",),
    "GIF": (".gif",),
    "TIFF": (".tif", ".tiff"),
    "PPM": (".ppm", ".pgm", ".pbm", ".pnm", ".pfm"),
}
#: Formats that need more than Pillow's core, and the file endings they would add.
OPTIONAL_FORMATS: dict[str, tuple[str, ...]] = {"AVIF": (".avif",), "HEIF": (".heic", ".heif")}
if _has_avif():
    FORMAT_EXTENSIONS["AVIF"] = OPTIONAL_FORMATS["AVIF"]
if _optional("pillow_heif"):
    FORMAT_EXTENSIONS["HEIF"] = OPTIONAL_FORMATS["HEIF"]

#: The formats `load_image` opens (Pillow's names), and the file endings treated as images in folders.
FORMATS = tuple(FORMAT_EXTENSIONS)
IMAGE_EXTENSIONS = tuple(ext for exts in FORMAT_EXTENSIONS.values() for ext in exts)

#: Names never listed in folders: matched against every part of a path below the root.
DEFAULT_EXCLUDE = (
    ".*",  # hidden files and folders, among them .git, .DS_Store and macOS's AppleDouble "._*" files
    "@eaDir",  # Synology's thumbnail folders
    "__MACOSX",  # resource forks in zip archives made on a Mac
    "Thumbs.db",
)

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


_plugins_lock = threading.Lock()
_plugins_ready = False


def _register_plugins() -> None:
    """Register the optional format plugins that are installed, once, on first use."""
    global _plugins_ready
    if _plugins_ready:
        return
    with _plugins_lock:
        if not _plugins_ready and "HEIF" in FORMAT_EXTENSIONS:
            try:
                from pillow_heif import register_heif_opener

                register_heif_opener()
            except Exception as exc:  # a broken optional plugin must not break the other formats
                logger.warning("HEIC/HEIF disabled: pillow_heif failed to load (%s)", exc)
        _plugins_ready = True


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

    Raises `ImageLoadError` for a missing, empty, non-image, truncated or corrupt file, a format outside
    `FORMATS`, or one larger than `max_pixels` (refused from its header, before decoding). Safe to call from
    several threads at once.
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
    _register_plugins()
    fmt = None
    with recorded_warnings() as noted:
        try:
            with Image.open(src, formats=FORMATS) as img:  # reads the header only
                fmt = img.format
                width, height = img.size
                if width * height > max_pixels:
                    raise ImageLoadError(name, f"too large: {width}x{height} = {width * height:,} pixels "
                                               f"(limit {max_pixels:,})")
                img.load()  # the first frame or page: nothing walks the others
                return _to_rgb(ImageOps.exif_transpose(img))
        except ImageLoadError:
            raise
        except Exception as exc:  # any failure to decode is this file's problem, whatever Pillow raised
            reason = _reason(exc, fmt, max_pixels)
            logger.debug("%s: %s", name, reason, exc_info=True)
        finally:
            if noted:
                logger.debug("%s: decoder warnings: %s", name, "; ".join(noted))
    if noted:  # what the decoder warned about before failing often says more than the failure itself
        more = f"; {len(noted) - 1} more" if len(noted) > 1 else ""
        reason += f" (decoder: {_shorten(noted[0])}{more})"
    raise ImageLoadError(name, reason)


_BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")
_DECODER_ERROR = re.compile(r"decoder error (-?\d+)")


def _shorten(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _reason(exc: Exception, fmt: str | None, max_pixels: int) -> str:
    """A one-line reason, for a person, for the exception Pillow raised on a file of format `fmt`."""
    message = " ".join(str(exc).split())
    if isinstance(exc, Image.DecompressionBombError):
        found = _BOMB_PIXELS.search(message)
        size = f"{int(found.group(1)):,} pixels" if found else "more pixels than Pillow allows"
        return f"too large: {size} (limit {max_pixels:,})"
    if isinstance(exc, UnidentifiedImageError):
        return f"not an image file in an accepted format ({', '.join(FORMATS)})"
    if isinstance(exc, MemoryError):
        return "cannot decode: not enough memory for its declared size"
    kind = f"{fmt} " if fmt else ""
    if "truncated" in message.lower() or isinstance(exc, EOFError):
        return "cannot decode: truncated or corrupt image data"
    if (isinstance(exc, OSError) and exc.errno == errno.EINVAL) or "negative seek" in message \
            or "buffer is not large enough" in message:
        return f"cannot decode: corrupt {kind}file (its header points past the end of the data)"
    code = _DECODER_ERROR.search(message)
    if code:
        return f"cannot decode: corrupt {kind}image data (the decoder stopped with error {code.group(1)})"
    if isinstance(exc, (OSError, SyntaxError, ValueError)) and message:
        return f"cannot decode: {message}"
    # Anything else is Pillow tripping over malformed data (TypeError, KeyError, struct.error, ...).
    return f"cannot decode: malformed {kind}file ({type(exc).__name__}: {_shorten(message) or 'no detail'})"


def _excluded(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def iter_files(root: Union[str, os.PathLike], exclude: Iterable[str] = ()) -> Iterator[Path]:
    """Every file under `root`, sorted, except those matching `DEFAULT_EXCLUDE` or `exclude`.

    A pattern (shell-style: `*`, `?`, `[abc]`) without a slash is matched against each file and folder name
    (a matching folder is not entered); one with a slash against the path relative to `root`, e.g.
    `"raw/*"` or `"*/thumbs/*"`.
    """
    root = Path(root)
    patterns = tuple(DEFAULT_EXCLUDE) + tuple(exclude)
    names = [p for p in patterns if "/" not in p]
    paths = [p.strip("/") for p in patterns if "/" in p]
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root)
        dirnames[:] = sorted(d for d in dirnames
                             if not _excluded(d, names) and not _excluded((rel_dir / d).as_posix(), paths))
        for f in filenames:
            if not _excluded(f, names) and not _excluded((rel_dir / f).as_posix(), paths):
                found.append(Path(dirpath) / f)
    return iter(sorted(found))


def is_image_name(name: str) -> bool:
    """Whether a file name has one of the `IMAGE_EXTENSIONS` (any case)."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


def iter_image_files(root: Union[str, os.PathLike], exclude: Iterable[str] = ()) -> Iterator[Path]:
    """All files under `root` with an image ending, sorted; `exclude` as in `iter_files`."""
    return (p for p in iter_files(root, exclude) if is_image_name(p.name))


def image_to_array(img: Image.Image, size: int | None = None) -> np.ndarray:
    """An RGB PIL image as a uint8 (3, H, W) array, resized to size x size (bicubic, antialiased) if given."""
    if size is not None and img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=3.0)
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1))
