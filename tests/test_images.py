"""The one image loader on the files real collections contain."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from hebb.images import ImageLoadError, image_to_array, iter_image_files, load_image


def _save(img: Image.Image, path, **kw):
    img.save(path, **kw)
    return path


@pytest.fixture
def rgb_gradient():
    x = np.linspace(0, 255, 40, dtype=np.uint8)
    arr = np.stack(np.broadcast_arrays(x[None, :], x[:, None], np.full((40, 40), 128, np.uint8)), axis=-1)
    return Image.fromarray(np.ascontiguousarray(arr), "RGB")


def test_plain_jpeg_loads_as_rgb(tmp_path, rgb_gradient):
    img = load_image(_save(rgb_gradient, tmp_path / "a.jpg", quality=95))
    assert img.mode == "RGB" and img.size == (40, 40)
    assert np.abs(np.asarray(img, np.int16) - np.asarray(rgb_gradient, np.int16)).mean() < 3


def test_truncated_jpeg_is_reported(tmp_path, rgb_gradient):
    data = io.BytesIO()
    rgb_gradient.resize((256, 256)).save(data, "JPEG", quality=90)
    path = tmp_path / "truncated.jpg"
    path.write_bytes(data.getvalue()[: len(data.getvalue()) // 3])
    with pytest.raises(ImageLoadError) as err:
        load_image(path)
    assert err.value.path == str(path) and "truncated" in err.value.reason


def test_png_with_alpha_is_composited_on_white(tmp_path):
    arr = np.zeros((8, 8, 4), np.uint8)
    arr[..., 0] = 255  # red, fully transparent on the left half
    arr[:, 4:, 3] = 255
    img = load_image(_save(Image.fromarray(arr, "RGBA"), tmp_path / "alpha.png"))
    out = np.asarray(img)
    assert img.mode == "RGB"
    assert (out[:, :4] == 255).all()  # transparent -> white
    assert (out[:, 4:] == [255, 0, 0]).all()


def test_16_bit_png_keeps_its_contrast(tmp_path):
    arr = np.tile(np.linspace(0, 65535, 16).astype(np.uint16), (4, 1))
    path = tmp_path / "deep.png"
    Image.fromarray(arr).save(path)
    assert Image.open(path).mode.startswith("I")
    out = np.asarray(load_image(path))
    assert out.shape == (4, 16, 3)
    assert out[0, 0, 0] == 0 and out[0, -1, 0] == 255  # scaled, not clipped to white


def test_cmyk_jpeg_becomes_rgb(tmp_path, rgb_gradient):
    path = _save(rgb_gradient.convert("CMYK"), tmp_path / "cmyk.jpg", quality=95)
    assert Image.open(path).mode == "CMYK"
    img = load_image(path)
    assert img.mode == "RGB"
    assert np.abs(np.asarray(img, np.int16) - np.asarray(rgb_gradient, np.int16)).mean() < 12


def test_palette_and_grey_images(tmp_path, rgb_gradient):
    assert load_image(_save(rgb_gradient.convert("P"), tmp_path / "p.png")).mode == "RGB"
    grey = load_image(_save(rgb_gradient.convert("L"), tmp_path / "l.png"))
    out = np.asarray(grey)
    assert grey.mode == "RGB" and (out[..., 0] == out[..., 2]).all()


def test_text_file_named_jpg_is_reported(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not an image")
    with pytest.raises(ImageLoadError, match="not an image"):
        load_image(path)


def test_empty_and_missing_files(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageLoadError, match="empty"):
        load_image(tmp_path / "empty.png")
    with pytest.raises(ImageLoadError, match="no such file"):
        load_image(tmp_path / "missing.png")


def test_image_over_the_pixel_limit_is_refused_before_decoding(tmp_path):
    path = _save(Image.new("RGB", (300, 200)), tmp_path / "big.png")
    with pytest.raises(ImageLoadError, match="too large"):
        load_image(path, max_pixels=300 * 200 - 1)
    assert load_image(path, max_pixels=300 * 200).size == (300, 200)


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (30, 10), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    path = tmp_path / "rotated.jpg"
    img.save(path, exif=exif.tobytes())
    assert load_image(path).size == (10, 30)


def test_animated_gif_gives_its_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    out = np.asarray(load_image(path))
    assert out[..., 0].mean() > 200 and out[..., 1].mean() < 50


def test_bytes_input_and_array_conversion(rgb_gradient):
    data = io.BytesIO()
    rgb_gradient.save(data, "PNG")
    img = load_image(data.getvalue())
    arr = image_to_array(img, size=32)
    assert arr.shape == (3, 32, 32) and arr.dtype == np.uint8
    with pytest.raises(ImageLoadError, match="<bytes>"):
        load_image(b"\x89PNG garbage")


def test_folder_scan_is_sorted_and_skips_hidden(tmp_path):
    for rel in ["b/2.jpg", "a/1.PNG", "a/.hidden.jpg", ".git/x.jpg", "a/readme.txt"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    assert [p.relative_to(tmp_path).as_posix() for p in iter_image_files(tmp_path)] == ["a/1.PNG", "b/2.jpg"]


def test_folder_scan_skips_nas_and_mac_debris_and_caller_patterns(tmp_path):
    for rel in ["a/1.jpg", "a/._1.jpg", "@eaDir/a/1.jpg/SYNOPHOTO_THUMB_M.jpg", "__MACOSX/a/._2.jpg",
                "raw/3.jpg", "a/4.tmp.jpg", "b/raw/5.jpg", "b/6.png"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    found = [p.relative_to(tmp_path).as_posix() for p in iter_image_files(tmp_path, exclude=["raw/*", "*.tmp.jpg"])]
    assert found == ["a/1.jpg", "b/6.png", "b/raw/5.jpg"]  # a pattern with a slash is anchored at the root
    assert [p.relative_to(tmp_path).as_posix() for p in iter_image_files(tmp_path, exclude=["raw"])] == \
        ["a/1.jpg", "a/4.tmp.jpg", "b/6.png"]  # a bare name matches at any depth


def test_open_source_passes_exclude_patterns(tmp_path):
    from retrieval.sources import open_source

    for rel in ["cat/1.png", "cat/._1.png", "dog/2.png", "dog/drafts/3.png", "notes.txt"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        if rel.endswith(".png"):
            Image.new("RGB", (4, 4)).save(tmp_path / rel, "PNG")
        else:
            (tmp_path / rel).write_text("x")
    source = open_source(tmp_path, exclude=["drafts"])
    assert [p.rsplit("/", 2)[-2:] for p in source.paths] == [["cat", "1.png"], ["dog", "2.png"]]
    assert source.labels == ["cat", "dog"] and [s["path"].endswith("notes.txt") for s in source.skipped] == [True]
