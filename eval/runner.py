"""Run a GLEE model over a dataset and score it: ``glee eval --task coco|lvis|refcoco|ytvis``.

Each task reads a ground-truth file and an image (or frame) folder, runs the model through glee's public
inference API, and produces predictions in the standard results format that the scoring modules of this
package read:

* ``coco`` / ``lvis`` -- COCO instances JSON (LVIS adds ``neg_category_ids`` etc.) + image folder.  The category
  list is the ground truth's (names as written, ids mapped back); :meth:`ImagePredictor.detect` with the
  evaluation's selection (``score_mode="eval"``, multi-label top-k: 100 for COCO, 300 for LVIS) gives a COCO
  results list (``bbox`` + RLE ``segmentation``) scored as box AP and, when the ground truth has masks, mask AP.
* ``refcoco`` -- a RefCOCO-style refs file, the "cocofied" form ``train.data.refcoco`` reads and
  ``scripts/make_shapesworld.py`` writes (``refs_<split>.json``): ``images`` entries with ``file_name``,
  ``height``, ``width`` and an ``expressions`` list; ``annotations`` with ``image_id``, ``bbox`` and optionally
  ``segmentation`` (the last annotation of an entry is the target, as the official loader does).  Every
  expression is one sample, id ``"<image id>:<expression index>"``; :meth:`ImagePredictor.ground` gives its top-1
  box and mask, scored as REC ``P@0.5`` and RES ``oIoU`` / ``mIoU`` (``eval.refcoco``).
* ``ytvis`` -- a YouTube-VIS JSON (``videos`` with ``file_names`` relative to the frame folder) + frame folder;
  :func:`glee.video.track_offline` (the official whole-video MinVIS protocol, top-30 (slot, class) pairs) per
  video, exported with ``OfflineVideoResult.to_ytvis``, scored as video AP (``eval.video``).

Ground truth is checked before the model is loaded: a missing file or field, or an image missing from the
folder, is a ``ValueError`` naming the file, the record and the field.  ``limit`` keeps the first N images /
videos / refs entries; the ground truth is cut to the same subset, so scores are over what was run.

This is the only module of ``eval`` that imports ``glee`` (and torch); the scoring modules stay model-free.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import glee  # noqa: F401  (installs the torchvision shim before transformers / open_clip are imported)
from eval.cli import evaluate_predictions
from eval.io import as_box, as_id, as_list, fail, load_json, require, to_rle
from glee.inference.postprocess import PostprocessConfig
from glee.inference.predictor import ImagePredictor, PredictorConfig, check_class_names
from glee.inference.preprocess import PreprocessConfig
from glee.io import read_image
from glee.modeling.glee_model import GleeModel

TASKS = ("coco", "lvis", "refcoco", "ytvis")
# Detections kept per image / video before scoring: the official evaluation's numbers.
DEFAULT_TOP_K = {"coco": 100, "lvis": 300, "refcoco": 1, "ytvis": 30}


@dataclass
class RunSettings:
    """What to run and how.

    Attributes:
        short_side / max_size: input resize (``None``: the model config's ``min_size_test`` / ``max_size_test``,
            e.g. 320 / 512 for the bundled nano model, 800 / 1333 for official checkpoints).
        top_k: instances per image (detection) or per video (ytvis); ``None``: :data:`DEFAULT_TOP_K`.
            Referring expressions always keep the top-1.
        score_threshold: detection: keep instances with score > threshold (``None`` keeps the whole top-k).
        batch_size: images per forward (detection and referring).
        limit: first N images / refs entries / videos (``None`` or 0: all).
        progress: tqdm bars.
    """

    short_side: int | None = None
    max_size: int | None = None
    top_k: int | None = None
    score_threshold: float | None = 0.0
    batch_size: int = 1
    limit: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.limit is not None and self.limit < 0:
            raise ValueError(f"limit must be >= 0 (0: everything), got {self.limit}")

    def preprocess(self, model: GleeModel) -> PreprocessConfig:
        return PreprocessConfig(short_side=self.short_side or model.cfg.min_size_test,
                                max_size=self.max_size or model.cfg.max_size_test)


# ----------------------------------------------------------------------------------------------
# Loading


def load_predictor(weights: str | os.PathLike | GleeModel, settings: RunSettings | None = None,
                   preset: str | None = None, device: str = "cpu") -> ImagePredictor:
    """An :class:`ImagePredictor` set up for evaluation.

    ``weights``: a loaded model, or anything ``glee predict --weights`` accepts (save_pretrained folder,
    official checkpoint file with optional ``preset``, parity-fixture folder), loaded by the same
    :func:`glee.inference.loading.load_model` (no downloads).  Images are never downscaled on reading
    (``max_pixels=None``) so that predictions are in the ground truth's pixel frame; expressions get the
    RefCOCO cleaning the official evaluation applies.
    """
    from glee.inference.loading import load_model

    settings = settings or RunSettings()
    model = weights if isinstance(weights, GleeModel) else load_model(weights, preset=preset, device=device)
    config = PredictorConfig(
        preprocess=settings.preprocess(model),
        categories=PostprocessConfig(top_k=100, threshold=settings.score_threshold, score_mode="eval",
                                     multi_label=True),
        expressions=PostprocessConfig(top_k=1, threshold=None),
        batch_size=settings.batch_size,
        with_embeddings=False,
        max_pixels=None,
        clean_expressions=True,
    )
    return ImagePredictor(model, config)


# ----------------------------------------------------------------------------------------------
# Ground truth: load, check, cut to the first `limit` entries


def _limit(items: list, limit: int | None) -> list:
    return items[:limit] if limit else items


def _image_path(folder: Path, rec: dict, name: str, where: str) -> Path:
    file_name = require(rec, "file_name", name, where)
    if not isinstance(file_name, str) or not file_name:
        raise fail(name, f"{where} field 'file_name' must be a non-empty string, got {file_name!r}")
    return folder / file_name


def _check_files(paths: Sequence[tuple[Path, str]], folder: Path, name: str) -> None:
    """Every referenced image exists, before any model time is spent."""
    missing = [(p, where) for p, where in paths if not p.is_file()]
    if missing:
        p, where = missing[0]
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        shown = p.relative_to(folder) if p.is_relative_to(folder) else p
        raise fail(name, f"{where} names '{shown}', which is not in the image folder {folder}{more}; "
                         "check --images")


def _check_folder(folder: str | os.PathLike) -> Path:
    path = Path(folder)
    if not path.is_dir():
        raise ValueError(f"{path}: image folder not found (--images must be the folder the ground truth's "
                         "'file_name' entries are relative to)")
    return path


def _object(data: Any, name: str, keys: Sequence[str], kind: str) -> dict:
    if not isinstance(data, dict):
        raise fail(name, f"{kind} must be a JSON object with {', '.join(repr(k) for k in keys)}")
    for k in keys:
        as_list(require(data, k, name, kind), name, f"'{k}'")
    return data


def _size(rec: dict, name: str, where: str) -> tuple[int, int]:
    return (as_id(require(rec, "height", name, where), name, where, "height"),
            as_id(require(rec, "width", name, where), name, where, "width"))


def _categories(data: dict, name: str) -> tuple[list[str], list[int]]:
    names, ids = [], []
    for i, c in enumerate(data["categories"]):
        where = f"category {i}"
        ids.append(as_id(require(c, "id", name, where), name, where, "id"))
        n = require(c, "name", name, where)
        if not isinstance(n, str) or not n.strip():
            raise fail(name, f"{where} field 'name' must be a non-empty string (the model is prompted with it)")
        names.append(n)
    if not names:
        raise fail(name, "'categories' is empty: the model needs a category list to detect")
    try:
        check_class_names(names)  # e.g. two categories named alike: the model could not tell them apart
    except ValueError as exc:
        raise fail(name, f"'categories': {exc}") from None
    return names, ids


def _renamed(exc: ValueError, placeholder: str, name: str) -> ValueError:
    """A scorer's error about in-memory data, re-labelled with the file it came from."""
    return ValueError(str(exc).replace(placeholder, name, 1))


