"""YouTube-VIS-style video data (YTVIS 2019/2021, OVIS, LV-VIS, BDD tracking, UVO video, Ref-YouTube-VOS, and
any file in that form) and the official clip sampling.

File: ``videos`` {id, file_names[T], height, width}, ``annotations`` {video_id, id, category_id, bboxes[T] (xywh or
null), segmentations[T] (RLE / polygons or null)}, ``categories``; Ref-YouTube-VOS adds per-video
``expressions``.  Per-frame boxes are clipped to the frame; an instance that is absent from every frame, crowd
annotations, unknown ids and videos without instances are skipped and counted.

Clip sampling (``sample_clip``): a reference frame uniformly at random, the other ``num_frames - 1`` frames
within +-``frame_range`` of it, in temporal order; then a frame that shows an object is moved to position 0
(the visual-prompt and tracking losses start from the first frame).
"""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path
from typing import Any

from train.data.common import (
    DatasetFormatError,
    LoadedDataset,
    SkipStats,
    clean_box,
    clean_segmentation,
    contiguous_categories,
    read_json,
    require_keys,
)


def load_ytvis(
    json_path: str | Path,
    image_root: str | Path,
    dataset_name: str,
    *,
    masks: bool | None = None,
    filter_empty: bool = True,
    strict_categories: bool = False,
    name: str | None = None,
) -> LoadedDataset:
    source = str(json_path)
    data = read_json(json_path)
    require_keys(data, ["videos", "annotations", "categories"], source,
                 "a YouTube-VIS file has top-level `videos`, `annotations` and `categories` lists")
    id_map, class_names = contiguous_categories(data["categories"], source)
    stats = SkipStats()
    image_root = Path(image_root)
    videos: dict[Any, dict[str, Any]] = {}
    for i, vid in enumerate(data["videos"]):
        ok = isinstance(vid, dict) and "id" in vid and isinstance(vid.get("file_names"), list) and vid["file_names"]
        if not ok or not isinstance(vid.get("height"), int) or not isinstance(vid.get("width"), int):
            stats.add("video_missing_fields", f"videos[{i}] needs id, file_names, height, width")
            continue
        if vid["id"] in videos:
            raise DatasetFormatError(f"{source}: video id {vid['id']} appears twice; ids must be unique")
        record: dict[str, Any] = {
            "file_names": [str(image_root / f) for f in vid["file_names"]], "height": vid["height"],
            "width": vid["width"], "video_id": vid["id"], "dataset_name": dataset_name, "annotations": [],
        }
        if "expressions" in vid:
            record["expressions"] = [e for e in vid["expressions"] if isinstance(e, str) and e.strip()]
        videos[vid["id"]] = record

    anns_by_video: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    with_segm = total = 0
    for i, ann in enumerate(data["annotations"]):
        where = f"annotations[{i}]"
        if not isinstance(ann, dict) or "video_id" not in ann or "category_id" not in ann:
            stats.add("annotation_missing_fields", f"{where} needs video_id and category_id")
            continue
        record = videos.get(ann["video_id"])
        if record is None:
            stats.add("annotation_unknown_video", f"{where}: video_id {ann['video_id']}")
            continue
        if ann["category_id"] not in id_map:
            if strict_categories:
                raise DatasetFormatError(f"{source}: {where} has unknown category_id {ann['category_id']}")
            stats.add("unknown_category_id", f"{where}: category_id {ann['category_id']}")
            continue
        if ann.get("iscrowd", 0):
            stats.add("crowd_region")
            continue
        length = len(record["file_names"])
        bboxes = ann.get("bboxes") or [None] * length
        segms = ann.get("segmentations") or [None] * length
        if len(bboxes) != length or len(segms) != length:
            stats.add("annotation_length_mismatch", f"{where}: {len(bboxes)} boxes for {length} frames")
            continue
        frame_boxes, frame_segms = [], []
        for f in range(length):
            box = None
            if bboxes[f] is not None:
                box = clean_box(bboxes[f], record["width"], record["height"], stats, f"{where} frame {f}")
            segm = clean_segmentation(segms[f], stats, f"{where} frame {f}") if segms[f] else None
            if box is None and segm is not None:  # a mask without a box: the box comes from the mask later
                box = [0.0, 0.0, float(record["width"]), float(record["height"])]
            frame_boxes.append(box)
            frame_segms.append(segm if box is not None else None)
        present = sum(b is not None for b in frame_boxes)
        if present == 0:
            stats.add("instance_absent_in_all_frames", where)
            continue
        total += present
        with_segm += sum(s is not None for s in frame_segms)
        anns_by_video[ann["video_id"]].append({
            "id": ann.get("id", i), "category_id": id_map[ann["category_id"]],
            "bboxes": frame_boxes, "segmentations": frame_segms,
        })

    has_masks = masks if masks is not None else (total > 0 and with_segm == total)
    records = []
    for video_id, record in videos.items():
        anns = anns_by_video.get(video_id, [])
        if not anns and filter_empty:
            stats.add("video_without_annotations", video_id)
            continue
        if not has_masks:
            for a in anns:
                a["segmentations"] = [None] * len(a["segmentations"])
        record["annotations"] = anns
        records.append(record)
    return LoadedDataset(name or dataset_name, records, class_names, bool(has_masks), True, stats, source)


def sample_clip(record: dict[str, Any], num_frames: int, frame_range: int, rng: random.Random) -> list[int]:
    """Frame indices of a training clip (see the module docstring)."""
    length = len(record["file_names"])
    ref = rng.randrange(length)
    lo, hi = max(0, ref - frame_range), min(length, ref + frame_range + 1)
    pool = [i for i in range(lo, hi) if i != ref] or [ref]
    frames = sorted([rng.choice(pool) for _ in range(num_frames - 1)] + [ref])
    for pos, f in enumerate(frames):  # put a frame that shows an object first
        if any(a["bboxes"][f] is not None for a in record["annotations"]):
            frames[0], frames[pos] = frames[pos], frames[0]
            break
    return frames
