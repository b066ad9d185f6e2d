"""RefCOCO REC P@0.5 and RES oIoU / mIoU on hand-computed cases."""

import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from eval.refcoco import box_iou_xywh, evaluate_refcoco


def _rle(mask):
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode()}


def test_box_iou_xywh_hand_values():
    gt = np.array([[0, 0, 10, 10]] * 3, float)
    pred = np.array([[0, 0, 10, 5], [5, 5, 10, 10], [20, 20, 0, 0]], float)
    np.testing.assert_allclose(box_iou_xywh(pred, gt), [0.5, 25 / 175, 0.0])


def test_rec_precision_at_half_counts_iou_exactly_half_and_missing_as_miss():
    gt = [{"id": 1, "bbox": [0, 0, 10, 10]}, {"id": 2, "bbox": [0, 0, 10, 10]},
          {"id": 3, "bbox": [0, 0, 10, 10]}, {"id": 4, "bbox": [30, 30, 10, 10]}]
    preds = [{"id": 1, "bbox": [0, 0, 10, 5]},                  # IoU 0.5 -> hit (>= 0.5)
             {"id": 2, "bbox": [5, 5, 10, 10]},                 # IoU 1/7 -> miss
             {"id": 4, "bbox": [30, 30, 10, 10], "score": 0.2},  # top-1 is the higher score below
             {"id": 4, "bbox": [0, 0, 1, 1], "score": 0.9}]     # id 3 has no prediction -> miss
    r = evaluate_refcoco(gt, preds)
    assert r["P@0.5"] == pytest.approx(1 / 4)
    assert r["box_mIoU"] == pytest.approx((0.5 + 25 / 175 + 0 + 0) / 4)
    assert r["num_samples"] == 4 and r["num_missing"] == 1
    assert "oIoU" not in r  # no masks in this ground truth


def test_res_overall_and_mean_iou():
    g1, p1 = np.zeros((4, 5), bool), np.zeros((4, 5), bool)
    g1[0, :4] = True         # 4 pixels
    p1[0, 2:] = True         # 3 pixels, 2 shared -> I=2, U=5
    g2, p2 = np.zeros((4, 5), bool), np.zeros((4, 5), bool)
    g2[1:3, 1:3] = True      # 4 pixels, predicted exactly -> I=4, U=4
    p2[1:3, 1:3] = True
    g3 = np.zeros((4, 5), bool)
    g3[3, 0] = True          # 1 pixel, no prediction -> I=0, U=1
    gt = {"samples": [{"id": "a", "segmentation": _rle(g1)}, {"id": "b", "segmentation": _rle(g2)},
                      {"id": "c", "segmentation": _rle(g3)}]}
    preds = [{"id": "a", "segmentation": _rle(p1)}, {"id": "b", "segmentation": _rle(p2)}]
    r = evaluate_refcoco(gt, preds)
    assert r["oIoU"] == pytest.approx((2 + 4 + 0) / (5 + 4 + 1))
    assert r["mIoU"] == pytest.approx((2 / 5 + 1 + 0) / 3)
    assert r["num_missing"] == 1


def test_res_polygon_ground_truth_and_empty_target():
    # Polygon GT needs the image size; an empty target with an empty prediction scores 1 in mIoU.
    gt = [{"id": 1, "height": 10, "width": 10, "segmentation": [[0, 0, 4, 0, 4, 4, 0, 4]]},
          {"id": 2, "segmentation": _rle(np.zeros((10, 10), bool))}]
    poly_mask = mask_utils.decode(mask_utils.frPyObjects([[0, 0, 4, 0, 4, 4, 0, 4]], 10, 10))[..., 0]
    preds = [{"id": 1, "segmentation": _rle(poly_mask)}, {"id": 2, "segmentation": _rle(np.zeros((10, 10)))}]
    r = evaluate_refcoco(gt, preds)
    assert r["oIoU"] == pytest.approx(1.0) and r["mIoU"] == pytest.approx(1.0)


def test_empty_predictions_and_empty_ground_truth():
    gt = [{"id": 1, "bbox": [0, 0, 2, 2], "segmentation": _rle(np.ones((3, 3), bool))}]
    r = evaluate_refcoco(gt, [])
    assert r["P@0.5"] == 0.0 and r["oIoU"] == 0.0 and r["mIoU"] == 0.0 and r["num_missing"] == 1
    r = evaluate_refcoco([], [])
    assert r == {"num_samples": 0, "num_missing": 0}


def test_malformed_files(tmp_path):
    gt = [{"id": 1, "bbox": [0, 0, 2, 2]}]
    with pytest.raises(ValueError, match="prediction 0 has id '7', which is not in"):
        evaluate_refcoco(gt, [{"id": 7, "bbox": [0, 0, 1, 1]}])
    path = tmp_path / "refs.json"
    path.write_text(json.dumps([{"id": 1, "bbox": [0, 0, 2, 2]}, {"id": 2}]))
    with pytest.raises(ValueError, match=r"refs\.json: sample 1 has neither a 'bbox' nor a 'segmentation'"):
        evaluate_refcoco(str(path), [])
    with pytest.raises(ValueError, match="prediction 0 has no 'bbox' field"):
        evaluate_refcoco(gt, [{"id": 1, "segmentation": _rle(np.ones((2, 2)))}])


def test_box_only_predictions_on_a_file_with_boxes_and_masks():
    gt = [{"id": 1, "bbox": [0, 0, 4, 4], "segmentation": _rle(np.ones((6, 6), bool))}]
    r = evaluate_refcoco(gt, [{"id": 1, "bbox": [0, 0, 4, 4]}])
    assert r["P@0.5"] == 1.0 and "oIoU" not in r
    r = evaluate_refcoco(gt, [{"id": 1, "segmentation": _rle(np.ones((6, 6), bool))}])
    assert r["oIoU"] == 1.0 and "P@0.5" not in r