@dataclass
class ImageToRun:
    """One image of a detection run."""

    id: int
    path: Path
    size: tuple[int, int]  # (height, width) from the ground truth


@dataclass
class ReferringSample:
    """One expression to ground (sample id ``"<image id>:<k>"``)."""

    id: str
    path: Path
    expression: str
    size: tuple[int, int]


@dataclass
class VideoToRun:
    """One video of a ytvis run: its frame files in order."""

    id: int
    frames: list[Path]
    size: tuple[int, int]


@dataclass
class TaskInputs:
    """Checked ground truth of one task, cut to what will be run.

    Attributes:
        gt: ground truth in the scorers' format (COCO / YouTube-VIS dict, or ``eval.refcoco`` samples).
        gt_path: the ground-truth file when ``gt`` is that whole file unchanged (no copy needs writing).
        items: :class:`ImageToRun`, :class:`ReferringSample` or :class:`VideoToRun` records.
        names / ids: the category list and its dataset ids (detection and ytvis).
        metrics: ``eval.cli.METRICS`` names to score.
    """

    task: str
    gt: Any
    gt_path: str | None
    items: list[Any]
    metrics: tuple[str, ...]
    names: list[str] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)


@dataclass
class TaskRun:
    """Predictions of one task and the checked inputs they are scored against.

    Attributes:
        predictions: results records in the scorers' format (COCO results, ``eval.refcoco`` predictions,
            YouTube-VIS results).
        num_items / unit: what the model ran on (``images``, ``expressions`` or ``frames``).
        seconds: wall time of the model loop (reading, forward, postprocessing; not loading or scoring).
        extra: task settings worth recording (top-k, counts).
    """

    inputs: TaskInputs
    predictions: list[dict[str, Any]]
    num_items: int
    unit: str
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def task(self) -> str:
        return self.inputs.task

    @property
    def items_per_s(self) -> float:
        return self.num_items / self.seconds if self.seconds > 0 else float("nan")


