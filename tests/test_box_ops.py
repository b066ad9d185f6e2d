from __future__ import annotations

import pytest
import torch

from glee import box_ops


def test_round_trips_and_values():
    xyxy = torch.tensor([[10.0, 20.0, 30.0, 60.0], [0.0, 0.0, 1.0, 1.0]])
    cxcywh = box_ops.box_xyxy_to_cxcywh(xyxy)
    assert cxcywh.tolist() == [[20.0, 40.0, 20.0, 40.0], [0.5, 0.5, 1.0, 1.0]]
    assert torch.equal(box_ops.box_cxcywh_to_xyxy(cxcywh), xyxy)
    xywh = box_ops.box_xyxy_to_xywh(xyxy)
    assert xywh[0].tolist() == [10.0, 20.0, 20.0, 40.0]
    assert torch.equal(box_ops.box_xywh_to_xyxy(xywh), xyxy)


def test_iou_and_giou_hand_computed():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [4.0, 0.0, 5.0, 1.0]])
    iou, union = box_ops.box_iou(a, b)
    assert torch.allclose(iou, torch.tensor([[1 / 7, 0.0]]))
    assert torch.allclose(union, torch.tensor([[7.0, 5.0]]))
    giou = box_ops.generalized_box_iou(a, b)
    # hull of a and b0 is 3x3 = 9: 1/7 - (9 - 7)/9 ; hull of a and b1 is 5x2 = 10: 0 - (10 - 5)/10
    assert torch.allclose(giou, torch.tensor([[1 / 7 - 2 / 9, -0.5]]))
    with pytest.raises(ValueError, match="x2 < x1"):
        box_ops.generalized_box_iou(torch.tensor([[2.0, 0.0, 1.0, 1.0]]), a)


def test_masks_to_boxes():
    masks = torch.zeros(2, 5, 6, dtype=torch.bool)
    masks[0, 1:3, 2:5] = True
    assert box_ops.masks_to_boxes(masks).tolist() == [[2.0, 1.0, 5.0, 3.0], [0.0, 0.0, 0.0, 0.0]]
