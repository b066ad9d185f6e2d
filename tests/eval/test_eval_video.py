"""YouTube-VIS video AP: hand-computed track IoU, equality with COCO mask AP on one-frame videos."""

import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from eval.coco import COCO_KEYS, evaluate_coco
from eval.video import evaluate_ytvis, video_iou


def _rle(mask):
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode()}


def _box_mask(y, x, h, w, shape=(20, 20)):
    m = np.zeros(shape, bool)
    m[y: y + h, x: x + w] = True
    return m


def _ytvis_gt(tracks, length, shape=(20, 20)):
    return {"videos": [{"id": 1, "length": length, "height": shape[0], "width": shape[1]}],
            "categories": [{"id": 1}, {"id": 2}],
            "annotations": [{"id": k + 1, "video_id": 1, "category_id": c, "iscrowd": 0,
                             "segmentations": [None if m is None else _rle(m) for m in segs]}
                            for k, (c, segs) in enumerate(tracks)]}


def test_video_iou_sums_over_frames():
    a, b = _box_mask(0, 0, 2, 2), _box_mask(0, 1, 2, 2)  # overlap 2 pixels, union 6
    rle = lambda m: mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))  # noqa: E731
    # Frame 0: I=2, U=6. Frame 1: prediction only (adds 4 to the union). Frame 2: both absent.
    assert video_iou([rle(a), rle(a), None], [rle(b), None, None]) == pytest.approx(2 / 10)
    assert video_iou([None], [None]) == 0.0


def test_track_iou_half_gives_ap50_only():
    # GT exists in frame 0 only; the prediction matches it there and adds a disjoint frame-1 mask:
    # track IoU = 4 / (4 + 4) = 0.5, a match only at the 0.5 threshold (1 of 10).
    gt = _ytvis_gt([(1, [_box_mask(0, 0, 2, 2), None])], length=2)
    preds = [{"video_id": 1, "category_id": 1, "score": 0.9,
              "segmentations": [_rle(_box_mask(0, 0, 2, 2)), _rle(_box_mask(10, 10, 2, 2))]}]
    r = evaluate_ytvis(gt, preds)
    assert r["AP50"] == pytest.approx(1.0)
    assert r["AP75"] == pytest.approx(0.0)
    assert r["AP"] == pytest.approx(0.1)
    assert r["APs"] == pytest.approx(0.1) and r["APm"] is None  # 4-pixel track: small (< 128^2)


def test_empty_predictions_and_empty_ground_truth():
    gt = _ytvis_gt([(1, [_box_mask(0, 0, 4, 4)])], length=1)
    assert evaluate_ytvis(gt, [])["AP"] == 0.0
    r = evaluate_ytvis(_ytvis_gt([], length=1), [])
    assert all(r[k] is None for k in COCO_KEYS)


