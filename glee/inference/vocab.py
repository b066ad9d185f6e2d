"""Category lists: built-in names, text/JSON files, or comma-separated strings.

``load_class_names(spec)`` returns (names, dataset category ids or ``None``):

* ``"coco"`` -- the 80 COCO names in the official demo's order (ids: the COCO 2017 ids);
* ``"object"`` -- the demo's class-agnostic list;
* a ``.txt`` file -- one name per line (blank lines and ``#`` comments skipped);
* a ``.json`` file -- a list of names, or a COCO/LVIS annotation or category file (``{"categories": [{"id",
  "name"}, ...]}`` or the bare list of such records), sorted by id; names are used as written (GLEE feeds
  LVIS names such as ``aerosol_can`` to CLIP unchanged);
* anything else -- comma-separated names (``"person, red car, dog"``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

COCO_CLASSES = [
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
]
# COCO 2017 category ids of COCO_CLASSES, in order (the dataset skips some numbers)
COCO_IDS = [
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31, 32, 33, 34,
    35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63,
    64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90,
]
BUILTIN = {"coco": (COCO_CLASSES, COCO_IDS), "object": (["object"], [1])}


def load_class_names(spec: str) -> tuple[list[str], list[int] | None]:
    """See the module docstring."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError("the class list is empty; give names like 'person,car', a file, or 'coco'")
    key = spec.strip()
    if key.lower() in BUILTIN:
        names, ids = BUILTIN[key.lower()]
        return list(names), list(ids)
    path = Path(key)
    if path.suffix.lower() in (".txt", ".json") and not path.exists():
        raise FileNotFoundError(f"class list file {path} does not exist")
    if path.is_file():
        if path.suffix.lower() == ".json":
            return _from_json(json.loads(path.read_text(encoding="utf-8")), str(path))
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
        return [ln for ln in lines if ln and not ln.startswith("#")], None
    return [n.strip() for n in key.split(",")], None


def _from_json(data: Any, name: str) -> tuple[list[str], list[int] | None]:
    if isinstance(data, dict):
        if "categories" not in data:
            raise ValueError(f"{name}: a JSON object needs a 'categories' list (COCO/LVIS format)")
        data = data["categories"]
    if not isinstance(data, list) or not data:
        raise ValueError(f"{name}: expected a non-empty list of names or category records")
    if all(isinstance(x, str) for x in data):
        return list(data), None
    if all(isinstance(x, dict) and "name" in x and "id" in x for x in data):
        records = sorted(data, key=lambda r: r["id"])
        return [str(r["name"]) for r in records], [int(r["id"]) for r in records]
    raise ValueError(f"{name}: list entries must all be strings or all be {{'id', 'name'}} records")
