"""COCO and LVIS box / mask AP.

The matching and accumulation are done by pycocotools' ``COCOeval`` (or faster-coco-eval's
``COCOeval_faster`` when installed; both give the same numbers, tested). This module only loads and
validates files and reads the summary numbers off the accumulated precision/recall arrays.

LVIS: the ``lvis`` package (0.5.3) installs but cannot run on numpy >= 1.24 (it uses the removed
``np.float`` alias) and imports OpenCV at import time, so LVIS is evaluated with pycocotools plus
the lvis-api rules, which are re-applied here:

* at most ``max_dets`` (300) detections per image, highest scores kept, *before* matching;
* federated evaluation: a detection of category c in image i is evaluated only if c is annotated
  in i or listed in the image's ``neg_category_ids``; other detections are dropped;
* an unmatched detection of a category in the image's ``not_exhaustive_category_ids`` is ignored;
* annotations and detections with area 0 are dropped (lvis-api's ``get_ann_ids`` keeps area > 0);
* ``iscrowd`` is not used;
* AP is also reported per frequency group (APr / APc / APf, from each category's ``frequency``).

As in detectron2, ``bbox`` fields are removed from predictions for mask AP, because pycocotools
(and lvis-api) would otherwise take the *box* area as the instance area for the small / medium /
large split.

All values are in [0, 1]; a value is ``None`` when it is undefined (no ground truth in the slice).
"""

from __future__ import annotations

import contextlib
import copy
import io as _stdio
import math
from collections import defaultdict
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from eval.io import as_box, as_id, as_list, as_number, fail, load_json, require, to_rle

IOU_TYPES = ("bbox", "segm")
BACKENDS = ("auto", "pycocotools", "faster-coco-eval")

COCO_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
LVIS_FREQUENCIES = ("r", "c", "f")


