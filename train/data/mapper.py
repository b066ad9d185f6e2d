"""Record -> training sample: read the image(s), decode masks, augment, and keep the instances that survive.

Sample (a dict of tensors, cheap to send from loader workers):

* ``image``: uint8 [3, H, W] (a list of T of them for a video clip);
* ``instances``: ``boxes`` float32 [N, 4] xyxy in augmented pixels (recomputed from the masks when there are
  masks), ``classes`` int64 [N], ``masks`` bool [N, H, W] or None, ``ids`` int64 [N] (videos: the instance id),
  ``descriptions`` (Visual Genome / GRIT) -- a list of T such dicts for a clip;
* ``task``, ``expression`` (grounding), ``height`` / ``width`` (original), ``file_name``.

A sample that cannot be used returns None and is counted (unreadable or mismatched image, a grounding target
cropped away); the batch loader then draws a deterministic replacement.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from train.data.common import SkipStats, decode_segmentation, read_image
from train.data.refcoco import clean_expression, flip_expression, has_ordinal
from train.data.routing import GROUNDING_TASKS
from train.data.sa1b import decode_all, mask_nms, read_sa1b_masks
from train.data.transforms import (
    AugmentConfig,
    apply_boxes,
    apply_image,
    apply_masks,
    boxes_from_masks,
    has_flip,
    sample_ops,
)
from train.data.ytvis import sample_clip


def _keep_nonempty(boxes: np.ndarray, masks: np.ndarray | None) -> np.ndarray:
    """detectron2 ``filter_empty_instances``: box sides > 1e-5 and a non-empty mask."""
    keep = ((boxes[:, 2] - boxes[:, 0]) > 1e-5) & ((boxes[:, 3] - boxes[:, 1]) > 1e-5)
    if masks is not None and len(masks):
        keep &= masks.reshape(len(masks), -1).any(1)
    return keep


class SampleMapper:
    def __init__(
        self, aug: AugmentConfig, clip_frames: int = 2, frame_range: int = 5, sa1b_mask_nms: bool = True
    ) -> None:
        self.aug = aug
        self.clip_frames = clip_frames
        self.frame_range = frame_range
        self.sa1b_mask_nms = sa1b_mask_nms

    def __call__(
        self, record: dict[str, Any], task: str, has_masks: bool, rng: random.Random, stats: SkipStats
    ) -> dict[str, Any] | None:
        try:
            if "file_names" in record:
                return self._video(record, task, has_masks, rng, stats)
            return self._image(record, task, has_masks, rng, stats)
        except (OSError, ValueError) as e:  # unreadable image, broken RLE, ... -> counted skip, not a crash
            stats.add("unreadable_sample", f"{record.get('file_name') or record.get('file_names', ['?'])[0]}: {e}")
            return None

    # ------------------------------------------------------------------ images
    def _read(self, path: str, record: dict[str, Any], stats: SkipStats) -> np.ndarray | None:
        image = read_image(path)
        if image.shape[:2] != (record["height"], record["width"]):
            stats.add("image_size_mismatch", f"{path}: file {image.shape[1]}x{image.shape[0]}, annotation "
                      f"{record['width']}x{record['height']}")
            return None
        return image

    def _image(
        self, record: dict[str, Any], task: str, has_masks: bool, rng: random.Random, stats: SkipStats
    ) -> dict[str, Any] | None:
        image = self._read(record["file_name"], record, stats)
        if image is None:
            return None
        h, w = image.shape[:2]
        anns = record["annotations"]
        masks = None
        if record.get("mask_file"):
            anns = read_sa1b_masks(record, stats)
            masks = decode_all(anns, h, w)
            if self.sa1b_mask_nms and len(masks):
                keep = mask_nms(masks)
                anns, masks = [anns[i] for i in keep], masks[keep]
        elif has_masks:
            masks = decode_all(anns, h, w)
        sampled = self._expression_and_ops(record, task, h, w, rng, stats, "image")
        if sampled is None:
            return None
        expression, ops = sampled
        out_image = apply_image(image, ops, self.aug.pad_value)
        boxes = np.asarray([a["bbox"] for a in anns], dtype=np.float32).reshape(-1, 4)
        classes = np.asarray([a["category_id"] for a in anns], dtype=np.int64)
        boxes = apply_boxes(boxes, ops, (h, w))
        if masks is not None:
            masks = apply_masks(masks, ops)
            boxes = boxes_from_masks(masks)
        keep = _keep_nonempty(boxes, masks)
        if expression is not None and not keep.any():
            stats.add("grounding_target_cropped_away", record.get("image_id"))
            return None
        instances: dict[str, Any] = {
            "boxes": torch.from_numpy(boxes[keep]),
            "classes": torch.from_numpy(classes[keep]),
            "masks": None if masks is None else torch.from_numpy(masks[keep]),
        }
        if anns and "description" in anns[0]:
            instances["descriptions"] = [a["description"] for a, k in zip(anns, keep) if k]
        return {
            "image": torch.from_numpy(out_image).permute(2, 0, 1).contiguous(),
            "instances": instances,
            "task": task,
            "expression": expression,
            "height": record["height"],
            "width": record["width"],
            "file_name": record["file_name"],
        }

    def _expression_and_ops(self, record: dict[str, Any], task: str, h: int, w: int, rng: random.Random,
                            stats: SkipStats, kind: str) -> tuple[str | None, Any] | None:
        """(expression or None, augmentation ops) of an image or video record; None (counted) when a grounding
        record has no expression.  Crops are off for ordinal expressions ("second from left"), and a flip
        swaps left/right in the expression."""
        expression = None
        allow_crop = True
        if task in GROUNDING_TASKS:
            exprs = record.get("expressions") or []
            if not exprs:
                stats.add(f"{kind}_without_expression", record.get(f"{kind}_id"))
                return None
            allow_crop = not has_ordinal(exprs)
            expression = clean_expression(exprs[rng.randrange(len(exprs))])
        ops = sample_ops(h, w, self.aug, rng, allow_crop=allow_crop)
        if expression is not None and has_flip(ops):
            expression = flip_expression(expression)
        return expression, ops

    # ------------------------------------------------------------------ videos
    def _video(
        self, record: dict[str, Any], task: str, has_masks: bool, rng: random.Random, stats: SkipStats
    ) -> dict[str, Any] | None:
        frames = sample_clip(record, self.clip_frames, self.frame_range, rng)
        h, w = record["height"], record["width"]
        sampled = self._expression_and_ops(record, task, h, w, rng, stats, "video")
        if sampled is None:
            return None
        expression, ops = sampled
        images, per_frame = [], []
        for f in frames:
            image = self._read(record["file_names"][f], record, stats)
            if image is None:
                return None
            images.append(torch.from_numpy(apply_image(image, ops, self.aug.pad_value)).permute(2, 0, 1).contiguous())
            present = [(i, a) for i, a in enumerate(record["annotations"]) if a["bboxes"][f] is not None]
            boxes = np.asarray([a["bboxes"][f] for _, a in present], dtype=np.float32).reshape(-1, 4)
            boxes = apply_boxes(boxes, ops, (h, w))
            masks = None
            if has_masks:
                raw = [decode_segmentation(a["segmentations"][f], h, w) for _, a in present]
                masks = apply_masks(np.stack(raw) if raw else np.zeros((0, h, w), dtype=bool), ops)
                boxes = boxes_from_masks(masks)
            keep = _keep_nonempty(boxes, masks)
            per_frame.append({
                "boxes": torch.from_numpy(boxes[keep]),
                "classes": torch.as_tensor([a["category_id"] for (_, a), k in zip(present, keep) if k],
                                           dtype=torch.int64),
                "ids": torch.as_tensor([i for (i, _), k in zip(present, keep) if k], dtype=torch.int64),
                "masks": None if masks is None else torch.from_numpy(masks[keep]),
            })
        if expression is not None and len(per_frame[0]["boxes"]) == 0:
            stats.add("grounding_target_cropped_away", record.get("video_id"))
            return None
        return {
            "image": images, "instances": per_frame, "task": task, "expression": expression,
            "height": h, "width": w, "file_name": record["file_names"][frames[0]], "frames": frames,
        }