def _whole_file(gt: Any, cut: bool) -> str | None:
    return None if cut or not isinstance(gt, (str, os.PathLike)) else os.fspath(gt)


def _cut_ground_truth(data: dict, records: str, id_field: str, keep: set[int], limit: int | None,
                      name: str) -> tuple[dict, bool]:
    """The ground truth restricted to its first ``limit`` images/videos (and their annotations); whether it was cut."""
    if not limit or limit >= len(data[records]):
        return data, False
    anns = [a for i, a in enumerate(data["annotations"])
            if as_id(require(a, id_field, name, f"annotation {i}"), name, f"annotation {i}", id_field) in keep]
    return {**data, records: data[records][:limit], "annotations": anns}, True


def load_detection_gt(gt: str | os.PathLike | dict, images: str | os.PathLike, limit: int | None = None,
                      lvis: bool = False) -> TaskInputs:
    """COCO / LVIS ground truth for a detection run, checked with the scorer's own validation."""
    data, name = load_json(gt, "<ground truth>")
    data = _object(data, name, ("images", "annotations", "categories"), "ground truth")
    folder = _check_folder(images)
    names, ids = _categories(data, name)
    todo: list[ImageToRun] = []
    for i, im in enumerate(_limit(data["images"], limit)):
        where = f"image {i}"
        image_id = as_id(require(im, "id", name, where), name, where, "id")
        todo.append(ImageToRun(image_id, _image_path(folder, im, name, where), _size(im, name, where)))
    _check_files([(t.path, f"image {i} (id {t.id})") for i, t in enumerate(todo)], folder, name)
    data, cut = _cut_ground_truth(data, "images", "image_id", {t.id for t in todo}, limit, name)
    from eval.coco import load_coco_gt

    iou_types = _iou_types(data)
    for iou_type in iou_types:  # now rather than after the model run
        try:
            load_coco_gt(data, iou_type, lvis=lvis)
        except ValueError as exc:
            raise _renamed(exc, "<ground truth>", name) from None
    task = "lvis" if lvis else "coco"
    return TaskInputs(task, data, _whole_file(gt, cut), todo, tuple(f"{task}-{t}" for t in iou_types), names, ids)


def _iou_types(data: dict) -> tuple[str, ...]:
    """Box AP always; mask AP when the annotations carry masks (a box-only file gets box AP only)."""
    anns = data["annotations"]
    if anns and not any(isinstance(a, dict) and "segmentation" in a for a in anns):
        return ("bbox",)
    return ("bbox", "segm")


