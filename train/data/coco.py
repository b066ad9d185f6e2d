"""COCO-format instance data: COCO, LVIS, Objects365 and OpenImages converted to COCO json, BDD, image-level
VIS sets, Visual Genome / GRIT region data and any custom dataset.

``load_coco_instances`` validates the file while reading it (see ``train.data.common``): category ids are
mapped to contiguous indices in sorted-id order, boxes are converted to xyxy and clipped to the image, crowd
regions and annotations with unknown image / category ids are skipped and counted, and images without a
usable annotation are dropped (``filter_empty``, the official FILTER_EMPTY_ANNOTATIONS).
"""

from __future__ import annotations

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


def _image_file_name(img: dict[str, Any]) -> str | None:
    if isinstance(img.get("file_name"), str) and img["file_name"]:
        return img["file_name"]
    url = img.get("coco_url")  # LVIS v1 keeps only the COCO url: <split>/<name>.jpg
    if isinstance(url, str) and url:
        parts = url.rstrip("/").split("/")
        return "/".join(parts[-2:])
    return None


def load_coco_instances(
    json_path: str | Path,
    image_root: str | Path,
    dataset_name: str | None,
    *,
    masks: bool | None = None,
    filter_empty: bool = True,
    strict_categories: bool = False,
    description_field: str | None = None,
    task: str | None = None,
    keep_expressions: bool = False,
    name: str | None = None,
) -> LoadedDataset:
    """Read a COCO instances JSON.

    Args:
        json_path, image_root: the annotation file and the folder its ``file_name`` entries are relative to.
        dataset_name: the routing tag written into every record (``coco``, ``obj365v2``, ``openimage``, a custom
            name, ...) or None (LVIS, RefCOCO, SA-1B route by their fields); see ``train.data.routing``.
        masks: whether the dataset has instance masks.  None: yes if every kept annotation has a segmentation
            (Objects365 / OpenImages files have boxes only).  True: annotations without one are skipped.
        filter_empty: drop images without a usable annotation.
        strict_categories: raise on an unknown ``category_id`` instead of skipping the annotation.
        description_field: per-annotation text kept as ``description`` (Visual Genome ``object_name`` /
            ``caption``, GRIT ``caption_with_token``); annotations without it are skipped.
        task: written into every record (``vg``, ``grit``, ``sa1b``); None keeps the default routing.
        keep_expressions: copy an image's ``expressions`` list (RefCOCO-style files).
    """
    source = str(json_path)
    data = read_json(json_path)
    require_keys(data, ["images", "annotations", "categories"], source,
                 "a COCO instances file has top-level `images`, `annotations` and `categories` lists")
    if not isinstance(data["images"], list) or not isinstance(data["annotations"], list):
        raise DatasetFormatError(f"{source}: `images` and `annotations` must be lists")
    id_map, class_names = contiguous_categories(data["categories"], source)
    stats = SkipStats()
    image_root = Path(image_root)

    images: dict[Any, dict[str, Any]] = {}
    for i, img in enumerate(data["images"]):
        file_name = _image_file_name(img) if isinstance(img, dict) else None
        if not isinstance(img, dict) or "id" not in img or file_name is None:
            stats.add("image_missing_fields", f"images[{i}] lacks id/file_name")
            continue
        h, w = img.get("height"), img.get("width")
        if not isinstance(h, int) or not isinstance(w, int) or h <= 0 or w <= 0:
            stats.add("image_missing_fields", f"image {img['id']} lacks a positive integer height/width")
            continue
        if img["id"] in images:
            raise DatasetFormatError(f"{source}: image id {img['id']} appears twice in `images`; ids must be unique")
        record: dict[str, Any] = {
            "file_name": str(image_root / file_name), "height": h, "width": w, "image_id": img["id"],
            "annotations": [],
        }
        if dataset_name is not None:
            record["dataset_name"] = dataset_name
        if task is not None:
            record["task"] = task
        for key in ("not_exhaustive_category_ids", "neg_category_ids"):
            if key in img:
                record[key] = [id_map[c] for c in img[key] if c in id_map]
        if keep_expressions and isinstance(img.get("expressions"), list):
            exprs = [e for e in img["expressions"] if isinstance(e, str) and e.strip()]
            if exprs:  # entries without one are dropped (and counted) by the RefCOCO reader
                record["expressions"] = exprs
        images[img["id"]] = record

    with_segm = 0
    anns_by_image: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for i, ann in enumerate(data["annotations"]):
        where = f"annotations[{i}]"
        if not isinstance(ann, dict) or any(k not in ann for k in ("image_id", "bbox", "category_id")):
            stats.add("annotation_missing_fields", f"{where} needs image_id, bbox and category_id")
            continue
        record = images.get(ann["image_id"])
        if record is None:
            stats.add("annotation_unknown_image", f"{where}: image_id {ann['image_id']}")
            continue
        if ann["category_id"] not in id_map:
            if strict_categories:
                raise DatasetFormatError(f"{source}: {where} has category_id {ann['category_id']} that is not "
                                         "in `categories`; add the category or fix the id")
            stats.add("unknown_category_id", f"{where}: category_id {ann['category_id']}")
            continue
        if ann.get("iscrowd", 0):
            stats.add("crowd_region")  # crowd regions are not instances (detectron2 mappers drop them)
            continue
        box = clean_box(ann["bbox"], record["width"], record["height"], stats, where)
        if box is None:
            continue
        obj: dict[str, Any] = {"bbox": box, "category_id": id_map[ann["category_id"]], "segmentation": None}
        segm = ann.get("segmentation")
        if segm:
            obj["segmentation"] = clean_segmentation(segm, stats, where)
            with_segm += obj["segmentation"] is not None
        if description_field is not None:
            text = ann.get(description_field)
            if not isinstance(text, str) or not text.strip():
                stats.add("annotation_without_description", where)
                continue
            obj["description"] = text.strip()
        anns_by_image[ann["image_id"]].append(obj)

    total_anns = sum(len(v) for v in anns_by_image.values())
    has_masks = masks if masks is not None else (total_anns > 0 and with_segm == total_anns)
    records = []
    for image_id, record in images.items():
        anns = anns_by_image.get(image_id, [])
        if has_masks:
            kept = [a for a in anns if a["segmentation"] is not None]
            if len(kept) < len(anns):
                stats.add("annotation_without_segmentation", image_id, len(anns) - len(kept))
            anns = kept
        else:
            for a in anns:
                a["segmentation"] = None
        if not anns and filter_empty:
            stats.add("image_without_annotations", image_id)
            continue
        record["annotations"] = anns
        records.append(record)
    label = name or dataset_name or Path(source).stem
    return LoadedDataset(label, records, class_names, bool(has_masks), False, stats, source)
