"""Pictures of predictions: masks, boxes, labels and track ids drawn on an image with Pillow.

:func:`draw_detections` is the one drawing routine for images and video frames (the video writer calls it per
frame; with ``track_ids`` set, colours follow the track so an object keeps its colour across frames).
"""

from __future__ import annotations

import colorsys
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from glee.io import read_image, save_image
from glee.structures import Detections

ColorBy = Literal["auto", "instance", "class", "track"]
RGB = tuple[int, int, int]


def color_for(index: int) -> RGB:
    """A distinct, deterministic RGB colour for any integer (golden-ratio hue steps, two brightness levels)."""
    hue = (index * 0.618033988749895) % 1.0
    value = 0.95 if index % 2 == 0 else 0.75
    r, g, b = colorsys.hsv_to_rgb(hue, 0.75, value)
    return int(r * 255), int(g * 255), int(b * 255)


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # scalable when Pillow has FreeType
    except TypeError:  # pragma: no cover - Pillow < 10.1
        return ImageFont.load_default()


def _boundary(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it (image borders count as outside)."""
    inner = mask.copy()
    inner[1:, :] &= mask[:-1, :]
    inner[:-1, :] &= mask[1:, :]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    inner[0, :] = inner[-1, :] = False
    inner[:, 0] = inner[:, -1] = False
    return mask & ~inner


def instance_colors(dets: Detections, color_by: ColorBy = "auto") -> list[RGB]:
    """One colour per instance: by track id (``auto`` when tracks exist), class id, or position."""
    if color_by == "auto":
        color_by = "track" if dets.track_ids is not None else "instance"
    if color_by == "track":
        if dets.track_ids is None:
            raise ValueError("color_by='track' needs detections with track_ids")
        keys = dets.track_ids.tolist()
    elif color_by == "class":
        keys = dets.class_ids.tolist()
    elif color_by == "instance":
        keys = list(range(len(dets)))
    else:
        raise ValueError(f"color_by must be auto, instance, class or track, got {color_by!r}")
    return [color_for(int(k)) for k in keys]


def label_text(dets: Detections, i: int, show_scores: bool = True, show_track_ids: bool = True) -> str:
    parts = []
    if show_track_ids and dets.track_ids is not None:
        parts.append(f"#{int(dets.track_ids[i])}")
    parts.append(dets.class_names[i])
    if show_scores:
        parts.append(f"{float(dets.scores[i]):.2f}")
    return " ".join(parts)


def draw_detections(
    image: Any,
    dets: Detections,
    *,
    show_masks: bool = True,
    show_boxes: bool = True,
    show_labels: bool = True,
    show_scores: bool = True,
    show_track_ids: bool = True,
    mask_alpha: float = 0.45,
    line_width: int | None = None,
    font_size: int | None = None,
    color_by: ColorBy = "auto",
    colors: Sequence[RGB] | None = None,
) -> np.ndarray:
    """Draw ``dets`` on ``image`` (anything :func:`glee.io.read_image` takes); returns uint8 RGB [H, W, 3].

    Masks are blended with ``mask_alpha`` and outlined; boxes use width ``ceil(max(H, W) / 200)`` by default
    (the demo's); labels read ``[#track] name [score]`` on a filled tab above the box (inside it at the top
    edge of the image).
    """
    from PIL import Image, ImageDraw

    canvas = read_image(image, max_pixels=None).copy()
    height, width = canvas.shape[:2]
    if tuple(dets.image_size) != (height, width):
        raise ValueError(f"detections are for a {dets.image_size[1]}x{dets.image_size[0]} image, but the image is "
                         f"{width}x{height}")
    if not 0.0 <= mask_alpha <= 1.0:
        raise ValueError(f"mask_alpha must be in [0, 1], got {mask_alpha}")
    palette = list(colors) if colors is not None else instance_colors(dets, color_by)
    if len(palette) < len(dets):
        raise ValueError(f"{len(palette)} colours for {len(dets)} instances")
    if show_masks and dets.masks is not None and len(dets):
        out = canvas.astype(np.float32)
        masks = dets.masks.cpu().numpy()
        for i, mask in enumerate(masks):
            color = np.asarray(palette[i], dtype=np.float32)
            out[mask] = out[mask] * (1.0 - mask_alpha) + color * mask_alpha
            out[_boundary(mask)] = color
        canvas = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    pil = Image.fromarray(canvas)
    draw = ImageDraw.Draw(pil)
    lw = line_width or max(1, math.ceil(max(height, width) / 200))
    font = _font(font_size or max(10, round(min(height, width) * 0.03)))
    boxes = dets.boxes.detach().cpu().tolist()
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        color = tuple(palette[i])
        if show_boxes:
            draw.rectangle([x1, y1, max(x1, x2), max(y1, y2)], outline=color, width=lw)
        if show_labels:
            text = label_text(dets, i, show_scores, show_track_ids)
            left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
            tw, th = right - left, bottom - top
            pad = max(1, th // 5)
            ty = y1 - th - 2 * pad if y1 - th - 2 * pad >= 0 else y1  # above the box, else inside it
            tx = min(max(0.0, x1), max(0.0, width - tw - 2 * pad))
            draw.rectangle([tx, ty, tx + tw + 2 * pad, ty + th + 2 * pad], fill=color)
            draw.text((tx + pad - left, ty + pad - top), text, fill=(255, 255, 255), font=font)
    return np.asarray(pil)


def draw_prompts(image: Any, prompts: Sequence[Any], radius: int | None = None) -> np.ndarray:
    """Mark visual prompts: positive clicks green, negative clicks red (crossed), boxes and scribbles yellow."""
    from PIL import Image, ImageDraw

    from glee.inference.prompts import VisualPrompt, prompt_mask

    canvas = read_image(image, max_pixels=None).copy()
    height, width = canvas.shape[:2]
    r = radius or max(3, round(min(height, width) / 80))
    for p in prompts:
        if not isinstance(p, VisualPrompt):
            raise TypeError("draw_prompts takes VisualPrompt objects")
        if p.kind in ("scribble", "mask"):
            alone = VisualPrompt(scribble=p.scribble) if p.kind == "scribble" else VisualPrompt(mask=p.mask)
            region = prompt_mask(alone, height, width)
            canvas[_boundary(region)] = (255, 220, 0)
    pil = Image.fromarray(canvas)
    draw = ImageDraw.Draw(pil)
    for p in prompts:
        if p.box is not None:
            draw.rectangle(list(p.box), outline=(255, 220, 0), width=max(1, r // 2))
        for x, y in p.points:
            draw.ellipse([x - r, y - r, x + r, y + r], fill=(40, 200, 60), outline=(255, 255, 255))
        for x, y in p.negative_points:
            draw.ellipse([x - r, y - r, x + r, y + r], fill=(220, 40, 40), outline=(255, 255, 255))
            draw.line([x - r, y - r, x + r, y + r], fill=(255, 255, 255), width=max(1, r // 3))
            draw.line([x - r, y + r, x + r, y - r], fill=(255, 255, 255), width=max(1, r // 3))
    return np.asarray(pil)


def save_overlay(image: Any, dets: Detections, path: str | os.PathLike, **kwargs: Any) -> Path:
    """:func:`draw_detections` written to ``path`` (PNG by default extension); returns the path."""
    return save_image(draw_detections(image, dets, **kwargs), path)
