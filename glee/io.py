"""Reading images into the form GLEE's preprocessing expects: ``uint8`` RGB arrays ``[H, W, 3]``.

Accepted sources: a path, raw bytes, a ``PIL.Image``, a numpy array or a torch tensor.  Conversions, all
documented and deterministic:

* grayscale (``L``, ``1``, ``I;16``, ``I``, ``F``) -> the gray value repeated in R, G and B;
* 16-bit data (``I;16*`` images, ``uint16`` arrays) -> 8 bit by ``round(v / 257)`` (65535 -> 255);
* alpha (``RGBA``, ``LA``, palette with transparency) -> dropped, as the official demo does
  (``img[:, :, :3]``); pass ``background=(r, g, b)`` to composite onto a colour instead;
* palette, CMYK, YCbCr, LAB, HSV -> RGB through Pillow;
* EXIF orientation is applied (a phone photo comes out upright), ``exif_transpose=False`` turns it off;
* images above ``max_pixels`` are downscaled (aspect kept, Lanczos) with a ``UserWarning`` naming both
  sizes; predictions then refer to the downscaled image.

Errors are :class:`ImageReadError` (a ``ValueError``) naming the source and the fix: missing files,
unreadable or truncated files, zero-size images, arrays of an unsupported shape or dtype.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm", ".pbm")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
# 40 MP: a 7000x5700 photo still loads at full size; past it, upsampled full-resolution masks get costly
DEFAULT_MAX_PIXELS = 40_000_000

ImageSource = Any  # str | os.PathLike | bytes | PIL.Image.Image | np.ndarray | torch.Tensor


class ImageReadError(ValueError):
    """An image that cannot be read or converted; the message names the source and the fix."""


def is_image_path(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def is_video_path(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def list_images(folder: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """Image files in ``folder`` (by extension, case-insensitive), sorted by path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageReadError(f"{folder}: not a folder")
    pattern = "**/*" if recursive else "*"
    return sorted(p for p in folder.glob(pattern) if p.is_file() and is_image_path(p))


def read_image(
    source: ImageSource,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    background: Sequence[int] | None = None,
    exif_transpose: bool = True,
) -> np.ndarray:
    """Any supported source -> ``uint8`` RGB array [H, W, 3] (C-contiguous).

    Args:
        source: path, bytes, ``PIL.Image``, numpy array ([H, W], [H, W, 1|3|4], RGB order) or torch tensor
            ([H, W], [H, W, C] or [C, H, W] with C in 1, 3, 4).
        max_pixels: downscale larger images to this many pixels (with a warning); ``None`` disables it.
        background: composite transparent images onto this RGB colour; ``None`` drops the alpha channel.
        exif_transpose: rotate/flip files according to their EXIF orientation tag.
    """
    from PIL import Image

    if isinstance(source, (str, os.PathLike)):
        image = _open_path(Path(source), exif_transpose)
        name = os.fspath(source)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        image = _open_bytes(bytes(source), "<bytes>", exif_transpose)
        name = "<bytes>"
    elif isinstance(source, Image.Image):
        image, name = source, "<PIL image>"
    else:
        array = _array_from(source)
        return _limit_size(to_rgb_uint8(array, background=background, name="<array>"), max_pixels, "<array>")
    if image.width == 0 or image.height == 0:
        raise ImageReadError(f"{name}: image has zero size ({image.width}x{image.height}); give a non-empty image")
    return _limit_size(_pil_to_rgb(image, background, name), max_pixels, name)


def _open_path(path: Path, exif_transpose: bool) -> Any:
    if not path.exists():
        raise ImageReadError(f"{path}: no such file")
    if path.is_dir():
        raise ImageReadError(f"{path}: is a folder, not an image file")
    if path.stat().st_size == 0:
        raise ImageReadError(f"{path}: the file is empty (0 bytes); re-export or re-download it")
    return _open_bytes(path.read_bytes(), str(path), exif_transpose)


def _open_bytes(data: bytes, name: str, exif_transpose: bool) -> Any:
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            # our own max_pixels check warns with both sizes; Pillow's bomb warning would only repeat it
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            image.load()  # decode now: truncated files fail here, not later inside the pipeline
    except UnidentifiedImageError as exc:
        raise ImageReadError(f"{name}: not an image file, or a format Pillow cannot read ({exc})") from exc
    except Image.DecompressionBombError as exc:
        raise ImageReadError(
            f"{name}: {exc}. Downscale the file first, or raise PIL.Image.MAX_IMAGE_PIXELS if you trust it"
        ) from exc
    except (OSError, SyntaxError, ValueError) as exc:  # Pillow reports truncation/corruption as OSError
        raise ImageReadError(
            f"{name}: truncated or corrupt image data ({exc}); re-export or re-download the file"
        ) from exc
    if exif_transpose:
        image = ImageOps.exif_transpose(image)
    return image


def _pil_to_rgb(image: Any, background: Sequence[int] | None, name: str) -> np.ndarray:
    mode = image.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        return to_rgb_uint8(_wide_gray(np.asarray(image), mode, name), name=name)
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode == "PA":
        image = image.convert("RGBA")
    elif mode not in ("RGB", "RGBA", "L", "LA", "1"):
        image = image.convert("RGB")  # CMYK, YCbCr, LAB, HSV, RGBX, ...
    return to_rgb_uint8(np.asarray(image), background=background, name=name)


