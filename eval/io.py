"""Loading and validation of ground-truth and prediction files.

Every loader takes either a path or an already-loaded Python object, so the same code serves the
command line (files) and a model-evaluation loop (objects in memory). Problems are reported as
``ValueError("<source>: <what is wrong>")``, where ``<source>`` is the file path as given (or a
label such as ``<predictions>`` for in-memory data) and the message names the record and field,
e.g. ``preds.json: annotation 3 has no 'bbox' field``. Record numbers are 0-based list positions.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

PathLike = str | os.PathLike


def source_name(src: Any, default: str) -> str:
    """Name used in error messages: the path as given, or ``default`` for in-memory data."""
    return os.fspath(src) if isinstance(src, (str, os.PathLike)) else default


def fail(name: str, message: str) -> ValueError:
    """Build the package's uniform error (callers ``raise fail(...)``)."""
    return ValueError(f"{name}: {message}")


def load_json(src: Any, default_name: str) -> tuple[Any, str]:
    """Return ``(object, name)``; ``src`` is a JSON path or an already-parsed object."""
    name = source_name(src, default_name)
    if not isinstance(src, (str, os.PathLike)):
        return src, name
    path = Path(src)
    if not path.is_file():
        raise fail(name, "file not found")
    try:
        with path.open("r", encoding="utf-8") as f:
            return json.load(f), name
    except json.JSONDecodeError as e:
        raise fail(name, f"not valid JSON ({e})") from None


# ----------------------------------------------------------------------------------------------
# Field checks. `where` is a phrase such as "annotation 3" and is put in front of the message.


def require(rec: Any, field: str, name: str, where: str) -> Any:
    """Return ``rec[field]`` or raise ``<name>: <where> has no '<field>' field``."""
    if not isinstance(rec, Mapping):
        raise fail(name, f"{where} is a {type(rec).__name__}, expected an object")
    if field not in rec:
        raise fail(name, f"{where} has no '{field}' field")
    return rec[field]


def as_list(obj: Any, name: str, what: str) -> list:
    if not isinstance(obj, list):
        raise fail(name, f"{what} must be a list, got {type(obj).__name__}")
    return obj


