"""A corpus of lying, broken and awkward image files, generated in the tests themselves (nothing copied in).

`bad_files()` are files the loader must refuse with an `ImageLoadError` (name -> (bytes, reason fragment));
`good_files()` are awkward but valid ones it must decode (name -> bytes). Every file is a few kB at most and
built deterministically, from PIL or from raw bytes where PIL would refuse to write the lie.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

#: Declared side of the PNG bomb: 400 megapixels, past twice Pillow's own default limit.
BOMB_SIDE = 20_000


def encode(img: Image.Image, fmt: str, **save) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save)
    return buf.getvalue()


def gradient(width: int = 48, height: int = 40) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.uint8)
    y = np.linspace(0, 255, height, dtype=np.uint8)
    r, g = np.broadcast_arrays(x[None, :], y[:, None])
    return Image.fromarray(np.ascontiguousarray(np.stack([r, g, np.full_like(r, 128)], axis=-1)), "RGB")


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(side: int = BOMB_SIDE) -> bytes:
    """A valid-looking 1-bit PNG declaring side x side pixels whose IDAT is a few hundred bytes of zeros."""
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    row = b"\0" * (1 + (side + 7) // 8)
    comp = zlib.compressobj(9)
    idat = comp.compress(row * 64) + comp.flush(zlib.Z_SYNC_FLUSH)  # only the first rows: enough to lie
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def ico_bomb(side: int = 20_000) -> bytes:
    """An ICO holding one 8-bit bitmap that declares side x side pixels in a 1 kB file (the directory says
    256x256); Pillow used to fail on it with "[Errno 22] Invalid argument"."""
    dib = struct.pack("<IiiHHIIiiII", 40, side, 2 * side, 1, 8, 0, 0, 0, 0, 0, 0) + b"\0" * 1024
    return struct.pack("<HHH", 0, 1, 1) + struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 8, len(dib), 22) + dib


def _patch_tiff_tag(data: bytearray, tag: int, value: int) -> bytearray:
    """Set the value/offset field of `tag` in the first IFD of a little-endian TIFF."""
    first = struct.unpack_from("<I", data, 4)[0]
    for n in range(struct.unpack_from("<H", data, first)[0]):
        at = first + 2 + 12 * n
        if struct.unpack_from("<H", data, at)[0] == tag:
            struct.pack_into("<I", data, at + 8, value)
            return data
    raise AssertionError(f"no tag {tag}")


def tiff_strip_past_end() -> bytes:
    """An LZW TIFF whose strip claims 100 kB: libtiff prints "TIFFFillStrip: Read error ..." to stderr."""
    data = bytearray(encode(gradient(), "TIFF", compression="tiff_lzw"))
    return bytes(_patch_tiff_tag(data, 279, 100_000))  # StripByteCounts


def tiff_tag_past_end() -> bytes:
    """A TIFF whose ImageDescription points 1 MB past the end: Pillow warns "Truncated File Read"."""
    data = bytearray(encode(gradient(), "TIFF", tiffinfo={270: "x" * 100}))
    return bytes(_patch_tiff_tag(data, 270, 1_000_000))


def tiff_second_page_without_width() -> bytes:
    """A two-page TIFF whose second IFD has lost its ImageWidth tag (256); Pillow's n_frames then raises
    TypeError while it walks the pages."""
    pages = [Image.new("RGB", (8, 8), c) for c in ("red", "blue")]
    data = bytearray(encode(pages[0], "TIFF", save_all=True, append_images=pages[1:]))
    assert data[:4] == b"II*\0"
    first = struct.unpack_from("<I", data, 4)[0]
    count = struct.unpack_from("<H", data, first)[0]
    second = struct.unpack_from("<I", data, first + 2 + 12 * count)[0]
    count2 = struct.unpack_from("<H", data, second)[0]
    for n in range(count2):
        at = second + 2 + 12 * n
        if struct.unpack_from("<H", data, at)[0] == 256:
            struct.pack_into("<H", data, at, 0xC350)  # a private, unknown tag: the width is simply gone
            return bytes(data)
    raise AssertionError("no ImageWidth tag in the second page")


def eps() -> bytes:
    """A tiny Encapsulated PostScript file (Pillow would render it with Ghostscript)."""
    return (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n%%EndComments\n"
            b"0 0 moveto 8 0 lineto 8 8 lineto closepath fill\nshowpage\n%%EOF\n")


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)


def exif_rotated_jpeg() -> bytes:
    """30x10 pixels stored, displayed 10x30 (EXIF orientation 6)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(Image.new("RGB", (30, 10), (0, 0, 255)), "JPEG", exif=exif.tobytes())


def bad_files() -> dict[str, tuple[bytes, str]]:
    """name -> (content, a fragment the refusal's reason must contain)."""
    jpeg = encode(gradient(256, 256), "JPEG", quality=90)
    png = encode(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)), "PNG")
    return {
        "truncated.jpg": (jpeg[: len(jpeg) // 3], "truncated"),
        "truncated.png": (png[: len(png) // 2], "truncated"),
        "empty.jpg": (b"", "empty"),
        "notes.jpg": (b"this is not an image at all\n" * 10, "not an image"),
        "bomb.png": (png_bomb(), "too large"),
        "bomb-100mp.png": (png_bomb(10_000), "too large"),  # under Pillow's error limit, over its warning
        "bomb.ico": (ico_bomb(), "not an image"),
        "bomb-ico.png": (ico_bomb(), "not an image"),
        "strip.tif": (tiff_strip_past_end(), "corrupt TIFF image data"),
        "tag.tif": (tiff_tag_past_end(), "Truncated File Read"),
        "holiday.png": (eps(), "not an image"),
    }


def good_files() -> dict[str, bytes]:
    """name -> content of valid images in the modes and shapes real folders hold."""
    rgb = gradient()
    deep = Image.fromarray((np.arange(30 * 30).reshape(30, 30) * 70 % 65536).astype(np.uint16))
    return {
        "plain.jpg": encode(rgb, "JPEG", quality=95),
        "cmyk.jpg": encode(rgb.convert("CMYK"), "JPEG"),
        "sixteen-bit.png": encode(deep, "PNG"),
        "palette.png": encode(rgb.convert("P"), "PNG"),
        "alpha.png": encode(rgb.convert("RGBA"), "PNG"),
        "alpha.webp": encode(rgb.convert("RGBA"), "WEBP"),
        "grey.bmp": encode(rgb.convert("L"), "BMP"),
        "animated.gif": animated_gif(),
        "rotated.jpg": exif_rotated_jpeg(),
        "page.tif": encode(rgb, "TIFF", compression="tiff_lzw"),
        "second-page-broken.tif": tiff_second_page_without_width(),  # its first page is fine
        "grey.pgm": encode(rgb.convert("L"), "PPM"),
    }


def write(root, files: dict) -> dict:
    """Write `files` (name -> bytes or (bytes, ...)) under `root`; return name -> path."""
    paths = {}
    for name, value in files.items():
        data = value[0] if isinstance(value, tuple) else value
        (root / name).write_bytes(data)
        paths[name] = root / name
    return paths