def load_refs(refs: str | os.PathLike | dict, images: str | os.PathLike, limit: int | None = None) -> TaskInputs:
    """A RefCOCO-style refs file -> ``eval.refcoco`` ground-truth samples and the expressions to run.

    ``limit`` keeps the first N ``images`` entries (referred objects), with all their expressions.
    """
    data, name = load_json(refs, "<refs>")
    data = _object(data, name, ("images", "annotations"), "refs file")
    folder = _check_folder(images)
    entries = _limit(data["images"], limit)
    ids: set[int] = set()
    for i, im in enumerate(entries):
        image_id = as_id(require(im, "id", name, f"image {i}"), name, f"image {i}", "id")
        if image_id in ids:
            raise fail(name, f"image {i} repeats id {image_id}")
        ids.add(image_id)
    target: dict[int, tuple[int, dict]] = {}
    for i, a in enumerate(data["annotations"]):
        where = f"annotation {i}"
        image_id = as_id(require(a, "image_id", name, where), name, where, "image_id")
        if image_id in ids:
            target[image_id] = (i, a)  # the last annotation of an entry is the target, as in the official loader
    gt: list[dict[str, Any]] = []
    todo: list[ReferringSample] = []
    checks = []
    for i, im in enumerate(entries):
        where = f"image {i}"
        image_id = as_id(im["id"], name, where, "id")
        path = _image_path(folder, im, name, where)
        h, w = _size(im, name, where)
        exprs = as_list(require(im, "expressions", name, where), name, f"{where} field 'expressions'")
        if not exprs or not all(isinstance(e, str) and e.strip() for e in exprs):
            raise fail(name, f"{where} field 'expressions' must be a non-empty list of non-empty strings")
        if image_id not in target:
            raise fail(name, f"{where} (id {image_id}) has no annotation (no entry of 'annotations' has "
                             f"image_id {image_id})")
        k, ann = target[image_id]
        a_where = f"annotation {k}"
        sample: dict[str, Any] = {"height": h, "width": w,
                                  "bbox": as_box(require(ann, "bbox", name, a_where), name, a_where)}
        if "segmentation" in ann:
            sample["segmentation"] = to_rle(ann["segmentation"], h, w, name, a_where)
        checks.append((path, f"{where} (id {image_id})"))
        for e, expr in enumerate(exprs):
            sid = f"{image_id}:{e}"
            gt.append({"id": sid, **sample})
            todo.append(ReferringSample(sid, path, expr, (h, w)))
    _check_files(checks, folder, name)
    masks = ["segmentation" in s for s in gt]
    if any(masks) and not all(masks):
        raise fail(name, "some annotations have a 'segmentation' and others do not; give masks for all "
                         "(RES) or for none (REC only)")
    return TaskInputs("refcoco", gt, None, todo, ("refcoco",))


def load_video_gt(gt: str | os.PathLike | dict, frames: str | os.PathLike, limit: int | None = None) -> TaskInputs:
    """YouTube-VIS ground truth for a video run, checked with the scorer's own validation."""
    data, name = load_json(gt, "<ground truth>")
    data = _object(data, name, ("videos", "annotations", "categories"), "ground truth")
    folder = _check_folder(frames)
    names, ids = _categories(data, name)
    todo: list[VideoToRun] = []
    checks = []
    for i, v in enumerate(_limit(data["videos"], limit)):
        where = f"video {i}"
        vid = as_id(require(v, "id", name, where), name, where, "id")
        files = as_list(require(v, "file_names", name, where), name, f"{where} field 'file_names'")
        if not files:
            raise fail(name, f"{where} field 'file_names' is empty")
        paths = []
        for t, f in enumerate(files):
            if not isinstance(f, str) or not f:
                raise fail(name, f"{where} field 'file_names' entry {t} must be a non-empty string")
            paths.append(folder / f)
            checks.append((folder / f, f"{where} (id {vid}) frame {t}"))
        todo.append(VideoToRun(vid, paths, _size(v, name, where)))
    _check_files(checks, folder, name)
    data, cut = _cut_ground_truth(data, "videos", "video_id", {v.id for v in todo}, limit, name)
    from eval.video import evaluate_ytvis

    try:  # the scorer's validation of the annotations (an empty prediction list costs nothing)
        evaluate_ytvis(data, [])
    except ValueError as exc:
        raise _renamed(exc, "<ground truth>", name) from None
    return TaskInputs("ytvis", data, _whole_file(gt, cut), todo, ("ytvis",), names, ids)


def load_task_inputs(task: str, gt: str | os.PathLike | dict, images: str | os.PathLike,
                     limit: int | None = None) -> TaskInputs:
    """Load and check ``task``'s ground truth and image folder (cheap: run it before loading a model)."""
    if task in ("coco", "lvis"):
        return load_detection_gt(gt, images, limit, lvis=task == "lvis")
    if task == "refcoco":
        return load_refs(gt, images, limit)
    if task == "ytvis":
        return load_video_gt(gt, images, limit)
    raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")


# ----------------------------------------------------------------------------------------------
# Running


def _read(path: Path, size: tuple[int, int], where: str) -> np.ndarray:
    image = read_image(path, max_pixels=None)
    if tuple(image.shape[:2]) != tuple(size):
        raise ValueError(f"{path}: the image is {image.shape[1]}x{image.shape[0]} but {where} says "
                         f"{size[1]}x{size[0]} (width x height); predictions would not line up with the ground truth")
    return image


