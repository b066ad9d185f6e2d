"""COCO and LVIS AP: hand-computed cases, parity with pycocotools / faster-coco-eval, bad files."""

import contextlib
import copy
import io
import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from eval.coco import COCO_KEYS, evaluate_coco, evaluate_lvis

HAS_FASTER = True
try:
    import faster_coco_eval  # noqa: F401
except ImportError:
    HAS_FASTER = False

BACKENDS = ["pycocotools"] + (["faster-coco-eval"] if HAS_FASTER else [])

# Hand-computed AP for ranked detections [TP, FP, TP] against 2 ground truths: the interpolated
# precision is 1 for recall <= 0.5 (51 of the 101 recall points) and 2/3 above (50 points).
AP_TP_FP_TP = (51 * 1.0 + 50 * (2 / 3)) / 101


def _gt(anns, images=((1, 100, 100),), cats=(1,)):
    return {"images": [{"id": i, "height": h, "width": w} for i, h, w in images],
            "categories": [{"id": c, "name": f"c{c}"} for c in cats],
            "annotations": [{"id": k + 1, "iscrowd": 0, **a} for k, a in enumerate(anns)]}


def _box_ann(img, cat, box):
    return {"image_id": img, "category_id": cat, "bbox": box, "area": box[2] * box[3]}


def _rle(mask):
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode()}


@pytest.mark.parametrize("backend", BACKENDS)
def test_hand_computed_ap_tp_fp_tp(backend):
    # Two 40x40 (medium) boxes; detections ranked TP, FP, TP with perfect overlap.
    gt = _gt([_box_ann(1, 1, [0, 0, 40, 40]), _box_ann(1, 1, [50, 50, 40, 40])])
    preds = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 40, 40], "score": 0.9},
             {"image_id": 1, "category_id": 1, "bbox": [0, 50, 40, 40], "score": 0.8},
             {"image_id": 1, "category_id": 1, "bbox": [50, 50, 40, 40], "score": 0.7}]
    r = evaluate_coco(gt, preds, "bbox", backend=backend)
    for key in ("AP", "AP50", "AP75", "APm"):
        assert r[key] == pytest.approx(AP_TP_FP_TP, abs=1e-12)
    assert r["APs"] is None and r["APl"] is None  # no ground truth of those sizes
    assert r["AR1"] == pytest.approx(0.5)  # only the top detection per image counts
    assert r["AR100"] == pytest.approx(1.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_perfect_masks_give_ap_one(backend):
    masks = [np.zeros((60, 80), bool) for _ in range(3)]
    masks[0][5:15, 5:20] = True
    masks[1][20:50, 30:70] = True
    masks[2][40:45, 0:3] = True
    anns = [{"image_id": 1, "category_id": 1 + k % 2, "segmentation": _rle(m), "area": float(m.sum())}
            for k, m in enumerate(masks)]
    gt = _gt(anns, images=((1, 60, 80),), cats=(1, 2))
    preds = [{"image_id": 1, "category_id": a["category_id"], "segmentation": a["segmentation"], "score": 0.5}
             for a in anns]
    r = evaluate_coco(gt, preds, "segm", backend=backend)
    assert r["AP"] == pytest.approx(1.0) and r["AR100"] == pytest.approx(1.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_predictions_score_zero(backend):
    gt = _gt([_box_ann(1, 1, [0, 0, 40, 40])])
    r = evaluate_coco(gt, [], "bbox", backend=backend)
    assert r["AP"] == 0.0 and r["AR100"] == 0.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_ground_truth_is_undefined(backend):
    gt = _gt([])
    preds = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.3}]
    r = evaluate_coco(gt, preds, "bbox", backend=backend)
    assert all(r[k] is None for k in COCO_KEYS)