def as_number(value: Any, name: str, where: str, field: str) -> float:
    # bool is an int subclass; a True score is almost certainly a bug in the writer.
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise fail(name, f"{where} field '{field}' must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise fail(name, f"{where} field '{field}' must be finite, got {value}")
    return value


def as_id(value: Any, name: str, where: str, field: str) -> int:
    """Integer id (JSON ids are ints in every format used here; 3.0 is accepted)."""
    if isinstance(value, bool):
        raise fail(name, f"{where} field '{field}' must be an integer id, got {value!r}")
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return int(value)
    raise fail(name, f"{where} field '{field}' must be an integer id, got {value!r}")


def as_box(value: Any, name: str, where: str, field: str = "bbox") -> list[float]:
    """``[x, y, w, h]`` with finite numbers and non-negative size."""
    if not isinstance(value, (list, tuple, np.ndarray)) or len(value) != 4:
        raise fail(name, f"{where} field '{field}' must be [x, y, w, h], got {value!r}")
    box = [as_number(v, name, where, field) for v in value]
    if box[2] < 0 or box[3] < 0:
        raise fail(name, f"{where} field '{field}' has negative width or height: {box}")
    return box


def to_rle(seg: Any, height: int | None, width: int | None, name: str, where: str,
           field: str = "segmentation") -> dict:
    """Normalise a COCO segmentation (polygons, uncompressed or compressed RLE) to compressed RLE.

    ``height``/``width`` are the image size; polygons need them and RLE sizes must match them.
    Returns ``{"size": [h, w], "counts": str}``.
    """
    if isinstance(seg, list):
        if height is None or width is None:
            raise fail(name, f"{where} has a polygon '{field}' but its image has no height/width")
        polys = [p for p in seg if isinstance(p, (list, tuple))]
        if len(polys) != len(seg) or any(len(p) < 6 or len(p) % 2 for p in polys):
            raise fail(name, f"{where} field '{field}' is not a list of polygons [x1, y1, x2, y2, ...]")
        polys = [[as_number(v, name, where, field) for v in p] for p in polys]
        rle = mask_utils.merge(mask_utils.frPyObjects(polys, height, width))
    elif isinstance(seg, Mapping):
        if "size" not in seg or "counts" not in seg:
            raise fail(name, f"{where} field '{field}' must be an RLE with 'size' and 'counts'")
        size = seg["size"]
        if not (isinstance(size, (list, tuple)) and len(size) == 2):
            raise fail(name, f"{where} field '{field}' has a bad RLE size {size!r}")
        h, w = as_id(size[0], name, where, field), as_id(size[1], name, where, field)
        if height is not None and (h, w) != (height, width):
            raise fail(name, f"{where} field '{field}' has size [{h}, {w}] but the image is "
                             f"[{height}, {width}]")
        counts = seg["counts"]
        if isinstance(counts, list):  # uncompressed RLE
            rle = mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
        elif isinstance(counts, (str, bytes)):
            rle = {"size": [h, w], "counts": counts.encode() if isinstance(counts, str) else counts}
            try:
                rle_area = int(mask_utils.area(rle))
            except Exception:  # pycocotools raises bare exceptions on corrupt strings
                raise fail(name, f"{where} field '{field}' has corrupt RLE counts") from None
            if rle_area > h * w:
                raise fail(name, f"{where} field '{field}' has corrupt RLE counts")
        else:
            raise fail(name, f"{where} field '{field}' has RLE counts of type {type(counts).__name__}")
    else:
        raise fail(name, f"{where} field '{field}' must be polygons or RLE, got {type(seg).__name__}")
    counts = rle["counts"]
    return {"size": [int(rle["size"][0]), int(rle["size"][1])],
            "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}


def encode_mask(mask: np.ndarray) -> dict:
    """Binary mask [H, W] -> compressed RLE with a str ``counts`` (JSON-ready)."""
    rle = mask_utils.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def rle_bytes(rle: Mapping) -> dict:
    """Copy of ``rle`` with ``bytes`` counts, which pycocotools' C functions require."""
    counts = rle["counts"]
    return {"size": list(rle["size"]), "counts": counts.encode() if isinstance(counts, str) else counts}


# ----------------------------------------------------------------------------------------------
# Mask collections (ReasonSeg, VOS): id -> integer array.


def read_png(path: Path) -> np.ndarray:
    from PIL import Image  # Pillow is only needed when PNGs are actually read

    with Image.open(path) as im:
        # Indexed ('P') PNGs give the palette index, which is the object/label id in DAVIS and
        # ReasonSeg exports; converting to RGB would lose it.
        if im.mode not in ("P", "L", "1", "I", "I;16"):
            raise fail(os.fspath(path), f"expected an indexed or greyscale PNG, got mode {im.mode}")
        return np.array(im)


def load_mask_dict(src: Any, default_name: str) -> tuple[dict[str, np.ndarray], str]:
    """Load ``{key: integer array}`` masks (ReasonSeg-style, one mask per sample).

    Accepted sources: a mapping ``key -> array`` (in memory); ``.npz`` (one array per key);
    ``.json`` (``{key: RLE}`` or a list of ``{"id": key, "segmentation": RLE}``); a directory of
    ``<key>.png`` files.
    """
    name = source_name(src, default_name)
    if isinstance(src, Mapping):
        return {str(k): np.asarray(v) for k, v in src.items()}, name
    path = _existing_path(src, name)
    if path.is_dir():
        out = {f.stem: read_png(f) for f in sorted(path.glob("*.png"))}
        if not out:
            raise fail(name, "directory has no PNG masks")
        return out, name
    if path.suffix == ".npz":
        return read_npz(path, name), name
    if path.suffix == ".json":
        obj, _ = load_json(path, name)
        return _masks_from_json(obj, name), name
    raise fail(name, "expected a .npz or .json file or a directory of PNG masks")


VideoMasks = dict[str, tuple[list[str] | None, np.ndarray]]


def load_video_masks(src: Any, default_name: str) -> tuple[VideoMasks, str]:
    """Load label-map videos ``{video: (frame_names, labels [T, H, W])}`` (DAVIS layout).

    Accepted sources: a mapping ``video -> [T, H, W]`` array or a ``.npz`` of such arrays (frame
    names ``None``: frames are matched by position); a directory of ``<video>/<frame>.png`` indexed
    PNGs, stacked in sorted frame-name order (frames are matched by name).
    """
    name = source_name(src, default_name)
    if isinstance(src, Mapping):
        arrays = {str(k): np.asarray(v) for k, v in src.items()}
    else:
        path = _existing_path(src, name)
        if path.suffix == ".npz":
            arrays = read_npz(path, name)
        elif path.is_dir():
            return _read_video_dir(path, name), name
        else:
            raise fail(name, "expected a .npz file or a directory of <video>/<frame>.png")
    out = {}
    for video, arr in arrays.items():
        if arr.ndim != 3:
            raise fail(name, f"video '{video}' must be a [T, H, W] label array, got shape {arr.shape}")
        out[video] = (None, arr)
    return out, name


def _existing_path(src: Any, name: str) -> Path:
    if not isinstance(src, (str, os.PathLike)):
        raise fail(name, f"expected a path or a mapping, got {type(src).__name__}")
    path = Path(src)
    if not path.exists():
        raise fail(name, "file or directory not found")
    return path


def read_npz(path: Path, name: str) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise fail(name, f"cannot read npz ({e})") from None


def _read_video_dir(path: Path, name: str) -> VideoMasks:
    out = {}
    for sub in sorted(p for p in path.iterdir() if p.is_dir()):
        frames = sorted(sub.glob("*.png"))
        if not frames:
            raise fail(name, f"video folder '{sub.name}' has no PNG frames")
        arrays = [read_png(f) for f in frames]
        if len({a.shape for a in arrays}) != 1:
            raise fail(name, f"video folder '{sub.name}' has frames of different sizes")
        out[sub.name] = ([f.stem for f in frames], np.stack(arrays))
    if not out:
        raise fail(name, "directory has no <video>/<frame>.png folders")
    return out


def _masks_from_json(obj: Any, name: str) -> dict[str, np.ndarray]:
    if isinstance(obj, Mapping):
        items: Iterable[tuple[Any, Any, str]] = ((k, v, f"mask '{k}'") for k, v in obj.items())
    elif isinstance(obj, list):
        items = ((require(r, "id", name, f"record {i}"), require(r, "segmentation", name, f"record {i}"),
                  f"record {i}") for i, r in enumerate(obj))
    else:
        raise fail(name, "expected an object {id: RLE} or a list of {id, segmentation}")
    out: dict[str, np.ndarray] = {}
    for key, seg, where in items:
        if isinstance(seg, Mapping) and "size" in seg:
            h, w = int(seg["size"][0]), int(seg["size"][1])
        else:
            raise fail(name, f"{where} must be an RLE with 'size' and 'counts'")
        out[str(key)] = mask_utils.decode(rle_bytes(to_rle(seg, h, w, name, where)))
    return out


# ----------------------------------------------------------------------------------------------
# MOTChallenge text files.

MOT_MIN_COLUMNS = 6  # frame, id, x, y, w, h


def load_mot_txt(path: PathLike) -> np.ndarray:
    """Read one MOTChallenge file into a float array [N, 10] (missing columns become -1).

    Columns: frame (1-based), id, x, y, w, h, conf/flag, class, visibility, unused.
    """
    name = os.fspath(path)
    rows: list[list[float]] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.strip()
            if not line:
                continue
            parts = line.replace(" ", "").split(",") if "," in line else line.split()
            if len(parts) < MOT_MIN_COLUMNS:
                raise fail(name, f"line {lineno} has {len(parts)} columns, expected at least "
                                 "frame,id,x,y,w,h")
            try:
                vals = [float(p) for p in parts[:10]]
            except ValueError:
                raise fail(name, f"line {lineno} has a non-numeric column: {line!r}") from None
            if not all(math.isfinite(v) for v in vals):
                raise fail(name, f"line {lineno} has a non-finite value: {line!r}")
            if vals[0] < 1 or not vals[0].is_integer():
                raise fail(name, f"line {lineno} field 'frame' must be an integer >= 1 (1-based), "
                                 f"got {parts[0]}")
            if not vals[1].is_integer():
                raise fail(name, f"line {lineno} field 'id' must be an integer, got {parts[1]}")
            if vals[4] < 0 or vals[5] < 0:
                raise fail(name, f"line {lineno} has a negative box width or height")
            rows.append(vals + [-1.0] * (10 - len(vals)))
    return np.asarray(rows, dtype=float).reshape(-1, 10)


def load_mot_source(src: Any, default_name: str) -> tuple[dict[str, np.ndarray], str]:
    """Load ``{sequence: rows [N, 10]}`` from a MOT txt file, a directory, or a mapping.

    A directory may hold ``<seq>.txt`` files (tracker layout) or ``<seq>/gt/gt.txt`` (MOTChallenge
    ground-truth layout). A single file is one sequence named after the file stem.
    """
    name = source_name(src, default_name)
    if isinstance(src, Mapping):
        out = {}
        for seq, rows in src.items():
            arr = np.asarray(rows, dtype=float)
            if arr.ndim != 2 or (arr.size and arr.shape[1] < MOT_MIN_COLUMNS):
                raise fail(name, f"sequence '{seq}' must be an array [N, >=6] (frame,id,x,y,w,h,...)")
            arr = arr.reshape(-1, arr.shape[1] if arr.size else MOT_MIN_COLUMNS)
            pad = np.full((arr.shape[0], max(0, 10 - arr.shape[1])), -1.0)
            out[str(seq)] = np.concatenate([arr[:, :10], pad], axis=1)
        return out, name
    if not isinstance(src, (str, os.PathLike)):
        raise fail(name, f"expected a path or a mapping of sequences, got {type(src).__name__}")
    path = Path(src)
    if path.is_file():
        return {path.stem: load_mot_txt(path)}, name
    if not path.is_dir():
        raise fail(name, "file or directory not found")
    out = {p.stem: load_mot_txt(p) for p in sorted(path.glob("*.txt"))}
    for gt in sorted(path.glob("*/gt/gt.txt")):
        out[gt.parent.parent.name] = load_mot_txt(gt)
    if not out:
        raise fail(name, "directory has no <seq>.txt or <seq>/gt/gt.txt files")
    return out, name
