"""MOTChallenge and YouTube-VIS exporters: exact formats, and results the YTVIS evaluation scores correctly."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch

from glee.structures import Detections
from glee.video import MOTWriter, TrackedFrame, YTVISWriter, read_mot
from glee.video.tracks import empty_detections


def _frame(index: int, ids: list[int], boxes: list[list[float]], scores: list[float], size=(20, 30),
           classes: list[int] | None = None, video_scores: list[float] | None = None) -> TrackedFrame:
    masks = torch.zeros(len(ids), *size, dtype=torch.bool)
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        masks[i, int(y1) : int(y2), int(x1) : int(x2)] = True
    classes = classes or [0] * len(ids)
    meta = {"video_scores": video_scores} if video_scores is not None else {}
    d = Detections(boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), scores=torch.tensor(scores),
                   class_ids=torch.tensor(classes), class_names=[["cat", "dog"][c] for c in classes],
                   image_size=size, masks=masks, track_ids=torch.tensor(ids, dtype=torch.long), meta=meta)
    return TrackedFrame(index=index, detections=d)


def test_mot_lines_and_round_trip(tmp_path):
    path = tmp_path / "sub" / "tracks.txt"
    with MOTWriter(path, min_score=0.2) as mot:
        mot.write(_frame(0, [3, 7], [[1, 2, 11, 22], [0.5, 0, 4, 4.25]], [0.9, 0.1]))
        mot.write(TrackedFrame(1, empty_detections((20, 30), True)))
        mot.write(_frame(2, [3], [[2, 2, 12, 22]], [0.8]))
    lines = path.read_text().splitlines()
    assert lines == ["1,3,1.00,2.00,10.00,20.00,0.9000,-1,-1,-1", "3,3,2.00,2.00,10.00,20.00,0.8000,-1,-1,-1"]
    rows = read_mot(path)
    assert rows.shape == (2, 10) and rows[1, :2].tolist() == [3, 3] and rows[0, 4] == 10
    buf = io.StringIO()
    MOTWriter(buf).write(_frame(4, [1], [[0, 0, 1, 1]], [1.0]))
    assert buf.getvalue().startswith("5,1,0.00,0.00,1.00,1.00")
    (tmp_path / "bad.txt").write_text("1,2,3\n")
    with pytest.raises(ValueError, match="7 MOTChallenge fields"):
        read_mot(tmp_path / "bad.txt")


def test_ytvis_writer_fills_every_frame_and_maps_categories():
    w = YTVISWriter(video_id=9, category_ids={"cat": 17, "dog": 18})
    w.add(_frame(0, [1, 2], [[0, 0, 5, 5], [10, 10, 20, 20]], [0.9, 0.6], classes=[0, 1], video_scores=[0.8, 0.5]))
    w.add(_frame(1, [2], [[11, 10, 21, 20]], [0.7], classes=[1], video_scores=[0.55]))
    w.add(TrackedFrame(2, empty_detections((20, 30), True)))
    res = w.results()
    assert [r["track_id"] for r in res] == [1, 2]
    one, two = res
    assert one["category_id"] == 17 and two["category_id"] == 18
    assert one["score"] == pytest.approx(0.8) and two["score"] == pytest.approx(0.55)
    assert all(len(r["segmentations"]) == len(r["bboxes"]) == 3 for r in res)
    assert one["bboxes"] == [[0, 0, 5, 5], None, None]
    assert two["bboxes"][1] == [11, 10, 10, 10]
    from pycocotools import mask as mask_utils

    assert mask_utils.area(two["segmentations"][1]) == 100 and mask_utils.area(two["segmentations"][2]) == 0
    json.dumps(res)  # JSON-ready
    with pytest.raises(ValueError, match="masks"):
        no_masks = _frame(0, [1], [[0, 0, 1, 1]], [1.0])
        no_masks.detections.masks = None
        YTVISWriter(1).add(no_masks)


def test_ytvis_results_score_perfectly_against_themselves():
    """The format is what the YouTube-VIS evaluation reads: predictions equal to the ground truth give AP 1."""
    ev = pytest.importorskip("eval.video")
    frames = []
    for t in range(4):
        frames.append(_frame(t, [1, 2], [[t, 2, t + 8, 12], [20 - t, 5, 29 - t, 18]], [0.9, 0.8], classes=[0, 1],
                             video_scores=[0.9, 0.8]))
    w = YTVISWriter(video_id=1)
    for f in frames:
        w.add(f)
    preds = w.results()
    gt = {"videos": [{"id": 1, "length": 4, "height": 20, "width": 30}],
          "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
          "annotations": [{"id": k + 1, "video_id": 1, "category_id": p["category_id"], "iscrowd": 0,
                           "segmentations": p["segmentations"], "areas": None} for k, p in enumerate(preds)]}
    for a in gt["annotations"]:
        del a["areas"]
    result = ev.evaluate_ytvis(gt, preds)
    assert result["AP"] == pytest.approx(1.0)
    shifted = [dict(p, category_id=3 - p["category_id"]) for p in preds]  # swap the classes: AP 0
    assert ev.evaluate_ytvis(gt, shifted)["AP"] == pytest.approx(0.0)


def test_tracked_frame_sizes():
    f = _frame(0, [1, 2], [[0, 0, 1, 1], [0, 0, 2, 2]], [0.5, 0.5])
    assert len(f) == 2 and f.track_ids == [1, 2]
    assert f.nbytes() == 2 * 20 * 30 + 2 * 4 * 4 + 2 * 4 + 2 * 8 + 2 * 8
    assert np.asarray(f.detections.masks).shape == (2, 20, 30)