def _one_frame_pair(seed, n_img=5, shape=(32, 48)):
    """The same random data as a COCO image set and as a set of one-frame videos."""
    rng = np.random.default_rng(seed)
    coco_gt = {"images": [], "annotations": [], "categories": [{"id": 1}, {"id": 2}]}
    vis_gt = {"videos": [], "annotations": [], "categories": [{"id": 1}, {"id": 2}]}
    coco_pred, vis_pred = [], []

    def rand_mask():
        y, x = rng.integers(0, shape[0] - 3), rng.integers(0, shape[1] - 3)
        return _box_mask(y, x, int(rng.integers(2, 14)), int(rng.integers(2, 14)), shape)

    for i in range(1, n_img + 1):
        coco_gt["images"].append({"id": i, "height": shape[0], "width": shape[1]})
        vis_gt["videos"].append({"id": i, "length": 1, "height": shape[0], "width": shape[1]})
        gt_masks = []
        for _ in range(rng.integers(1, 5)):
            m, c = rand_mask(), int(rng.integers(1, 3))
            gt_masks.append((m, c))
            k = len(coco_gt["annotations"]) + 1
            coco_gt["annotations"].append({"id": k, "image_id": i, "category_id": c, "iscrowd": 0,
                                           "segmentation": _rle(m), "area": float(m.sum())})
            vis_gt["annotations"].append({"id": k, "video_id": i, "category_id": c, "iscrowd": 0,
                                          "segmentations": [_rle(m)]})
        dets = [(rand_mask(), int(rng.integers(1, 3))) for _ in range(rng.integers(0, 6))]
        for m, c in gt_masks:  # perturbed copies so that AP is well above zero
            m2 = m.copy()
            m2[int(rng.integers(0, shape[0])), :] = True
            dets.append((m2 if rng.random() < 0.5 else m, c))
        for m, c in dets:
            score = float(rng.random())
            coco_pred.append({"image_id": i, "category_id": c, "segmentation": _rle(m), "score": score})
            vis_pred.append({"video_id": i, "category_id": c, "segmentations": [_rle(m)], "score": score})
    return coco_gt, coco_pred, vis_gt, vis_pred


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_one_frame_video_ap_equals_coco_mask_ap(seed):
    coco_gt, coco_pred, vis_gt, vis_pred = _one_frame_pair(seed)
    coco = evaluate_coco(coco_gt, coco_pred, "segm", backend="pycocotools")
    assert coco["AP"] > 0.1
    # With COCO's area ranges every summary number must agree.
    coco_ranges = {"all": (0, 1e10), "small": (0, 32**2), "medium": (32**2, 96**2), "large": (96**2, 1e10)}
    vis = evaluate_ytvis(vis_gt, vis_pred, area_ranges=coco_ranges)
    for k in COCO_KEYS:
        assert (vis[k] is None and coco[k] is None) or vis[k] == pytest.approx(coco[k], abs=1e-12), k
    # With YouTube-VIS's own area ranges the area-independent numbers still agree.
    vis = evaluate_ytvis(vis_gt, vis_pred)
    for k in ("AP", "AP50", "AP75", "AR1", "AR10", "AR100"):
        assert vis[k] == pytest.approx(coco[k], abs=1e-12), k


def test_ground_truth_areas_field_is_used_for_area_ranges():
    # ytvoseval takes a GT track's area from 'areas'; a huge stated area moves it to "large".
    gt = _ytvis_gt([(1, [_box_mask(0, 0, 2, 2)])], length=1)
    gt["annotations"][0]["areas"] = [300.0 * 300.0]
    preds = [{"video_id": 1, "category_id": 1, "score": 1.0, "segmentations": [_rle(_box_mask(0, 0, 2, 2))]}]
    r = evaluate_ytvis(gt, preds)
    assert r["APl"] == pytest.approx(1.0) and r["APs"] is None


def test_malformed_files(tmp_path):
    gt = _ytvis_gt([(1, [_box_mask(0, 0, 2, 2), None])], length=2)
    path = tmp_path / "results.json"
    path.write_text(json.dumps([{"video_id": 1, "category_id": 1, "score": 1.0,
                                 "segmentations": [_rle(_box_mask(0, 0, 2, 2))]}]))
    with pytest.raises(ValueError, match=r"results\.json: prediction 0 field 'segmentations' has 1 "
                                         r"frames but video 1 has 2"):
        evaluate_ytvis(gt, str(path))
    with pytest.raises(ValueError, match="prediction 0 has no 'score' field"):
        evaluate_ytvis(gt, [{"video_id": 1, "category_id": 1, "segmentations": [None, None]}])
    with pytest.raises(ValueError, match="prediction 0 refers to video_id 5"):
        evaluate_ytvis(gt, [{"video_id": 5, "category_id": 1, "score": 1, "segmentations": [None, None]}])
    del gt["videos"][0]["height"]
    with pytest.raises(ValueError, match="<ground truth>: video 0 has no 'height' field"):
        evaluate_ytvis(gt, [])
