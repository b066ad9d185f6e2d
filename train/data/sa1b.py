"""Class-agnostic SA-1B-style mask data (task ``sa1b``, vocabulary ``['object']``).

Two layouts are read:

* the official one: a global COCO JSON with the boxes (one category) plus, next to every image, the SA-1B
  per-image JSON (``<image>.json``) whose ``annotations[*].segmentation`` RLEs hold the masks in the same order;
* a COCO JSON that carries the segmentations itself (UVO frames, ShapesWorld's class-agnostic export, ...).

The official preprocessing is applied when the masks are loaded (``mask_nms``): masks sorted by area, and a mask
is dropped when a larger kept one overlaps it with max(IoU, inter/area_a, inter/area_b) > 0.5, measured at 1/8
resolution.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from train.data.coco import load_coco_instances
from train.data.common import LoadedDataset, SkipStats, clean_box, decode_segmentation, read_json


def load_sa1b(
    json_path: str | Path, image_root: str | Path, dataset_name: str | None = None, *, name: str | None = None,
    per_image_masks: bool | None = None,
) -> LoadedDataset:
    """Args:
        per_image_masks: read masks from ``<image>.json`` next to each image.  None: only when the global file
            has no segmentations.
    """
    ds = load_coco_instances(json_path, image_root, dataset_name, masks=False if per_image_masks else None,
                             task="sa1b", name=name)
    use_files = per_image_masks if per_image_masks is not None else not ds.has_masks
    for record in ds.records:
        for ann in record["annotations"]:
            ann["category_id"] = 0
        if use_files:
            record["mask_file"] = str(Path(record["file_name"]).with_suffix(".json"))
    return LoadedDataset(ds.name, ds.records, ["object"], True, False, ds.stats, ds.source)


def read_sa1b_masks(record: dict[str, Any], stats: SkipStats) -> list[dict[str, Any]]:
    """Annotations (xyxy box + RLE) from a record's per-image SA-1B JSON."""
    data = read_json(record["mask_file"])
    anns = []
    for i, ann in enumerate(data.get("annotations", []) if isinstance(data, dict) else []):
        if not isinstance(ann, dict) or "segmentation" not in ann or "bbox" not in ann:
            stats.add("annotation_missing_fields", f"{record['mask_file']}: annotations[{i}]")
            continue
        box = clean_box(ann["bbox"], record["width"], record["height"], stats, record["mask_file"])
        if box is not None:
            anns.append({"bbox": box, "category_id": 0, "segmentation": ann["segmentation"]})
    return anns


def mask_nms(masks: np.ndarray, threshold: float = 0.5, stride: int = 8) -> np.ndarray:
    """Indices of masks [N, H, W] kept by the official SA-1B preprocessing, largest first."""
    if len(masks) == 0:
        return np.zeros(0, dtype=np.int64)
    small = F.max_pool2d(torch.from_numpy(masks[:, None].astype(np.float32)), stride, stride, ceil_mode=True)
    small = small.flatten(1) > 0
    area = small.sum(1).float()
    order = torch.argsort(area, descending=True)
    kept: list[int] = []
    for i in order.tolist():
        if area[i] == 0:
            continue
        ok = True
        for j in kept:
            inter = (small[i] & small[j]).sum().float()
            union = area[i] + area[j] - inter
            score = max(inter / union, inter / area[i], inter / area[j])
            if score > threshold:
                ok = False
                break
        if ok:
            kept.append(i)
    return np.asarray(kept, dtype=np.int64)


def decode_all(anns: list[dict[str, Any]], height: int, width: int) -> np.ndarray:
    if not anns:
        return np.zeros((0, height, width), dtype=bool)
    return np.stack([decode_segmentation(a["segmentation"], height, width) for a in anns])
