"""glee.structures.Detections: selection, RLE, COCO / supervision / JSON exporters."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from glee.structures import Detections, coco_results, save_coco_results


def make(n: int = 3, h: int = 12, w: int = 16, tracks: bool = False) -> Detections:
    masks = torch.zeros(n, h, w, dtype=torch.bool)
    for i in range(n):
        masks[i, i : i + 4, 2 * i : 2 * i + 5] = True
    return Detections(
        boxes=torch.tensor([[2.0 * i, 1.0 * i, 2.0 * i + 5, i + 4.5] for i in range(n)]),
        scores=torch.tensor([0.9, 0.5, 0.3][:n]),
        class_ids=torch.tensor([2, 0, 2][:n]),
        class_names=["dog", "person", "dog"][:n],
        image_size=(h, w),
        masks=masks,
        query_indices=torch.tensor([5, 1, 3][:n]),
        query_embeddings=torch.randn(n, 8),
        track_ids=torch.tensor([7, 8, 9][:n]) if tracks else None,
    )


def test_indexing_keeps_fields_aligned() -> None:
    d = make()
    sub = d[torch.tensor([False, True, True])]
    assert len(sub) == 2 and sub.class_names == ["person", "dog"]
    assert sub.query_indices.tolist() == [1, 3]
    assert torch.equal(sub.masks, d.masks[1:])
    assert torch.equal(sub.query_embeddings, d.query_embeddings[1:])
    assert d[0].class_names == ["dog"] and len(d[1:]) == 2 and len(d[[2, 0]]) == 2
    assert d.sort(descending=False).scores.tolist() == sorted(d.scores.tolist())
    both = Detections.cat([d[:1], d[1:]])
    assert torch.equal(both.boxes, d.boxes) and both.class_names == d.class_names


def test_validation_names_the_problem() -> None:
    with pytest.raises(ValueError, match="masks must be"):
        Detections(torch.zeros(1, 4), torch.zeros(1), torch.zeros(1, dtype=torch.long), ["a"], (5, 5),
                   masks=torch.zeros(1, 4, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="class names"):
        Detections(torch.zeros(2, 4), torch.zeros(2), torch.zeros(2, dtype=torch.long), ["a"], (5, 5))


def test_rle_round_trip_and_areas() -> None:
    d = make()
    rles = d.masks_rle()
    assert all(isinstance(r["counts"], str) for r in rles)
    decoded = mask_utils.decode([{"size": r["size"], "counts": r["counts"].encode()} for r in rles])
    np.testing.assert_array_equal(decoded.transpose(2, 0, 1).astype(bool), d.masks.numpy())
    assert d.mask_areas().tolist() == [20, 20, 20]
    assert Detections.empty((4, 4)).masks_rle() == []


def test_coco_results_format() -> None:
    d = make()
    recs = d.to_coco(image_id=42)
    assert recs[0]["image_id"] == 42 and recs[0]["category_id"] == 3  # default: class id + 1
    assert recs[0]["bbox"] == [0.0, 0.0, 5.0, 4.5]  # xywh
    assert recs[1]["score"] == pytest.approx(0.5) and "segmentation" in recs[1]
    assert [r["category_id"] for r in d.to_coco(1, category_ids=[1, 2, 18])] == [18, 1, 18]
    assert [r["category_id"] for r in d.to_coco(1, category_ids={"dog": 18, "person": 1})] == [18, 1, 18]
    with pytest.raises(KeyError, match="person"):
        d.to_coco(1, category_ids={"dog": 18})
    assert "segmentation" not in d.to_coco(1, with_masks=False)[0]
    both = coco_results([d, d[:1]], [1, 2])
    assert [r["image_id"] for r in both] == [1, 1, 1, 2]


def test_coco_file_loads_in_pycocotools(tmp_path) -> None:
    from pycocotools.coco import COCO

    d = make()
    gt = COCO()
    gt.dataset = {"images": [{"id": 1, "height": 12, "width": 16}],
                  "categories": [{"id": i + 1, "name": f"c{i}"} for i in range(3)], "annotations": []}
    gt.createIndex()
    path = save_coco_results(tmp_path / "res.json", [d], [1])
    res = gt.loadRes(str(path))
    assert len(res.getAnnIds()) == 3
    ann = res.anns[1]
    assert ann["area"] == pytest.approx(5 * 4.5) and ann["segmentation"]["counts"]  # box area; RLE kept for segm


def test_supervision_dict_fields() -> None:
    d = make(tracks=True)
    sv = d.to_supervision()
    assert set(sv) == {"xyxy", "mask", "confidence", "class_id", "tracker_id", "data"}
    assert sv["xyxy"].dtype == np.float32 and sv["xyxy"].shape == (3, 4)
    assert sv["mask"].dtype == bool and sv["mask"].shape == (3, 12, 16)
    assert sv["confidence"].dtype == np.float32 and sv["class_id"].dtype == np.int64
    assert sv["tracker_id"].tolist() == [7, 8, 9]
    assert sv["data"]["class_name"].tolist() == ["dog", "person", "dog"]
    assert make().to_supervision()["tracker_id"] is None
    empty = Detections.empty((4, 4)).to_supervision()
    assert empty["xyxy"].shape == (0, 4) and empty["data"]["class_name"].shape == (0,)


def test_json_round_trip() -> None:
    d = make(tracks=True)
    data = json.loads(json.dumps(d.to_dict(with_embeddings=True)))
    back = Detections.from_dict(data)
    assert torch.equal(back.masks, d.masks) and back.class_names == d.class_names
    torch.testing.assert_close(back.boxes, d.boxes)
    torch.testing.assert_close(back.query_embeddings, d.query_embeddings)
    assert back.track_ids.tolist() == [7, 8, 9] and back.image_size == (12, 16)