def _wide_gray(array: np.ndarray, mode: str, name: str) -> np.ndarray:
    """Pillow's 16/32-bit integer and float gray modes -> uint8."""
    if mode == "F":
        array = array.astype(np.float64)
        top = 1.0 if np.nanmax(array) <= 1.0 else 255.0  # float files are stored 0..1 or 0..255
        return np.clip(np.rint(np.nan_to_num(array) / top * 255.0), 0, 255).astype(np.uint8)
    array = array.astype(np.int64)
    if array.min() < 0:
        raise ImageReadError(f"{name}: signed image with negative values (mode {mode}); rescale it to 0..65535")
    if mode == "I" and array.max() > 65535:
        raise ImageReadError(f"{name}: 32-bit image with values above 65535; rescale it to 0..65535")
    # 16-bit PNGs open as I;16 (Pillow >= 10) or I; both are 0..65535
    return np.rint(array / 257.0).astype(np.uint8)


def _array_from(source: Any) -> np.ndarray:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency of the package
        torch = None
    if torch is not None and isinstance(source, torch.Tensor):
        tensor = source.detach().cpu()
        if tensor.dim() == 3 and tensor.shape[0] in (1, 3, 4) and tensor.shape[-1] not in (1, 3, 4):
            tensor = tensor.permute(1, 2, 0)  # CHW -> HWC
        return tensor.numpy()
    if isinstance(source, np.ndarray):
        return source
    raise ImageReadError(
        f"cannot read an image from {type(source).__name__}; give a path, bytes, a PIL image, a numpy array "
        "[H, W, 3] or a torch tensor"
    )


def to_rgb_uint8(array: np.ndarray, background: Sequence[int] | None = None, name: str = "<array>") -> np.ndarray:
    """[H, W] / [H, W, 1|2|3|4] array of bool, uint8, uint16 or float in [0, 1] -> uint8 RGB [H, W, 3].

    Two channels are gray + alpha.  Float arrays must lie in [0, 1] (the usual float-image convention);
    0..255 floats are rejected rather than guessed: cast them with ``.astype(np.uint8)``.
    """
    array = np.asarray(array)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[-1] not in (1, 2, 3, 4):
        raise ImageReadError(
            f"{name}: image array must be [H, W] or [H, W, C] with C in 1, 2, 3, 4 (RGB order), got shape "
            f"{array.shape}"
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ImageReadError(f"{name}: image has zero size {array.shape[:2]}; give a non-empty image")
    array = _to_uint8(array, name)
    channels = array.shape[-1]
    alpha = None
    if channels in (2, 4):
        alpha, array = array[..., -1:], array[..., :-1]
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    if alpha is not None and background is not None:
        if len(background) != 3:
            raise ImageReadError(f"background must be an (r, g, b) colour, got {background!r}")
        weight = alpha.astype(np.float32) / 255.0
        bg = np.asarray(background, dtype=np.float32).reshape(1, 1, 3)
        array = np.rint(array.astype(np.float32) * weight + bg * (1.0 - weight)).astype(np.uint8)
    return np.ascontiguousarray(array)


def _to_uint8(array: np.ndarray, name: str) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if array.dtype == np.uint16:
        return np.rint(array / 257.0).astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ImageReadError(f"{name}: float image contains NaN or infinity")
        lo, hi = float(array.min()), float(array.max())
        if lo < 0.0 or hi > 1.0:
            raise ImageReadError(
                f"{name}: float image values must lie in [0, 1], got [{lo:g}, {hi:g}]; for 0..255 data pass "
                "array.astype(np.uint8)"
            )
        return np.rint(array * 255.0).astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        lo, hi = int(array.min()), int(array.max())
        if lo >= 0 and hi <= 255:
            return array.astype(np.uint8)
        raise ImageReadError(
            f"{name}: integer image of dtype {array.dtype} with values [{lo}, {hi}] is ambiguous; give uint8 "
            "(0..255) or uint16 (0..65535)"
        )
    raise ImageReadError(f"{name}: unsupported image dtype {array.dtype}")


def _limit_size(array: np.ndarray, max_pixels: int | None, name: str) -> np.ndarray:
    height, width = array.shape[:2]
    if max_pixels is None or height * width <= max_pixels:
        return array
    from PIL import Image

    scale = math.sqrt(max_pixels / (height * width))
    new_h, new_w = max(1, int(height * scale)), max(1, int(width * scale))
    warnings.warn(
        f"{name}: {width}x{height} image ({height * width / 1e6:.1f} MP) is larger than max_pixels="
        f"{max_pixels}; downscaled to {new_w}x{new_h}, and results refer to the downscaled image",
        UserWarning,
        stacklevel=3,
    )
    resized = Image.fromarray(array).resize((new_w, new_h), Image.Resampling.LANCZOS)
    return np.ascontiguousarray(np.asarray(resized))


def save_image(array: np.ndarray, path: str | os.PathLike) -> Path:
    """Write a uint8 RGB/gray array (PNG, JPEG, ... by extension); creates the parent folder."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(to_rgb_uint8(array, name=str(path)))).save(path)
    return path
