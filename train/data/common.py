"""Shared pieces of the data pipeline: errors, skip counting, annotation validation, mask decoding, image IO.

Records are plain dicts (cheap to pickle into loader workers):

* image record: ``file_name``, ``height``, ``width``, ``image_id``, ``dataset_name``, ``annotations`` (each with
  ``bbox`` xyxy absolute, ``category_id`` contiguous, ``segmentation`` polygons / RLE / None, optional
  ``description``), optional ``expressions``, ``task``, ``not_exhaustive_category_ids``, ``neg_category_ids``,
  ``mask_file``;
* video record: ``file_names`` [T], ``height``, ``width``, ``video_id``, ``dataset_name``, ``annotations`` (each
  with ``id``, ``category_id``, ``bboxes`` [T] xyxy or None, ``segmentations`` [T] or None), optional
  ``expressions``.

Problems in a dataset file are found when it is loaded: a malformed file raises ``DatasetFormatError`` naming
the file, the field and the fix; a bad annotation or image is skipped and counted in ``SkipStats`` (reported
in the log), so nothing fails in the middle of an epoch.
"""

from __future__ import annotations

import json
import math
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


class DatasetFormatError(ValueError):
    """A dataset file that cannot be read as the declared format; the message says what to fix."""


class SkipStats:
    """Counts of skipped annotations / images / samples by reason, with a few examples of each."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}
        self._lock = threading.Lock()

    def add(self, reason: str, example: Any = None, n: int = 1) -> None:
        with self._lock:
            self.counts[reason] += n
            if example is not None:
                ex = self.examples.setdefault(reason, [])
                if len(ex) < 3:
                    ex.append(str(example))

    def merge(self, other: SkipStats | dict[str, int]) -> None:
        counts = other.counts if isinstance(other, SkipStats) else other
        with self._lock:
            self.counts.update(counts)

    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict[str, int]:
        return dict(sorted(self.counts.items()))

    def summary(self) -> str:
        if not self.counts:
            return "nothing skipped"
        parts = []
        for reason, n in sorted(self.counts.items()):
            ex = self.examples.get(reason)
            parts.append(f"{reason}: {n}" + (f" (e.g. {'; '.join(ex)})" if ex else ""))
        return ", ".join(parts)


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise DatasetFormatError(f"{path}: annotation file not found; check the `json` path of this dataset")
    try:
        with path.open(encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DatasetFormatError(f"{path}: not valid JSON ({e}); re-export the annotation file") from e


def require_keys(obj: Any, keys: list[str], where: str, fix: str) -> None:
    if not isinstance(obj, dict):
        raise DatasetFormatError(f"{where}: expected a JSON object, got {type(obj).__name__}; {fix}")
    missing = [k for k in keys if k not in obj]
    if missing:
        raise DatasetFormatError(f"{where}: missing field(s) {missing}; {fix}")


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def clean_box(bbox: Any, width: int, height: int, stats: SkipStats, where: str) -> list[float] | None:
    """COCO xywh -> xyxy clipped to the image, or None (counted) when it is malformed, empty or outside."""
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
        stats.add("malformed_bbox", where)
        return None
    x, y, w, h = (float(v) for v in bbox)
    if w <= 0 or h <= 0:
        stats.add("empty_bbox", where)
        return None
    x1, y1, x2, y2 = max(x, 0.0), max(y, 0.0), min(x + w, float(width)), min(y + h, float(height))
    if x2 - x1 < 1e-3 or y2 - y1 < 1e-3:
        stats.add("bbox_outside_image", where)
        return None
    if (x1, y1, x2, y2) != (x, y, x + w, y + h):
        stats.add("bbox_clipped_to_image", where)
    return [x1, y1, x2, y2]


def clean_segmentation(segm: Any, stats: SkipStats, where: str) -> Any | None:
    """Keep valid polygons (>= 3 points) or an RLE dict; None (counted) for anything else."""
    if isinstance(segm, dict):
        if "counts" in segm and "size" in segm and len(segm["size"]) == 2:
            return segm
        stats.add("malformed_segmentation", where)
        return None
    if isinstance(segm, list):
        polys = [p for p in segm if isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 and all(map(_is_number, p))]
        if polys:
            return polys
    stats.add("malformed_segmentation", where)
    return None


def decode_segmentation(segm: Any, height: int, width: int) -> np.ndarray:
    """Polygons or RLE (compressed or uncompressed) -> [H, W] bool."""
    from pycocotools import mask as mask_util

    if isinstance(segm, list):
        rles = mask_util.frPyObjects(segm, height, width)
        rle = mask_util.merge(rles)
    elif isinstance(segm, dict):
        rle = mask_util.frPyObjects(segm, height, width) if isinstance(segm["counts"], list) else segm
        if isinstance(rle.get("counts"), str):
            rle = dict(rle, counts=rle["counts"].encode("ascii"))
    else:
        raise ValueError(f"unsupported segmentation type {type(segm).__name__}")
    mask = mask_util.decode(rle).astype(bool)
    if mask.shape != (height, width):
        raise ValueError(f"segmentation of size {mask.shape} does not match the image ({height}, {width})")
    return mask


def read_image(path: str | Path) -> np.ndarray:
    """RGB uint8 [H, W, 3] (EXIF orientation is not applied, as detectron2's read_image with format RGB)."""
    with Image.open(path) as im:
        return np.array(im.convert("RGB"))


def contiguous_categories(categories: Any, where: str) -> tuple[dict[int, int], list[str]]:
    """COCO ``categories`` -> (json id -> contiguous index in sorted-id order, names)."""
    if not isinstance(categories, list) or not categories:
        raise DatasetFormatError(f"{where}: `categories` must be a non-empty list of {{id, name}}")
    for i, c in enumerate(categories):
        require_keys(c, ["id", "name"], f"{where}: categories[{i}]", "every category needs an integer id and a name")
    ids = [c["id"] for c in categories]
    if len(set(ids)) != len(ids):
        raise DatasetFormatError(f"{where}: duplicate category ids in `categories`; ids must be unique")
    ordered = sorted(categories, key=lambda c: c["id"])
    return {c["id"]: i for i, c in enumerate(ordered)}, [str(c["name"]) for c in ordered]


class LoadedDataset:
    """A dataset after loading: its records plus what training needs to know about it."""

    def __init__(
        self,
        name: str,
        records: list[dict[str, Any]],
        class_names: list[str],
        has_masks: bool,
        is_video: bool,
        stats: SkipStats,
        source: str,
    ) -> None:
        self.name = name
        self.records = records
        self.class_names = class_names
        self.has_masks = has_masks
        self.is_video = is_video
        self.stats = stats
        self.source = source
        if not records:
            raise DatasetFormatError(
                f"{source}: no usable {'videos' if is_video else 'images'} in dataset {name!r} "
                f"(skipped: {stats.summary()}); check the annotation file and the category ids"
            )

    def __len__(self) -> int:
        return len(self.records)

    def aspect_groups(self) -> list[int]:
        """0 for landscape (w >= h), 1 for portrait, per record (detectron2's aspect-ratio grouping)."""
        return [0 if r["width"] >= r["height"] else 1 for r in self.records]

    def __repr__(self) -> str:
        kind = "videos" if self.is_video else "images"
        return (f"LoadedDataset({self.name!r}, {len(self)} {kind}, {len(self.class_names)} classes, "
                f"masks={self.has_masks}, skipped: {self.stats.summary()})")