def _random_dataset(seed, lvis=False, n_img=6, n_cat=4, h=40, w=56):
    """Random rectangles with a missing row, noisy detections and near-copies of the ground truth."""
    rng = np.random.default_rng(seed)
    images, anns, preds = [], [], []

    def rand_mask():
        m = np.zeros((h, w), bool)
        y0, x0 = rng.integers(0, h - 4), rng.integers(0, w - 4)
        m[y0: y0 + rng.integers(2, h - y0 + 1), x0: x0 + rng.integers(2, w - x0 + 1)] = True
        m[rng.integers(0, h), :] = False
        return m

    for i in range(1, n_img + 1):
        present = set()
        for _ in range(rng.integers(0, 6)):
            m = rand_mask()
            if not m.any():
                continue
            c = int(rng.integers(1, n_cat + 1))
            present.add(c)
            rle = _rle(m)
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": c, "iscrowd": 0,
                         "segmentation": rle, "area": float(m.sum()),
                         "bbox": [float(v) for v in mask_utils.toBbox(rle)]})
        img = {"id": i, "height": h, "width": w}
        if lvis:
            absent = [c for c in range(1, n_cat + 1) if c not in present]
            img["neg_category_ids"] = absent[: len(absent) // 2]
            img["not_exhaustive_category_ids"] = sorted(present)[:1]
        images.append(img)
        for _ in range(rng.integers(0, 12)):
            rle = _rle(rand_mask())
            box = [float(v) + rng.normal(0, 2) for v in mask_utils.toBbox(rle)]
            box[2:] = [max(box[2], 0.0), max(box[3], 0.0)]
            preds.append({"image_id": i, "category_id": int(rng.integers(1, n_cat + 1)), "bbox": box,
                          "segmentation": rle, "score": float(rng.random())})
        for a in anns:
            if a["image_id"] == i and rng.random() < 0.7:
                box = [v + rng.normal(0, 1.5) for v in a["bbox"]]
                box[2:] = [max(box[2], 0.0), max(box[3], 0.0)]
                preds.append({"image_id": i, "category_id": a["category_id"], "bbox": box,
                              "segmentation": a["segmentation"], "score": float(rng.random())})
    cats = [{"id": c, "name": f"c{c}", **({"frequency": "rcf"[c % 3]} if lvis else {})}
            for c in range(1, n_cat + 1)]
    return {"images": images, "annotations": anns, "categories": cats}, preds


def _pycocotools_stats(gt, preds, iou_type):
    preds = copy.deepcopy(preds)
    for p in preds:  # the field the other IoU type uses would change pycocotools' area rule
        p.pop("segmentation" if iou_type == "bbox" else "bbox")
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        ev = COCOeval(coco_gt, coco_gt.loadRes(preds), iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_random_predictions_match_pycocotools(iou_type, backend):
    for seed in range(3):
        gt, preds = _random_dataset(seed)
        ref = _pycocotools_stats(gt, preds, iou_type)
        got = evaluate_coco(gt, preds, iou_type, backend=backend)
        got = np.array([-1.0 if got[k] is None else got[k] for k in COCO_KEYS])
        assert ref[0] > 0.02  # the data must make AP non-trivial for the comparison to mean anything
        np.testing.assert_allclose(got, ref, atol=1e-6)


def _lvis_case():
    """Image 1: cat 1 (rare, not exhaustive), cat 2 negative. Image 2: cats 2 (frequent), 3 (common)."""
    box_a, box_b, box_c = [10, 10, 40, 40], [0, 0, 30, 30], [50, 50, 30, 30]
    gt = {"images": [{"id": 1, "height": 100, "width": 100, "neg_category_ids": [2],
                      "not_exhaustive_category_ids": [1]},
                     {"id": 2, "height": 100, "width": 100, "neg_category_ids": [],
                      "not_exhaustive_category_ids": []}],
          "categories": [{"id": 1, "frequency": "r"}, {"id": 2, "frequency": "f"},
                         {"id": 3, "frequency": "c"}],
          "annotations": [{"id": 1, **_box_ann(1, 1, box_a)}, {"id": 2, **_box_ann(2, 2, box_b)},
                          {"id": 3, **_box_ann(2, 3, box_c)}]}
    preds = [{"image_id": 1, "category_id": 1, "bbox": box_a, "score": 0.8},
             {"image_id": 1, "category_id": 1, "bbox": [70, 70, 20, 20], "score": 0.95},  # not exhaustive
             {"image_id": 1, "category_id": 2, "bbox": [70, 0, 20, 20], "score": 0.9},  # negative: FP
             {"image_id": 1, "category_id": 3, "bbox": [0, 70, 20, 20], "score": 0.99},  # unknown: dropped
             {"image_id": 2, "category_id": 2, "bbox": box_b, "score": 0.5},
             {"image_id": 2, "category_id": 3, "bbox": box_c, "score": 0.6}]
    return gt, preds


@pytest.mark.parametrize("backend", BACKENDS)
def test_lvis_federated_rules_hand_computed(backend):
    gt, preds = _lvis_case()
    r = evaluate_lvis(gt, preds, "bbox", backend=backend)
    # cat 1: the unmatched high-scoring detection is ignored -> 1; cat 2: FP then TP -> 0.5;
    # cat 3: the detection on image 1 is not evaluated (cat 3 neither present nor negative) -> 1.
    assert r["APr"] == pytest.approx(1.0)
    assert r["APf"] == pytest.approx(0.5)
    assert r["APc"] == pytest.approx(1.0)
    assert r["AP"] == pytest.approx(2.5 / 3)
    assert r["AR@300"] == pytest.approx(1.0)
    # The same data under plain COCO rules penalises all three extra detections.
    c = evaluate_coco({k: v for k, v in gt.items()}, preds, "bbox", backend=backend)
    assert c["AP"] == pytest.approx(0.5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_lvis_max_dets_per_image(backend):
    gt, preds = _lvis_case()
    # Keeping one detection per image leaves image 2 with only its cat-3 match (score 0.6).
    r = evaluate_lvis(gt, preds, "bbox", backend=backend, max_dets=1)
    assert r["APf"] == pytest.approx(0.0)
    assert r["AR@1"] == pytest.approx(1 / 3)


def test_lvis_without_frequency_reports_no_groups():
    gt, preds = _lvis_case()
    for c in gt["categories"]:
        del c["frequency"]
    r = evaluate_lvis(gt, preds, "bbox", backend="pycocotools")
    assert r["APr"] is None and r["APc"] is None and r["APf"] is None
    assert r["AP"] == pytest.approx(2.5 / 3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_lvis_empty_predictions_and_empty_ground_truth(backend):
    gt, _ = _lvis_case()
    assert evaluate_lvis(gt, [], "bbox", backend=backend)["AP"] == 0.0
    gt["annotations"] = []
    assert evaluate_lvis(gt, [], "bbox", backend=backend)["AP"] is None


@pytest.mark.skipif(not HAS_FASTER, reason="faster-coco-eval not installed")
@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_lvis_random_pycocotools_equals_faster_coco_eval(iou_type):
    # Two independent implementations of the federated rules (ours on pycocotools, and
    # faster-coco-eval's lvis_style) must agree; both were also checked against lvis-api 0.5.3.
    for seed in range(3):
        gt, preds = _random_dataset(seed, lvis=True)
        a = evaluate_lvis(gt, preds, iou_type, backend="pycocotools", max_dets=7)
        b = evaluate_lvis(gt, preds, iou_type, backend="faster-coco-eval", max_dets=7)
        assert a["AP"] > 0.02
        for k in a:
            assert (a[k] is None and b[k] is None) or a[k] == pytest.approx(b[k], abs=1e-6), k


def test_malformed_prediction_names_file_and_field(tmp_path):
    gt_file, pred_file = tmp_path / "gt.json", tmp_path / "preds.json"
    gt_file.write_text(json.dumps(_gt([_box_ann(1, 1, [0, 0, 4, 4])])))
    good = {"image_id": 1, "category_id": 1, "bbox": [0, 0, 4, 4], "score": 0.5}
    pred_file.write_text(json.dumps([good, good, good, {"image_id": 1, "category_id": 1, "score": 0.5}]))
    with pytest.raises(ValueError, match=r"preds\.json: annotation 3 has no 'bbox' field"):
        evaluate_coco(str(gt_file), str(pred_file), "bbox")


@pytest.mark.parametrize("change, message", [
    ({"image_id": 9}, "image_id 9, which is not in"),
    ({"category_id": 7}, "category_id 7"),
    ({"bbox": [0, 0, 1]}, r"field 'bbox' must be \[x, y, w, h\]"),
    ({"bbox": [0, 0, -1, 1]}, "field 'bbox' has negative width or height"),
    ({"score": "high"}, "field 'score' must be a number"),
    ({"score": float("nan")}, "field 'score' must be finite"),
    ({"score": None}, "field 'score' must be a number"),
])
def test_malformed_prediction_records(change, message):
    gt = _gt([_box_ann(1, 1, [0, 0, 4, 4])])
    bad = {"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1.0, **change}
    with pytest.raises(ValueError, match=message):
        evaluate_coco(gt, [bad], "bbox")
    with pytest.raises(ValueError, match="annotation 0 has no 'score' field"):
        evaluate_coco(gt, [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1]}], "bbox")


def test_malformed_ground_truth(tmp_path):
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": [], "categories": []}))
    with pytest.raises(ValueError, match=r"instances\.json: ground truth has no 'annotations' field"):
        evaluate_coco(str(path), [], "bbox")
    path.write_text("{not json")
    with pytest.raises(ValueError, match=r"instances\.json: not valid JSON"):
        evaluate_coco(str(path), [], "bbox")
    gt = _gt([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 2, 2]}])  # no area
    with pytest.raises(ValueError, match="annotation 0 has no 'area' field"):
        evaluate_coco(gt, [], "bbox")
    lvis_gt, _ = _lvis_case()
    del lvis_gt["images"][1]["neg_category_ids"]
    with pytest.raises(ValueError, match="image 1 has no 'neg_category_ids' field"):
        evaluate_lvis(lvis_gt, [], "bbox")


def test_mask_size_mismatch_is_reported():
    m = np.ones((10, 10), bool)
    gt = _gt([{"image_id": 1, "category_id": 1, "segmentation": _rle(m), "area": 100.0}],
             images=((1, 10, 10),))
    pred = [{"image_id": 1, "category_id": 1, "segmentation": _rle(np.ones((5, 10), bool)), "score": 1}]
    with pytest.raises(ValueError, match=r"has size \[5, 10\] but the image is \[10, 10\]"):
        evaluate_coco(gt, pred, "segm")


def test_segmentation_forms_are_normalised():
    from eval.io import encode_mask, to_rle

    m = np.zeros((10, 12), bool)
    m[2:6, 3:9] = True
    rle = encode_mask(m)
    assert mask_utils.area({"size": rle["size"], "counts": rle["counts"].encode()}) == 24
    # Uncompressed RLE (COCO crowd annotations) is converted to the same compressed RLE.
    # Column-major runs: 3 empty columns + 2 rows, then 6 columns of (4 on, 6 off), 34 off at the end.
    uncompressed = {"size": [10, 12], "counts": [32, 4, 6, 4, 6, 4, 6, 4, 6, 4, 6, 4, 34]}
    assert to_rle(uncompressed, 10, 12, "f", "a")["counts"] == rle["counts"]
    poly = to_rle([[3, 2, 9, 2, 9, 6, 3, 6]], 10, 12, "f", "a")
    assert poly["size"] == [10, 12]
    with pytest.raises(ValueError, match="f: a field 'segmentation' is not a list of polygons"):
        to_rle([[1, 2, 3]], 10, 12, "f", "a")
    with pytest.raises(ValueError, match="f: a field 'segmentation' must be a number, got 'x'"):
        to_rle([[1, 2, 3, 4, 5, "x"]], 10, 12, "f", "a")
