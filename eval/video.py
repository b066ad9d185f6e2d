"""YouTube-VIS / OVIS video instance segmentation AP.

This is the YouTube-VIS API (``ytvoseval``) definition: COCO AP where the "image" is a video, an
instance is a track, and the IoU of a predicted track with a ground-truth track is

    IoU = sum_t |P_t & G_t| / sum_t |P_t | G_t|

over all frames (a frame where one side is ``null`` adds that side's area to the union). A
track's area is the mean of its non-empty per-frame areas. Area ranges are YouTube-VIS's
(small < 128^2 <= medium < 256^2 <= large), maxDets 1/10/100.

pycocotools' ``COCOeval`` does the matching and accumulation; only ``computeIoU`` is replaced.

Files: ground truth is YouTube-VIS JSON (``videos`` with ``id``/``length``/``height``/``width``,
``annotations`` with ``id``, ``video_id``, ``category_id``, ``segmentations`` [one RLE/polygon or
``null`` per frame], ``iscrowd``, and ``categories``). Predictions are a list of ``{video_id,
category_id, score, segmentations}``. All values are in [0, 1]; ``None`` means undefined.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from tqdm import tqdm

from eval.coco import COCO_KEYS, _mean_valid, _quiet
from eval.io import as_id, as_list, as_number, fail, load_json, require, rle_bytes, to_rle

YTVIS_AREA_RANGES = {"all": (0.0, 1e5**2), "small": (0.0, 128.0**2), "medium": (128.0**2, 256.0**2),
                     "large": (256.0**2, 1e5**2)}


def _tracks(records: list, name: str, videos: dict[int, tuple[int, int, int]], cat_ids: set[int],
            kind: str, is_gt: bool) -> list[dict]:
    """Validate tracks and normalise their per-frame masks to RLE (``None`` for absent frames)."""
    out, seen_ids = [], set()
    for i, r in enumerate(records):
        where = f"{kind} {i}"
        vid = as_id(require(r, "video_id", name, where), name, where, "video_id")
        if vid not in videos:
            raise fail(name, f"{where} refers to video_id {vid}, which is not in 'videos'")
        cat = as_id(require(r, "category_id", name, where), name, where, "category_id")
        if cat not in cat_ids:
            raise fail(name, f"{where} refers to category_id {cat}, which is not in 'categories'")
        length, h, w = videos[vid]
        segs = as_list(require(r, "segmentations", name, where), name, f"{where} field 'segmentations'")
        if len(segs) != length:
            raise fail(name, f"{where} field 'segmentations' has {len(segs)} frames but video {vid} "
                             f"has {length}")
        # An empty polygon list is falsy in ytvoseval and so means "absent in this frame".
        rles = [None if s is None or (isinstance(s, list) and not s)
                else rle_bytes(to_rle(s, h, w, name, f"{where} frame {t}", "segmentations"))
                for t, s in enumerate(segs)]
        if is_gt and "areas" in r:
            # ytvoseval takes ground-truth track areas from the file's 'areas', not the masks.
            areas = as_list(r["areas"], name, f"{where} field 'areas'")
            areas = [0.0 if a is None else as_number(a, name, where, "areas") for a in areas]
        else:
            areas = [float(mask_utils.area(x)) for x in rles if x is not None]
        nonzero = [a for a in areas if a]  # ytvoseval averages the truthy (non-zero) areas only
        # pycocotools indexes by 'image_id'; here an "image" is a whole video.
        rec = {"video_id": vid, "image_id": vid, "category_id": cat, "segmentations": rles,
               "area": float(np.mean(nonzero)) if nonzero else 0.0}
        if is_gt:
            rec["id"] = as_id(require(r, "id", name, where), name, where, "id")
            if rec["id"] in seen_ids:
                raise fail(name, f"{where} repeats annotation id {rec['id']}")
            seen_ids.add(rec["id"])
            rec["iscrowd"] = int(bool(r.get("iscrowd", 0)))
        else:
            rec["score"] = as_number(require(r, "score", name, where), name, where, "score")
        out.append(rec)
    return out


def video_iou(d_seq: list, g_seq: list) -> float:
    """Track IoU: summed per-frame intersections / summed unions (``None`` frames allowed)."""
    inter = union = 0.0
    for d, g in zip(d_seq, g_seq):
        if d is not None and g is not None:
            i = float(mask_utils.area(mask_utils.merge([d, g], intersect=True)))
            inter += i
            union += float(mask_utils.area(d)) + float(mask_utils.area(g)) - i
        elif g is not None:
            union += float(mask_utils.area(g))
        elif d is not None:
            union += float(mask_utils.area(d))
    return inter / union if union > 0 else 0.0


class _VideoCOCOeval(COCOeval):
    """``COCOeval`` over videos: images are videos, annotations are tracks, IoU is ``video_iou``.

    Runs with ``iouType="bbox"`` so that pycocotools does not try to rasterise ``segmentation``;
    the IoU used is always the mask-track IoU from ``computeIoU`` below.
    """

    def __init__(self, coco_gt: COCO, coco_dt: COCO, progress: bool):
        super().__init__(coco_gt, coco_dt, "bbox")
        self._bar = tqdm(total=len(self.params.imgIds), desc="ytvis videos", disable=not progress)
        self._last_img = None

    def computeIoU(self, imgId: int, catId: int) -> np.ndarray | list:  # noqa: N802,N803
        if imgId != self._last_img:  # evaluate() walks videos in the outer loop
            self._bar.update(1)
            self._last_img = imgId
        gt, dt = self._gts[imgId, catId], self._dts[imgId, catId]
        if len(gt) == 0 and len(dt) == 0:
            return []
        order = np.argsort([-d["score"] for d in dt], kind="mergesort")
        dt = [dt[i] for i in order][: self.params.maxDets[-1]]
        ious = np.zeros((len(dt), len(gt)))
        for i, j in np.ndindex(ious.shape):
            ious[i, j] = video_iou(dt[i]["segmentations"], gt[j]["segmentations"])
        return ious


def evaluate_ytvis(gt: Any, preds: Any, progress: bool = False,
                   area_ranges: dict[str, tuple[float, float]] | None = None) -> dict[str, float | None]:
    """YouTube-VIS / OVIS mask AP (module docstring).

    Args:
        area_ranges: ``{"all", "small", "medium", "large"} -> (lo, hi)`` track-area bounds;
            defaults to YouTube-VIS's. (Pass COCO's to compare with image AP.)
    Returns:
        ``AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl``.
    """
    gt_obj, gt_name = load_json(gt, "<ground truth>")
    if not isinstance(gt_obj, dict):
        raise fail(gt_name, "ground truth must be a JSON object with 'videos', 'annotations', 'categories'")
    video_list = as_list(require(gt_obj, "videos", gt_name, "ground truth"), gt_name, "'videos'")
    videos: dict[int, tuple[int, int, int]] = {}
    for i, v in enumerate(video_list):
        where = f"video {i}"
        vid = as_id(require(v, "id", gt_name, where), gt_name, where, "id")
        if vid in videos:
            raise fail(gt_name, f"{where} repeats video id {vid}")
        length = v["length"] if "length" in v else len(require(v, "file_names", gt_name, where))
        videos[vid] = (as_id(length, gt_name, where, "length"),
                       as_id(require(v, "height", gt_name, where), gt_name, where, "height"),
                       as_id(require(v, "width", gt_name, where), gt_name, where, "width"))
    cats = as_list(require(gt_obj, "categories", gt_name, "ground truth"), gt_name, "'categories'")
    cat_ids = {as_id(require(c, "id", gt_name, f"category {i}"), gt_name, f"category {i}", "id")
               for i, c in enumerate(cats)}
    gt_anns = as_list(require(gt_obj, "annotations", gt_name, "ground truth"), gt_name, "'annotations'")
    gt_tracks = _tracks(gt_anns, gt_name, videos, cat_ids, "annotation", is_gt=True)
    pred_obj, pred_name = load_json(preds, "<predictions>")
    pred_tracks = _tracks(as_list(pred_obj, pred_name, "predictions"), pred_name, videos, cat_ids,
                          "prediction", is_gt=False)
    for i, p in enumerate(pred_tracks):
        p.update(id=i + 1, iscrowd=0)  # COCOeval stores matched ids; 0 means "unmatched"

    images = [{"id": vid} for vid in videos]
    categories = [{"id": c} for c in sorted(cat_ids)]
    with _quiet():
        coco_gt, coco_dt = COCO(), COCO()
        coco_gt.dataset = {"images": images, "annotations": gt_tracks, "categories": categories}
        coco_dt.dataset = {"images": images, "annotations": pred_tracks, "categories": categories}
        coco_gt.createIndex()
        coco_dt.createIndex()
        ev = _VideoCOCOeval(coco_gt, coco_dt, progress)
        ranges = area_ranges or YTVIS_AREA_RANGES
        ev.params.areaRngLbl = ["all", "small", "medium", "large"]
        ev.params.areaRng = [list(ranges[k]) for k in ev.params.areaRngLbl]
        ev.evaluate()
        ev.accumulate()
    ev._bar.close()
    precision, recall, p = ev.eval["precision"], ev.eval["recall"], ev.params

    def summ(ap: bool, iou: float | None = None, area: str = "all", max_det: int = 100) -> float | None:
        a, m = p.areaRngLbl.index(area), list(p.maxDets).index(max_det)
        s = precision[..., a, m] if ap else recall[..., a, m]
        if iou is not None:
            s = s[np.isclose(p.iouThrs, iou)]
        return _mean_valid(s)

    values = [summ(True), summ(True, iou=0.5), summ(True, iou=0.75), summ(True, area="small"),
              summ(True, area="medium"), summ(True, area="large"), summ(False, max_det=1),
              summ(False, max_det=10), summ(False), summ(False, area="small"), summ(False, area="medium"),
              summ(False, area="large")]
    return dict(zip(COCO_KEYS, values))