def _bar(total: int, unit: str, desc: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, unit=unit, desc=desc, disable=not enabled, dynamic_ncols=True)


def _detect(predictor: ImagePredictor, inputs: TaskInputs, settings: RunSettings) -> TaskRun:
    top_k = settings.top_k or DEFAULT_TOP_K[inputs.task]
    cats = predictor.encode_classes(inputs.names)  # once: long vocabularies are encoded in cached chunks
    results: list[dict[str, Any]] = []
    todo: list[ImageToRun] = inputs.items
    bar = _bar(len(todo), "img", f"glee eval {inputs.task}", settings.progress)
    start = time.perf_counter()
    try:
        for b in range(0, len(todo), settings.batch_size):
            chunk = todo[b : b + settings.batch_size]
            arrays = [_read(t.path, t.size, f"the ground truth of image id {t.id}") for t in chunk]
            dets = predictor.detect(arrays, cats, top_k=top_k, threshold=settings.score_threshold,
                                    score_mode="eval", multi_label=True)
            for t, d in zip(chunk, dets):
                results += d.to_coco(t.id, category_ids=inputs.ids)
            bar.update(len(chunk))
    finally:
        bar.close()
    return TaskRun(inputs, results, len(todo), "images", time.perf_counter() - start,
                   {"top_k": top_k, "categories": len(inputs.names)})


def _ground(predictor: ImagePredictor, inputs: TaskInputs, settings: RunSettings) -> TaskRun:
    todo: list[ReferringSample] = inputs.items
    preds: list[dict[str, Any]] = []
    bar = _bar(len(todo), "expr", "glee eval refcoco", settings.progress)
    start = time.perf_counter()
    cache: tuple[Path, np.ndarray] | None = None  # an entry's expressions are consecutive: read its image once
    try:
        for b in range(0, len(todo), settings.batch_size):
            chunk = todo[b : b + settings.batch_size]
            arrays = []
            for s in chunk:
                if cache is None or cache[0] != s.path:
                    cache = (s.path, _read(s.path, s.size, f"the refs entry of sample {s.id}"))
                arrays.append(cache[1])
            dets = predictor.ground(arrays, [s.expression for s in chunk])
            for s, d in zip(chunk, dets):
                preds += [{"id": s.id, "bbox": r["bbox"], "segmentation": r["segmentation"], "score": r["score"]}
                          for r in d.to_coco(s.id)]
            bar.update(len(chunk))
    finally:
        bar.close()
    return TaskRun(inputs, preds, len(todo), "expressions", time.perf_counter() - start,
                   {"referred_objects": len({s.id.split(":")[0] for s in todo})})


def _track(predictor: ImagePredictor, inputs: TaskInputs, settings: RunSettings) -> TaskRun:
    from glee.video import track_offline

    top_k = settings.top_k or DEFAULT_TOP_K["ytvis"]
    todo: list[VideoToRun] = inputs.items
    total = sum(len(v.frames) for v in todo)
    bar = _bar(total, "frame", "glee eval ytvis", settings.progress)

    def read_frames(video: VideoToRun) -> Iterator[np.ndarray]:
        for t, p in enumerate(video.frames):
            yield _read(p, video.size, f"the ground truth of video id {video.id} (frame {t})")
            bar.update(1)

    results: list[dict[str, Any]] = []
    start = time.perf_counter()
    try:
        for video in todo:
            out = track_offline(predictor.model, read_frames(video), inputs.names,
                                preprocess=predictor.config.preprocess, top_k=top_k)
            results += out.to_ytvis(video.id, category_ids=inputs.ids)
    finally:
        bar.close()
    return TaskRun(inputs, results, total, "frames", time.perf_counter() - start,
                   {"top_k": top_k, "videos": len(todo)})


def run_inputs(predictor: ImagePredictor, inputs: TaskInputs, settings: RunSettings | None = None) -> TaskRun:
    """Run the model over checked inputs (:func:`load_task_inputs`)."""
    settings = settings or RunSettings()
    runner = {"coco": _detect, "lvis": _detect, "refcoco": _ground, "ytvis": _track}[inputs.task]
    return runner(predictor, inputs, settings)


