"""RefCOCO / RefCOCO+ / RefCOCOg: REC precision@0.5 and RES overall / mean IoU.

One sample is one referring expression. Ground truth is a list (or ``{"samples": [...]}``) of
``{"id", "bbox": [x, y, w, h], "segmentation": RLE or polygons, "height", "width"}``; ``bbox`` is
needed for REC, ``segmentation`` for RES. Predictions are a list of ``{"id", "bbox"?,
"segmentation"?, "score"?}``; REC metrics are computed when predictions carry boxes, RES metrics
when they carry masks. When an id has several predictions the highest-scoring one is the top-1
answer. A ground-truth sample with no prediction counts as a miss (box IoU 0, empty mask),
so an unfinished run cannot score higher than a finished one.

Metrics (GLEE reports ``P@0.5`` and ``oIoU``):
  * ``P@0.5``: share of samples whose top-1 box has IoU >= 0.5 with the ground-truth box;
  * ``box_mIoU``: mean box IoU;
  * ``oIoU`` (= cIoU): sum of mask intersections / sum of mask unions over the split;
  * ``mIoU``: mean per-sample mask IoU, where a sample whose ground truth and prediction are both
    empty scores 1.0 (LISA's convention; only gRefCOCO has empty targets).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from tqdm import tqdm

from eval.io import as_box, as_id, as_list, as_number, fail, load_json, require, rle_bytes, to_rle


def _sample_key(rec: Any, name: str, where: str) -> str:
    # Ids are often ints (sent_id) but some exports use strings such as "refid_sentid".
    value = require(rec, "id", name, where)
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        return str(value)
    return str(as_id(value, name, where, "id"))


def _size(rec: dict, name: str, where: str) -> tuple[int | None, int | None]:
    if "height" in rec and "width" in rec:
        return (as_id(rec["height"], name, where, "height"), as_id(rec["width"], name, where, "width"))
    return None, None


def box_iou_xywh(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise IoU of boxes ``a [N, 4]`` and ``b [N, 4]`` in ``[x, y, w, h]``; returns ``[N]``.

    Continuous coordinates (no +1), as in pycocotools; a zero-area union gives IoU 0.
    """
    a, b = np.asarray(a, float).reshape(-1, 4), np.asarray(b, float).reshape(-1, 4)
    iw = np.clip(np.minimum(a[:, 0] + a[:, 2], b[:, 0] + b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, 1] + a[:, 3], b[:, 1] + b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    inter = iw * ih
    union = a[:, 2] * a[:, 3] + b[:, 2] * b[:, 3] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def evaluate_refcoco(gt: Any, preds: Any, progress: bool = False) -> dict[str, float | int | None]:
    """Score referring-expression predictions (module docstring).

    Returns:
        ``P@0.5`` and ``box_mIoU`` when ground truth has boxes, ``oIoU`` and ``mIoU`` when it has
        masks (``None`` when there are no samples), plus ``num_samples`` and ``num_missing``.
    """
    gt_obj, gt_name = load_json(gt, "<ground truth>")
    if isinstance(gt_obj, dict):
        gt_obj = require(gt_obj, "samples", gt_name, "ground truth")
    samples = as_list(gt_obj, gt_name, "ground-truth samples")
    pred_obj, pred_name = load_json(preds, "<predictions>")
    pred_list = as_list(pred_obj, pred_name, "predictions")

    gts: dict[str, dict] = {}
    for i, s in enumerate(samples):
        where = f"sample {i}"
        key = _sample_key(s, gt_name, where)
        if key in gts:
            raise fail(gt_name, f"{where} repeats id {key!r}")
        if "bbox" not in s and "segmentation" not in s:
            raise fail(gt_name, f"{where} has neither a 'bbox' nor a 'segmentation' field")
        h, w = _size(s, gt_name, where)
        rec: dict[str, Any] = {}
        if "bbox" in s:
            rec["bbox"] = as_box(s["bbox"], gt_name, where)
        if "segmentation" in s:
            rec["segmentation"] = to_rle(s["segmentation"], h, w, gt_name, where)
        gts[key] = rec
    has_box = any("bbox" in g for g in gts.values())
    has_mask = any("segmentation" in g for g in gts.values())
    if has_box and not all("bbox" in g for g in gts.values()):
        raise fail(gt_name, "some samples have a 'bbox' and others do not")
    if has_mask and not all("segmentation" in g for g in gts.values()):
        raise fail(gt_name, "some samples have a 'segmentation' and others do not")

    # Score what the predictions provide: a box-only (REC) model on a file with boxes and masks
    # gets P@0.5 only. With no usable field at all, the per-record check below names the field.
    has_box_pred = any(isinstance(p, dict) and "bbox" in p for p in pred_list)
    has_mask_pred = any(isinstance(p, dict) and "segmentation" in p for p in pred_list)
    if pred_list and ((has_box and has_box_pred) or (has_mask and has_mask_pred)):
        has_box, has_mask = has_box and has_box_pred, has_mask and has_mask_pred

    top1: dict[str, tuple[float, dict]] = {}
    for i, p in enumerate(pred_list):
        where = f"prediction {i}"
        key = _sample_key(p, pred_name, where)
        if key not in gts:
            raise fail(pred_name, f"{where} has id {key!r}, which is not in {gt_name}")
        score = as_number(p["score"], pred_name, where, "score") if "score" in p else 0.0
        rec = {}
        if has_box:
            rec["bbox"] = as_box(require(p, "bbox", pred_name, where), pred_name, where)
        if has_mask:
            h, w = (int(v) for v in gts[key]["segmentation"]["size"])
            rec["segmentation"] = to_rle(require(p, "segmentation", pred_name, where), h, w, pred_name, where)
        if key not in top1 or score > top1[key][0]:  # first one wins ties: stable for score-less files
            top1[key] = (score, rec)

    keys = list(gts)
    out: dict[str, float | int | None] = {"num_samples": len(keys),
                                          "num_missing": sum(k not in top1 for k in keys)}
    if has_box:
        gt_boxes = np.array([gts[k]["bbox"] for k in keys], float).reshape(-1, 4)
        pr_boxes = np.array([top1[k][1]["bbox"] if k in top1 else [0, 0, 0, 0] for k in keys],
                            float).reshape(-1, 4)
        ious = box_iou_xywh(pr_boxes, gt_boxes)
        out["P@0.5"] = float(np.mean(ious >= 0.5)) if keys else None
        out["box_mIoU"] = float(np.mean(ious)) if keys else None
    if has_mask:
        inters, unions = np.zeros(len(keys)), np.zeros(len(keys))
        for n, k in enumerate(tqdm(keys, desc="refcoco masks", disable=not progress)):
            g = rle_bytes(gts[k]["segmentation"])
            if k not in top1:
                unions[n] = mask_utils.area(g)
                continue
            d = rle_bytes(top1[k][1]["segmentation"])
            inters[n] = mask_utils.area(mask_utils.merge([d, g], intersect=True))
            unions[n] = mask_utils.area(d) + mask_utils.area(g) - inters[n]
        per_sample = np.divide(inters, unions, out=np.ones_like(inters), where=unions > 0)
        out["oIoU"] = float(inters.sum() / unions.sum()) if unions.sum() > 0 else (1.0 if keys else None)
        out["mIoU"] = float(per_sample.mean()) if keys else None
    return out
