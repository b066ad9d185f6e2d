"""The official training augmentations, as explicit geometric ops applied alike to image, masks and boxes.

* ``multiscale`` (Lite / Plus): random horizontal flip; with probability 0.5 a DETR-style crop first (short side
  to one of 400/500/600, then an absolute random crop with sides in [384, 600]); then the short side is resized to
  one of 480..800 (step 32) with the long side at most 1333.
* ``lsj`` (Pro, large-scale jitter): flip, resize by a random factor in [0.1, 2.0] of 1536 (aspect kept), then a
  fixed 1536x1536 random crop, padded bottom/right with pixel value 128.
* ``resize``: the test-time resize (short side ``min_sizes[0]``, long side <= ``max_size``), no randomness.

One draw of parameters (``sample_ops``) serves all frames of a video clip.  Every random choice comes from the
``random.Random`` passed in, so a sample is a pure function of its seed (exact resume, any number of workers).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from PIL import Image


@dataclass
class AugmentConfig:
    kind: Literal["multiscale", "lsj", "resize"] = "multiscale"
    flip: bool = True
    min_sizes: list[int] = field(default_factory=lambda: list(range(480, 801, 32)))
    max_size: int = 1333
    crop_prob: float = 0.5
    crop_pre_sizes: list[int] = field(default_factory=lambda: [400, 500, 600])
    crop_size: tuple[int, int] = (384, 600)
    image_size: int = 1536  # LSJ
    min_scale: float = 0.1
    max_scale: float = 2.0
    pad_value: int = 128

    @classmethod
    def from_dict(cls, raw: dict | None) -> AugmentConfig:
        raw = dict(raw or {})
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"unknown augmentation option(s) {unknown}; known: {sorted(known)}")
        if "crop_size" in raw:
            raw["crop_size"] = tuple(raw["crop_size"])
        cfg = cls(**raw)
        if cfg.kind not in ("multiscale", "lsj", "resize"):
            raise ValueError(f"augmentation kind must be multiscale, lsj or resize, got {cfg.kind!r}")
        return cfg


@dataclass
class Op:
    """One geometric op: ``flip`` (width), ``resize`` (h, w), ``crop`` (y0, x0, h, w) or ``pad`` (h, w)."""

    name: str
    args: tuple[int, ...]


def _short_side_size(h: int, w: int, short: int, max_size: int) -> tuple[int, int]:
    """detectron2 ResizeShortestEdge output size."""
    scale = short / min(h, w)
    if max(h, w) * scale > max_size:
        scale = max_size / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def sample_ops(h: int, w: int, cfg: AugmentConfig, rng: random.Random, allow_crop: bool = True) -> list[Op]:
    """Draw the ops for an image of size (h, w)."""
    ops: list[Op] = []
    if cfg.kind == "resize":
        return [Op("resize", _short_side_size(h, w, cfg.min_sizes[0], cfg.max_size))]
    if cfg.flip and rng.random() < 0.5:
        ops.append(Op("flip", (w,)))
    if cfg.kind == "lsj":
        # the no-crop variant (ordinal expressions) caps the scale at 1.0, so the image always fits the canvas
        scale = rng.uniform(cfg.min_scale, cfg.max_scale if allow_crop else min(cfg.max_scale, 1.0))
        s = min(scale * cfg.image_size / h, scale * cfg.image_size / w)
        nh, nw = max(1, int(round(h * s))), max(1, int(round(w * s)))
        ops.append(Op("resize", (nh, nw)))
        ch, cw = min(nh, cfg.image_size), min(nw, cfg.image_size)
        if nh > ch or nw > cw:
            ops.append(Op("crop", (rng.randint(0, nh - ch), rng.randint(0, nw - cw), ch, cw)))
        ops.append(Op("pad", (cfg.image_size, cfg.image_size)))
        return ops
    if allow_crop and cfg.crop_prob > 0 and rng.random() < cfg.crop_prob:
        ch, cw = _short_side_size(h, w, rng.choice(cfg.crop_pre_sizes), 10**9)
        ops.append(Op("resize", (ch, cw)))
        lo, hi = cfg.crop_size
        crop_h = rng.randint(min(ch, lo), min(ch, hi))
        crop_w = rng.randint(min(cw, lo), min(cw, hi))
        ops.append(Op("crop", (rng.randint(0, ch - crop_h), rng.randint(0, cw - crop_w), crop_h, crop_w)))
        h, w = crop_h, crop_w
    ops.append(Op("resize", _short_side_size(h, w, rng.choice(cfg.min_sizes), cfg.max_size)))
    return ops


def has_flip(ops: list[Op]) -> bool:
    return any(op.name == "flip" for op in ops)


def apply_image(image: np.ndarray, ops: list[Op], pad_value: int = 128) -> np.ndarray:
    """[H, W, 3] uint8 -> transformed [H', W', 3] uint8 (bilinear resize, as detectron2)."""
    for op in ops:
        if op.name == "flip":
            image = image[:, ::-1]
        elif op.name == "resize":
            nh, nw = op.args
            if image.shape[:2] != (nh, nw):
                image = np.array(Image.fromarray(np.ascontiguousarray(image)).resize((nw, nh), Image.BILINEAR))
        elif op.name == "crop":
            y0, x0, ch, cw = op.args
            image = image[y0 : y0 + ch, x0 : x0 + cw]
        elif op.name == "pad":
            ph, pw = op.args
            out = np.full((ph, pw, image.shape[2]), pad_value, dtype=image.dtype)
            out[: image.shape[0], : image.shape[1]] = image
            image = out
    return np.ascontiguousarray(image)


def apply_masks(masks: np.ndarray, ops: list[Op]) -> np.ndarray:
    """[N, H, W] bool -> transformed (nearest resize, zero padding)."""
    for op in ops:
        if op.name == "flip":
            masks = masks[:, :, ::-1]
        elif op.name == "resize":
            nh, nw = op.args
            if masks.shape[1:] != (nh, nw):
                ys = np.minimum((np.arange(nh) + 0.5) * masks.shape[1] / nh, masks.shape[1] - 1).astype(np.int64)
                xs = np.minimum((np.arange(nw) + 0.5) * masks.shape[2] / nw, masks.shape[2] - 1).astype(np.int64)
                masks = masks[:, ys][:, :, xs]
        elif op.name == "crop":
            y0, x0, ch, cw = op.args
            masks = masks[:, y0 : y0 + ch, x0 : x0 + cw]
        elif op.name == "pad":
            ph, pw = op.args
            out = np.zeros((masks.shape[0], ph, pw), dtype=bool)
            out[:, : masks.shape[1], : masks.shape[2]] = masks
            masks = out
    return np.ascontiguousarray(masks)


def apply_boxes(boxes: np.ndarray, ops: list[Op], size: tuple[int, int]) -> np.ndarray:
    """[N, 4] xyxy for an input of ``size`` (h, w) -> transformed, clipped to the output image."""
    boxes = boxes.astype(np.float64).copy()
    h, w = size
    for op in ops:
        if op.name == "flip":
            boxes[:, [0, 2]] = op.args[0] - boxes[:, [2, 0]]
        elif op.name == "resize":
            nh, nw = op.args
            boxes[:, [0, 2]] *= nw / w
            boxes[:, [1, 3]] *= nh / h
            h, w = nh, nw
        elif op.name == "crop":
            y0, x0, ch, cw = op.args
            boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]] - x0, 0, cw)
            boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]] - y0, 0, ch)
            h, w = ch, cw
        elif op.name == "pad":
            h, w = op.args
    return boxes.astype(np.float32)


def output_size(ops: list[Op], size: tuple[int, int]) -> tuple[int, int]:
    h, w = size
    for op in ops:
        if op.name in ("resize", "pad"):
            h, w = op.args
        elif op.name == "crop":
            h, w = op.args[2], op.args[3]
    return h, w


def valid_region(ops: list[Op], size: tuple[int, int]) -> tuple[int, int]:
    """(h, w) of the image content before any LSJ padding."""
    h, w = size
    for op in ops:
        if op.name == "resize":
            h, w = op.args
        elif op.name == "crop":
            h, w = op.args[2], op.args[3]
    return h, w


def boxes_from_masks(masks: np.ndarray) -> np.ndarray:
    """[N, H, W] bool -> [N, 4] xyxy (x2/y2 exclusive, detectron2 BitMasks.get_bounding_boxes); empty -> zeros."""
    boxes = np.zeros((len(masks), 4), dtype=np.float32)
    for i, m in enumerate(masks):
        ys = np.flatnonzero(m.any(1))
        xs = np.flatnonzero(m.any(0))
        if len(ys) and len(xs):
            boxes[i] = (xs[0], ys[0], xs[-1] + 1, ys[-1] + 1)
    return boxes