def resolve_backend(backend: str = "auto") -> str:
    """``auto`` -> ``faster-coco-eval`` when it imports, else ``pycocotools``."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    if backend == "auto":
        try:
            import faster_coco_eval  # noqa: F401
        except ImportError:
            return "pycocotools"
        return "faster-coco-eval"
    return backend


# ----------------------------------------------------------------------------------------------
# Loading and validation


def load_coco_gt(src: Any, iou_type: str, lvis: bool = False) -> tuple[dict, str]:
    """Load and validate a COCO/LVIS ground-truth JSON; returns ``(clean copy, source name)``.

    The copy holds only what evaluation needs, with ``iscrowd`` defaulted to 0 (and forced to 0
    for LVIS) and segmentations normalised to compressed RLE.
    """
    if iou_type not in IOU_TYPES:
        raise ValueError(f"iou_type must be one of {IOU_TYPES}, got {iou_type!r}")
    data, name = load_json(src, "<ground truth>")
    if not isinstance(data, dict):
        raise fail(name, "ground truth must be a JSON object with 'images', 'annotations', 'categories'")
    images = as_list(require(data, "images", name, "ground truth"), name, "'images'")
    anns = as_list(require(data, "annotations", name, "ground truth"), name, "'annotations'")
    cats = as_list(require(data, "categories", name, "ground truth"), name, "'categories'")

    clean_images, sizes = [], {}
    for i, img in enumerate(images):
        where = f"image {i}"
        img_id = as_id(require(img, "id", name, where), name, where, "id")
        if img_id in sizes:
            raise fail(name, f"{where} repeats image id {img_id}")
        h = w = None
        if iou_type == "segm":
            h = as_id(require(img, "height", name, where), name, where, "height")
            w = as_id(require(img, "width", name, where), name, where, "width")
        sizes[img_id] = (h, w)
        rec = {"id": img_id, "height": h, "width": w}
        if lvis:
            for field in ("neg_category_ids", "not_exhaustive_category_ids"):
                ids = as_list(require(img, field, name, where), name, f"{where} field '{field}'")
                rec[field] = [as_id(c, name, where, field) for c in ids]
        clean_images.append(rec)

    clean_cats, cat_ids = [], set()
    for i, cat in enumerate(cats):
        where = f"category {i}"
        cat_id = as_id(require(cat, "id", name, where), name, where, "id")
        if cat_id in cat_ids:
            raise fail(name, f"{where} repeats category id {cat_id}")
        cat_ids.add(cat_id)
        rec = {"id": cat_id, "name": str(cat.get("name", cat_id))}
        if lvis and "frequency" in cat:
            if cat["frequency"] not in LVIS_FREQUENCIES:
                raise fail(name, f"{where} field 'frequency' must be one of r/c/f, got {cat['frequency']!r}")
            rec["frequency"] = cat["frequency"]
        clean_cats.append(rec)

    clean_anns, ann_ids = [], set()
    for i, ann in enumerate(anns):
        where = f"annotation {i}"
        ann_id = as_id(require(ann, "id", name, where), name, where, "id")
        if ann_id in ann_ids:
            raise fail(name, f"{where} repeats annotation id {ann_id}")
        ann_ids.add(ann_id)
        img_id = as_id(require(ann, "image_id", name, where), name, where, "image_id")
        if img_id not in sizes:
            raise fail(name, f"{where} refers to image_id {img_id}, which is not in 'images'")
        cat_id = as_id(require(ann, "category_id", name, where), name, where, "category_id")
        if cat_id not in cat_ids:
            raise fail(name, f"{where} refers to category_id {cat_id}, which is not in 'categories'")
        rec = {"id": ann_id, "image_id": img_id, "category_id": cat_id,
               "area": as_number(require(ann, "area", name, where), name, where, "area"),
               "iscrowd": 0 if lvis else int(bool(ann.get("iscrowd", 0)))}
        if iou_type == "bbox":
            rec["bbox"] = as_box(require(ann, "bbox", name, where), name, where)
        else:
            h, w = sizes[img_id]
            rec["segmentation"] = to_rle(require(ann, "segmentation", name, where), h, w, name, where)
        clean_anns.append(rec)
    return {"images": clean_images, "annotations": clean_anns, "categories": clean_cats}, name


_PLAIN_NUMBER = (int, float)


def _plain_box_record(p: Any, sizes: dict, cat_ids: set) -> bool:
    """True for a record that the full checks would accept unchanged (plain ints and floats)."""
    if type(p) is not dict:
        return False
    img, cat, score, box = p.get("image_id"), p.get("category_id"), p.get("score"), p.get("bbox")
    return (type(img) is int and img in sizes and type(cat) is int and cat in cat_ids
            and type(score) in _PLAIN_NUMBER and type(box) is list and len(box) == 4
            and all(type(v) in _PLAIN_NUMBER for v in box) and box[2] >= 0 and box[3] >= 0
            and math.isfinite(score) and all(math.isfinite(v) for v in box))


def load_coco_preds(src: Any, gt: dict, iou_type: str, gt_name: str = "<ground truth>") -> list[dict]:
    """Validate a COCO results list against the (clean) ground truth; returns clean records.

    Each record needs ``image_id``, ``category_id``, ``score`` and ``bbox`` ([x, y, w, h]) for box
    AP or ``segmentation`` (RLE or polygons, at the image's size) for mask AP.
    """
    preds, name = load_json(src, "<predictions>")
    preds = as_list(preds, name, "predictions")
    sizes = {img["id"]: (img["height"], img["width"]) for img in gt["images"]}
    cat_ids = {c["id"] for c in gt["categories"]}
    out = []
    for i, p in enumerate(preds):
        if iou_type == "bbox" and _plain_box_record(p, sizes, cat_ids):
            # Fast path for the usual well-formed record (LVIS val has ~6M of them).
            out.append({"image_id": p["image_id"], "category_id": p["category_id"],
                        "score": float(p["score"]), "bbox": [float(v) for v in p["bbox"]]})
            continue
        where = f"annotation {i}"
        img_id = as_id(require(p, "image_id", name, where), name, where, "image_id")
        if img_id not in sizes:
            raise fail(name, f"{where} refers to image_id {img_id}, which is not in {gt_name}")
        cat_id = as_id(require(p, "category_id", name, where), name, where, "category_id")
        if cat_id not in cat_ids:
            raise fail(name, f"{where} refers to category_id {cat_id}, which is not in {gt_name}")
        rec = {"image_id": img_id, "category_id": cat_id,
               "score": as_number(require(p, "score", name, where), name, where, "score")}
        if iou_type == "bbox":
            rec["bbox"] = as_box(require(p, "bbox", name, where), name, where)
        else:
            h, w = sizes[img_id]
            rec["segmentation"] = to_rle(require(p, "segmentation", name, where), h, w, name, where)
        out.append(rec)
    return out


# ----------------------------------------------------------------------------------------------
# Evaluation


def _quiet() -> contextlib.AbstractContextManager:
    # pycocotools prints progress to stdout; keep the CLI's stdout for the results table.
    return contextlib.redirect_stdout(_stdio.StringIO())


class _LvisCOCOeval(COCOeval):
    """pycocotools ``COCOeval`` with lvis-api's federated rules (see module docstring)."""

    def __init__(self, coco_gt: COCO, coco_dt: COCO, iou_type: str, max_dets: int,
                 neg: dict[int, set[int]], not_exhaustive: dict[int, set[int]]):
        super().__init__(coco_gt, coco_dt, iou_type)
        self.params.maxDets = [max_dets]
        self._neg = neg
        self._not_exhaustive = not_exhaustive

    def _prepare(self) -> None:
        super()._prepare()
        present: dict[int, set[int]] = defaultdict(set)
        for img_id, cat_id in self._gts:
            present[img_id].add(cat_id)
        # Federated rule: keep a detection only where its category's presence or absence is known.
        self._dts = defaultdict(list, {
            (img_id, cat_id): dts for (img_id, cat_id), dts in self._dts.items()
            if cat_id in present[img_id] or cat_id in self._neg[img_id]})

    def evaluateImg(self, imgId: int, catId: int, aRng: list, maxDet: int) -> dict | None:  # noqa: N802,N803
        res = super().evaluateImg(imgId, catId, aRng, maxDet)
        if res is not None and catId in self._not_exhaustive[imgId]:
            # Unmatched detections of a not-exhaustively annotated category are not false positives.
            res["dtIgnore"] = np.logical_or(res["dtIgnore"], res["dtMatches"] == 0)
        return res


def _limit_per_image(preds: list[dict], max_dets: int) -> list[dict]:
    """lvis-api ``limit_dets_per_image``: top-``max_dets`` by score per image, grouped by image."""
    by_img: dict[int, list[dict]] = defaultdict(list)
    for p in preds:
        by_img[p["image_id"]].append(p)
    out = []
    for anns in by_img.values():
        if len(anns) > max_dets:
            anns = sorted(anns, key=lambda a: a["score"], reverse=True)[:max_dets]
        out.extend(anns)
    return out


def _area(rec: dict, iou_type: str) -> float:
    if iou_type == "bbox":
        return rec["bbox"][2] * rec["bbox"][3]
    from pycocotools import mask as mask_utils

    from eval.io import rle_bytes

    return float(mask_utils.area(rle_bytes(rec["segmentation"])))


def _run(gt: dict, preds: list[dict], iou_type: str, backend: str, lvis: bool,
         max_dets: int) -> tuple[np.ndarray, np.ndarray, Any]:
    """Run evaluate + accumulate; returns ``(precision [T,R,K,A,M], recall [T,K,A,M], params)``."""
    # Both libraries add or replace top-level keys of the records; shallow copies keep ours intact
    # without a deep copy of a million LVIS detections.
    gt = {key: [dict(rec) for rec in recs] for key, recs in gt.items()}
    preds = [dict(p) for p in preds]
    for i, p in enumerate(preds):
        p["id"] = i + 1  # ids must be > 0: COCOeval stores matches as ids with 0 meaning "none"
        p["iscrowd"] = 0
        p["area"] = _area(p, iou_type)
    if backend == "faster-coco-eval":
        from faster_coco_eval import COCO as FasterCOCO
        from faster_coco_eval import COCOeval_faster

        if lvis:
            for cat in gt["categories"]:
                cat.setdefault("frequency", "f")  # faster-coco-eval requires it; groups are ours
        coco_gt = FasterCOCO(gt)
        coco_dt = coco_gt.loadRes(preds) if preds else _empty_results(coco_gt, FasterCOCO)
        ev = COCOeval_faster(coco_gt, coco_dt, iou_type, lvis_style=lvis, print_function=lambda *a: None)
        if lvis:
            ev.params.maxDets = [max_dets]
        ev.evaluate()
        ev.accumulate()
    else:
        with _quiet():
            coco_gt = COCO()
            coco_gt.dataset = gt
            coco_gt.createIndex()
            coco_dt = coco_gt.loadRes(preds) if preds else _empty_results(coco_gt, COCO)
            if lvis:
                neg = defaultdict(set, {im["id"]: set(im["neg_category_ids"]) for im in gt["images"]})
                nel = defaultdict(set, {im["id"]: set(im["not_exhaustive_category_ids"])
                                        for im in gt["images"]})
                ev = _LvisCOCOeval(coco_gt, coco_dt, iou_type, max_dets, neg, nel)
            else:
                ev = COCOeval(coco_gt, coco_dt, iou_type)
            ev.evaluate()
            ev.accumulate()
    return np.asarray(ev.eval["precision"]), np.asarray(ev.eval["recall"]), ev.params


def _empty_results(coco_gt: Any, cls: type) -> Any:
    # loadRes([]) fails in pycocotools (it indexes anns[0]); an empty result set means AP = 0.
    res = cls()
    res.dataset = {"images": list(coco_gt.dataset["images"]), "annotations": [],
                   "categories": copy.deepcopy(coco_gt.dataset["categories"])}
    with _quiet():
        res.createIndex()
    return res


def _mean_valid(s: np.ndarray) -> float | None:
    """Mean over entries > -1 (COCOeval's marker for "no ground truth"), else ``None``."""
    valid = s[s > -1]
    return float(np.mean(valid)) if valid.size else None


def _summarize(precision: np.ndarray, recall: np.ndarray, params: Any, ap: bool, iou: float | None = None,
               area: str = "all", max_det: int = 100, cat_idx: list[int] | None = None) -> float | None:
    """pycocotools' ``_summarize``, optionally restricted to a subset of category indices."""
    a = list(params.areaRngLbl).index(area)
    m = list(params.maxDets).index(max_det)
    s = precision[..., a, m] if ap else recall[..., a, m]  # [T, R, K] or [T, K]
    if iou is not None:
        s = s[np.isclose(np.asarray(params.iouThrs), iou)]
    if cat_idx is not None:
        s = s[..., cat_idx]
    return _mean_valid(s)


def evaluate_coco(gt: Any, preds: Any, iou_type: str = "bbox", backend: str = "auto",
                  progress: bool = False) -> dict[str, float | None]:
    """COCO box (``iou_type="bbox"``) or mask (``"segm"``) AP/AR.

    Args:
        gt: COCO ground-truth JSON path or dict.
        preds: COCO results JSON path or list of records.
        backend: ``auto`` (faster-coco-eval when installed), ``pycocotools`` or ``faster-coco-eval``.
        progress: accepted for a uniform API; the per-image loop runs inside the COCO library.
    Returns:
        ``AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl`` (pycocotools' ``stats``).
    """
    gt_data, gt_name = load_coco_gt(gt, iou_type)
    pred_recs = load_coco_preds(preds, gt_data, iou_type, gt_name)
    precision, recall, p = _run(gt_data, pred_recs, iou_type, resolve_backend(backend), False, 100)
    s = (precision, recall, p)
    return {
        "AP": _summarize(*s, True),
        "AP50": _summarize(*s, True, iou=0.5),
        "AP75": _summarize(*s, True, iou=0.75),
        "APs": _summarize(*s, True, area="small"),
        "APm": _summarize(*s, True, area="medium"),
        "APl": _summarize(*s, True, area="large"),
        "AR1": _summarize(*s, False, max_det=1),
        "AR10": _summarize(*s, False, max_det=10),
        "AR100": _summarize(*s, False),
        "ARs": _summarize(*s, False, area="small"),
        "ARm": _summarize(*s, False, area="medium"),
        "ARl": _summarize(*s, False, area="large"),
    }


def evaluate_lvis(gt: Any, preds: Any, iou_type: str = "bbox", backend: str = "auto",
                  max_dets: int = 300, progress: bool = False) -> dict[str, float | None]:
    """LVIS box or mask AP with the lvis-api rules (module docstring); arguments as ``evaluate_coco``.

    Returns:
        ``AP, AP50, AP75, APs, APm, APl, APr, APc, APf, AR@300, ARs@300, ARm@300, ARl@300``;
        APr/APc/APf are ``None`` when categories carry no ``frequency``.
    """
    gt_data, gt_name = load_coco_gt(gt, iou_type, lvis=True)
    pred_recs = load_coco_preds(preds, gt_data, iou_type, gt_name)
    # lvis-api ordering: limit per image first, then drop zero-area records (LVISEval._prepare).
    pred_recs = [p for p in _limit_per_image(pred_recs, max_dets) if _area(p, iou_type) > 0]
    gt_data["annotations"] = [a for a in gt_data["annotations"] if a["area"] > 0]
    cat_ids = sorted(c["id"] for c in gt_data["categories"])
    freq = {c["id"]: c.get("frequency") for c in gt_data["categories"]}
    precision, recall, p = _run(gt_data, pred_recs, iou_type, resolve_backend(backend), True, max_dets)
    s = (precision, recall, p)
    out: dict[str, float | None] = {
        "AP": _summarize(*s, True, max_det=max_dets),
        "AP50": _summarize(*s, True, iou=0.5, max_det=max_dets),
        "AP75": _summarize(*s, True, iou=0.75, max_det=max_dets),
        "APs": _summarize(*s, True, area="small", max_det=max_dets),
        "APm": _summarize(*s, True, area="medium", max_det=max_dets),
        "APl": _summarize(*s, True, area="large", max_det=max_dets),
    }
    for f in LVIS_FREQUENCIES:
        idx = [k for k, c in enumerate(cat_ids) if freq[c] == f]
        has_freq = any(v is not None for v in freq.values())
        out[f"AP{f}"] = _summarize(*s, True, max_det=max_dets, cat_idx=idx) if has_freq and idx else None
    out[f"AR@{max_dets}"] = _summarize(*s, False, max_det=max_dets)
    for area in ("small", "medium", "large"):
        out[f"AR{area[0]}@{max_dets}"] = _summarize(*s, False, area=area, max_det=max_dets)
    return out
