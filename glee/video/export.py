"""Track exporters: MOTChallenge text (streamed line by line) and YouTube-VIS results JSON.

MOTChallenge 2D format, one line per track per frame::

    frame, id, bb_left, bb_top, bb_width, bb_height, conf, x, y, z

with 1-based frame numbers, pixel boxes, and ``-1`` for the unused world coordinates (what TrackEval and
py-motmetrics read).

YouTube-VIS results: a JSON list of ``{"video_id", "score", "category_id", "segmentations", "bboxes"}``,
one entry per track, ``segmentations`` a COCO RLE per frame (an empty mask where the track is not
visible), ``bboxes`` ``[x, y, w, h]`` or ``None`` per frame -- what the YTVIS evaluation (``YTVOS.loadRes``)
and ``eval.video`` read.
"""

from __future__ import annotations

import io
import json
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from glee.video.tracks import TrackedFrame


def category_id_of(class_id: int, class_name: str, category_ids: Sequence[int] | Mapping[str, int] | None) -> int:
    """Dataset category id of a class: ``category_ids[class_id]`` (sequence), ``category_ids[name]`` (mapping),
    or ``class_id + 1`` by default."""
    if category_ids is None:
        return int(class_id) + 1
    if isinstance(category_ids, Mapping):
        if class_name not in category_ids:
            raise KeyError(f"category_ids has no id for class name {class_name!r}")
        return int(category_ids[class_name])
    if not 0 <= class_id < len(category_ids):
        raise IndexError(f"class index {class_id} has no entry in category_ids (length {len(category_ids)})")
    return int(category_ids[class_id])


class MOTWriter:
    """Write tracks in MOTChallenge format as frames arrive (nothing is kept in memory).

    Args:
        target: a path (parent folders are created) or an open text file.
        min_score: skip tracks whose frame score is below this.
    """

    def __init__(self, target: str | os.PathLike | TextIO, min_score: float = 0.0) -> None:
        if isinstance(target, (str, os.PathLike)):
            path = Path(target)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file: TextIO = open(path, "w")  # noqa: SIM115 - closed in close()
            self._owned = True
        else:
            self._file, self._owned = target, False
        self.min_score = min_score
        self.lines = 0

    def write(self, frame: TrackedFrame) -> None:
        d = frame.detections
        if d.track_ids is None:
            raise ValueError("these detections carry no track ids; MOT output needs tracked frames")
        boxes = d.boxes.detach().cpu().double().numpy()
        scores = d.scores.detach().cpu().double().numpy()
        buf = io.StringIO()
        for tid, box, score in zip(d.track_ids.tolist(), boxes, scores):
            if score < self.min_score:
                continue
            x1, y1, x2, y2 = box
            buf.write(f"{frame.index + 1},{tid},{x1:.2f},{y1:.2f},{x2 - x1:.2f},{y2 - y1:.2f},{score:.4f},-1,-1,-1\n")
            self.lines += 1
        self._file.write(buf.getvalue())

    def close(self) -> None:
        if self._owned and not self._file.closed:
            self._file.close()
        elif not self._owned:
            self._file.flush()

    def __enter__(self) -> MOTWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_mot(path: str | os.PathLike) -> np.ndarray:
    """A MOTChallenge text file -> float64 array [N, 10] (an empty file gives shape [0, 10])."""
    text = Path(path).read_text().strip()
    if not text:
        return np.zeros((0, 10))
    rows = [line.split(",") for line in text.splitlines()]
    bad = [i + 1 for i, r in enumerate(rows) if len(r) < 7]
    if bad:
        raise ValueError(f"{path}: line(s) {bad[:5]} have fewer than the 7 MOTChallenge fields "
                         "(frame, id, left, top, width, height, conf)")
    rows = [r + ["-1"] * (10 - len(r)) for r in rows]
    return np.asarray(rows, dtype=np.float64)[:, :10]


@dataclass
class _TrackRecord:
    frames: dict[int, dict[str, Any]] = field(default_factory=dict)  # frame -> {"rle", "bbox"}
    classes: Counter = field(default_factory=Counter)
    class_names: dict[int, str] = field(default_factory=dict)
    score: float = 0.0


class YTVISWriter:
    """Collect streamed tracks into YouTube-VIS results.

    Only compressed RLE masks are kept (one per track per visible frame).  A track's score is its
    video-level score (``meta["video_scores"]``, sigmoid of the running mean logit) at the last frame it was
    visible, or the mean of its frame scores where the mode has no video-level score; its category is the
    class it carried in most frames.  Every frame of the video must be passed to :meth:`add`, including
    frames without tracks, so that the per-frame lists have the video's length.
    """

    def __init__(self, video_id: int | str, category_ids: Sequence[int] | Mapping[str, int] | None = None) -> None:
        self.video_id = video_id
        self.category_ids = category_ids
        self.num_frames = 0
        self.image_size: tuple[int, int] | None = None
        self._tracks: dict[int, _TrackRecord] = {}
        self._frame_scores: dict[int, list[float]] = {}

    def add(self, frame: TrackedFrame) -> None:
        d = frame.detections
        if d.masks is None:
            raise ValueError("YouTube-VIS results need masks; track with masks enabled")
        if d.track_ids is None:
            raise ValueError("these detections carry no track ids")
        self.num_frames = max(self.num_frames, frame.index + 1)
        self.image_size = d.image_size
        if len(d) == 0:
            return
        rles = d.masks_rle()
        video_scores = d.meta.get("video_scores")
        boxes = d.boxes.detach().cpu().double().tolist()
        for i, tid in enumerate(d.track_ids.tolist()):
            rec = self._tracks.setdefault(tid, _TrackRecord())
            x1, y1, x2, y2 = boxes[i]
            empty = not bool(d.masks[i].any())
            rec.frames[frame.index] = {"rle": rles[i], "bbox": None if empty else
                                       [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)]}
            cid = int(d.class_ids[i])
            rec.classes[cid] += 1
            rec.class_names[cid] = d.class_names[i]
            if video_scores is not None:
                rec.score = float(video_scores[i])
            else:
                self._frame_scores.setdefault(tid, []).append(float(d.scores[i]))

    def results(self) -> list[dict[str, Any]]:
        if self.image_size is None:
            raise ValueError("no frame was added")
        h, w = self.image_size
        from pycocotools import mask as mask_utils

        empty = mask_utils.encode(np.zeros((h, w, 1), np.uint8, order="F"))[0]
        empty["counts"] = empty["counts"].decode("ascii")
        out = []
        for tid in sorted(self._tracks):
            rec = self._tracks[tid]
            cid = rec.classes.most_common(1)[0][0]
            score = float(np.mean(self._frame_scores[tid])) if tid in self._frame_scores else rec.score
            segs = [rec.frames[t]["rle"] if t in rec.frames else empty for t in range(self.num_frames)]
            boxes = [rec.frames[t]["bbox"] if t in rec.frames else None for t in range(self.num_frames)]
            out.append({
                "video_id": self.video_id,
                "score": score,
                "category_id": category_id_of(cid, rec.class_names[cid], self.category_ids),
                "segmentations": segs,
                "bboxes": boxes,
                "track_id": tid,
            })
        return out

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.results()))
        return path