def run_task(task: str, predictor: ImagePredictor, gt: str | os.PathLike | dict, images: str | os.PathLike,
             settings: RunSettings | None = None) -> TaskRun:
    """Load and check ``task``'s inputs, then run the model over them (module docstring)."""
    settings = settings or RunSettings()
    return run_inputs(predictor, load_task_inputs(task, gt, images, settings.limit), settings)


# ----------------------------------------------------------------------------------------------
# Scoring and output

PREDICTION_FILES = {"coco": "coco_results.json", "lvis": "lvis_results.json", "refcoco": "refcoco_results.json",
                    "ytvis": "ytvis_results.json"}


def metric_options(metric: str, backend: str = "auto", max_dets: int | None = None,
                   progress: bool = False) -> dict[str, Any]:
    """Keyword arguments of ``evaluate_predictions`` for ``metric`` (what ``glee eval --metric`` passes)."""
    opts: dict[str, Any] = {"progress": progress}
    if metric.startswith(("coco", "lvis")):
        opts["backend"] = backend
    if metric.startswith("lvis") and max_dets is not None:
        opts["max_dets"] = max_dets
    return opts


def score_run(run: TaskRun, backend: str = "auto", max_dets: int | None = None,
              progress: bool = False) -> dict[str, dict[str, Any]]:
    """``{metric: results}`` for every metric of ``run``, scored in memory."""
    return {m: evaluate_predictions(m, run.inputs.gt, run.predictions, **metric_options(m, backend, max_dets, progress))
            for m in run.inputs.metrics}


def write_run(run: TaskRun, out_dir: str | os.PathLike) -> dict[str, str]:
    """Write the predictions and, when cut or converted, the ground truth they are scored against.

    Returns ``{"pred": path, "gt": path}``: the pair ``glee eval --metric M --gt GT --pred PRED`` scores.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pred_path = out / PREDICTION_FILES[run.task]
    pred_path.write_text(json.dumps(run.predictions))
    gt_path = run.inputs.gt_path
    if gt_path is None:
        gt_file = out / f"{run.task}_gt.json"
        gt_file.write_text(json.dumps(run.inputs.gt))
        gt_path = str(gt_file)
    return {"pred": str(pred_path), "gt": gt_path}


def evaluate_task(task: str, weights: str | os.PathLike | GleeModel, gt: str | os.PathLike,
                  images: str | os.PathLike, out_dir: str | os.PathLike, settings: RunSettings | None = None,
                  preset: str | None = None, device: str = "cpu", backend: str = "auto",
                  max_dets: int | None = None) -> dict[str, Any]:
    """Check inputs, load the model, run it, write the predictions, score them and write ``metrics.json``.

    Returns the ``metrics.json`` record: ``task, weights, gt, images, settings, files, results`` (``{metric:
    {name: value}}``), ``timing`` and ``machine``.  The predictions are scored from the written files, so
    ``glee eval --metric M --gt files.gt --pred files.pred`` reproduces ``results[M]`` exactly.
    """
    from glee.benchmark import machine_summary

    settings = settings or RunSettings()
    inputs = load_task_inputs(task, gt, images, settings.limit)  # bad input fails before the model loads
    tic = time.perf_counter()
    predictor = load_predictor(weights, settings, preset=preset, device=device)
    load_s = time.perf_counter() - tic
    run = run_inputs(predictor, inputs, settings)
    files = write_run(run, out_dir)
    tic = time.perf_counter()
    results = {m: evaluate_predictions(m, files["gt"], files["pred"],
                                       **metric_options(m, backend, max_dets, settings.progress))
               for m in inputs.metrics}
    score_s = time.perf_counter() - tic
    pre = predictor.config.preprocess
    record: dict[str, Any] = {
        "task": task,
        "weights": "<in-memory model>" if isinstance(weights, GleeModel) else os.fspath(weights),
        "gt": os.fspath(gt),
        "images": os.fspath(images),
        "settings": {"short_side": pre.short_side, "max_size": pre.max_size, "limit": settings.limit or None,
                     "score_threshold": settings.score_threshold if task in ("coco", "lvis") else None,
                     "batch_size": settings.batch_size, "device": str(predictor.device), **run.extra},
        "files": files,
        "results": results,
        "timing": {"load_s": round(load_s, 3), "run_s": round(run.seconds, 3), "score_s": round(score_s, 3),
                   "items": run.num_items, "unit": run.unit, "per_s": round(run.items_per_s, 4)},
        "machine": machine_summary(),
    }
    (Path(out_dir) / "metrics.json").write_text(json.dumps(record, indent=2) + "\n")
    return record
