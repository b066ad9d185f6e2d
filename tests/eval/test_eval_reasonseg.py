"""ReasonSeg gIoU / cIoU with LISA's exact conventions."""

import json

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from eval.reasonseg import bootstrap_intervals, evaluate_reasonseg, giou_ciou, intersection_union


def _cases():
    gt_a = np.array([[1, 1, 1, 1, 0, 0, 0, 0]], np.uint8)
    pr_a = np.array([[0, 0, 1, 1, 1, 1, 0, 0]], np.uint8)    # I=2, U=6
    gt_b = np.zeros((1, 8), np.uint8)
    pr_b = np.zeros((1, 8), np.uint8)                         # empty vs empty: I=0, U=0
    gt_c = np.array([[1, 1, 255, 0, 0, 0, 0, 0]], np.uint8)
    pr_c = np.array([[1, 0, 1, 1, 0, 0, 0, 0]], np.uint8)    # pixel 2 ignored: I=1, U=2+2-1=3
    return {"a": gt_a, "b": gt_b, "c": gt_c}, {"a": pr_a, "b": pr_b, "c": pr_c}


def test_intersection_union_excludes_ignore_pixels():
    gt, pr = _cases()
    assert [intersection_union(pr[k], gt[k]) for k in "abc"] == [(2, 6), (0, 0), (1, 3)]


def test_giou_ciou_hand_computed_with_lisa_epsilons():
    gt, pr = _cases()
    r = evaluate_reasonseg(gt, pr)
    # LISA: per-sample I / (U + 1e-5), +1 where U == 0; cIoU = sum I / (sum U + 1e-10).
    assert r["gIoU"] == pytest.approx((2 / (6 + 1e-5) + 1.0 + 1 / (3 + 1e-5)) / 3, abs=1e-12)
    assert r["cIoU"] == pytest.approx(3 / (9 + 1e-10), abs=1e-12)
    assert r["num_samples"] == 3 and r["num_missing"] == 0


def test_missing_prediction_counts_as_empty_not_skipped():
    gt, pr = _cases()
    del pr["a"]
    r = evaluate_reasonseg(gt, pr)
    assert r["num_missing"] == 1
    assert r["gIoU"] == pytest.approx((0 + 1.0 + 1 / (3 + 1e-5)) / 3, abs=1e-12)
    assert r["cIoU"] == pytest.approx(1 / (4 + 3), abs=1e-9)


def test_empty_predictions_and_empty_ground_truth():
    gt, _ = _cases()
    r = evaluate_reasonseg(gt, {})
    assert r["gIoU"] == pytest.approx(1 / 3)  # only the empty target scores (1.0)
    assert r["cIoU"] == 0.0
    assert evaluate_reasonseg({}, {}) == {"gIoU": None, "cIoU": None, "num_samples": 0, "num_missing": 0}
    assert giou_ciou(np.zeros(0), np.zeros(0)) == (None, None)


def test_bootstrap_intervals_match_the_binomial_spread():
    # per-sample IoU 1 or 0, half each: gIoU's interval is the binomial one, 0.5 +- 1.96 * sqrt(0.25 / n)
    for n in (100, 400):
        inters, unions = np.tile([4.0, 0.0], n // 2), np.full(n, 4.0)
        ci = bootstrap_intervals(inters, unions, resamples=4000)
        for name in ("gIoU", "cIoU"):  # cIoU = sum I / sum U is the same share here
            low, high = ci[name]
            assert low < 0.5 < high
            assert (high - low) / 2 == pytest.approx(1.96 * (0.25 / n) ** 0.5, rel=0.15)
    assert bootstrap_intervals(inters, unions, seed=3) == bootstrap_intervals(inters, unions, seed=3)
    assert bootstrap_intervals(inters, unions, seed=3) != bootstrap_intervals(inters, unions, seed=4)
    same = bootstrap_intervals(np.full(10, 2.0), np.full(10, 4.0), resamples=50)  # no spread between samples
    assert same["gIoU"] == pytest.approx((0.5, 0.5), abs=1e-5) and same["cIoU"] == pytest.approx((0.5, 0.5))
    assert bootstrap_intervals(np.zeros(0), np.zeros(0)) == {"gIoU": None, "cIoU": None}
    with pytest.raises(ValueError, match="resamples >= 1"):
        bootstrap_intervals(inters, unions, resamples=0)


def test_evaluate_reasonseg_with_bootstrap_intervals():
    gt, pr = _cases()
    plain = evaluate_reasonseg(gt, pr)
    r = evaluate_reasonseg(gt, pr, bootstrap=500)
    assert {k: r[k] for k in plain} == plain
    assert r["gIoU_ci95_low"] <= r["gIoU"] <= r["gIoU_ci95_high"]
    assert r["cIoU_ci95_low"] <= r["cIoU"] <= r["cIoU_ci95_high"] and r["cIoU_ci95_low"] < r["cIoU_ci95_high"]
    empty = evaluate_reasonseg({}, {}, bootstrap=10)
    assert empty["gIoU_ci95_low"] is None and empty["cIoU_ci95_high"] is None


def test_logits_are_binarised_at_zero():
    gt = {"x": np.array([[1, 0]], np.uint8)}
    r = evaluate_reasonseg(gt, {"x": np.array([[3.2, -1.0]])})
    assert r["gIoU"] == pytest.approx(1 / (1 + 1e-5))


def test_file_formats_npz_png_json(tmp_path):
    gt, pr = _cases()
    np.savez(tmp_path / "gt.npz", **gt)
    png_dir = tmp_path / "pred_png"
    png_dir.mkdir()
    for k, m in pr.items():
        Image.fromarray(m, mode="L").save(png_dir / f"{k}.png")
    rles = {}
    for k, m in pr.items():
        rle = mask_utils.encode(np.asfortranarray(m))
        rles[k] = {"size": rle["size"], "counts": rle["counts"].decode()}
    (tmp_path / "pred.json").write_text(json.dumps(rles))
    expected = evaluate_reasonseg(gt, pr)
    assert evaluate_reasonseg(str(tmp_path / "gt.npz"), str(png_dir)) == expected
    assert evaluate_reasonseg(str(tmp_path / "gt.npz"), str(tmp_path / "pred.json")) == expected


def test_malformed_inputs(tmp_path):
    gt, pr = _cases()
    pr["a"] = np.zeros((2, 8))
    with pytest.raises(ValueError, match=r"<predictions>: mask 'a' has shape \(2, 8\) but the ground truth"):
        evaluate_reasonseg(gt, pr)
    np.savez(tmp_path / "gt.npz", a=np.array([[0, 2]], np.uint8))
    with pytest.raises(ValueError, match=r"gt\.npz: mask 'a' has values \[0, 2\]"):
        evaluate_reasonseg(str(tmp_path / "gt.npz"), {})
    with pytest.raises(ValueError, match="mask 'zzz' has no ground truth"):
        evaluate_reasonseg({"a": np.zeros((1, 1), np.uint8)}, {"zzz": np.zeros((1, 1))})
    (tmp_path / "p.json").write_text(json.dumps([{"id": "a"}]))
    with pytest.raises(ValueError, match=r"p\.json: record 0 has no 'segmentation' field"):
        evaluate_reasonseg({"a": np.zeros((1, 1), np.uint8)}, str(tmp_path / "p.json"))
