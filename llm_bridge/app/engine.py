"""What the app does with an upload: image segmentation, video tracking and chat, writing results to the store.

Image and video modes use ``glee``'s public API only (:class:`~glee.inference.ImagePredictor`,
:mod:`glee.video`, :mod:`glee.visualize`); chat mode uses :class:`llm_bridge.chat.BridgeChat`.  The ``run_*``
methods run on the job worker (one at a time); the ``save_*`` upload methods only decode and check files.

Every request field is validated here and a bad one raises :class:`~llm_bridge.app.jobs.AppError` with a
message for the page.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from glee.inference import ImagePredictor, PredictorConfig, PreprocessConfig, VisualPrompt
from glee.io import IMAGE_EXTENSIONS, ImageReadError, read_image, save_image
from glee.structures import Detections
from glee.visualize import color_for, draw_detections, draw_prompts, instance_colors
from llm_bridge.app.config import AppConfig
from llm_bridge.app.jobs import AppError, Job
from llm_bridge.app.models import ModelChoice, ModelRegistry
from llm_bridge.app.samples import get_sample
from llm_bridge.app.storage import Store

VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".avi", ".mkv", ".m4v", ".mpg", ".mpeg", ".gif")
DEFAULT_SHORT_SIDE = 800  # the official demo's
IMAGE_FILE = "image.png"
FIRST_FRAME = "first_frame.png"


def _field(req: Mapping[str, Any], name: str, kind: type, default: Any = None, required: bool = False) -> Any:
    value = req.get(name, default)
    if value is None:
        if required:
            raise AppError(f"the request has no '{name}'")
        return None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise AppError(f"'{name}' must be a {kind.__name__}, got {type(value).__name__}")
    return value


def _number(req: Mapping[str, Any], name: str, default: float, low: float, high: float) -> float:
    value = req.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise AppError(f"'{name}' must be a number, got {value!r}")
    if not low <= value <= high:
        raise AppError(f"'{name}' must lie in [{low:g}, {high:g}], got {value:g}")
    return float(value)


def _hex(rgb: Sequence[Any]) -> str:
    return "#" + "".join(f"{int(c):02x}" for c in rgb)


def parse_classes(text: Any) -> list[str]:
    """``"person, dog,car"`` (or a list) -> ``["person", "dog", "car"]``; empty entries are dropped."""
    if isinstance(text, str):
        names = [n.strip() for n in text.replace("\n", ",").split(",")]
    elif isinstance(text, list) and all(isinstance(n, str) for n in text):
        names = [n.strip() for n in text]
    else:
        raise AppError("classes must be a comma-separated string of names, e.g. 'person, dog, car'")
    names = [n for n in names if n]
    if not names:
        raise AppError("enter at least one class name, e.g. 'person, dog, car'")
    if len(names) > 1300:
        raise AppError(f"{len(names)} class names; the app takes up to 1300 (the LVIS vocabulary is 1203)")
    if any(len(n) > 100 for n in names):
        raise AppError("a class name is longer than 100 characters; use short names")
    return names


def _points(value: Any, name: str) -> list[tuple[float, float]]:
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > 64:
        raise AppError(f"'{name}' must be a list of at most 64 [x, y] points")
    out = []
    for p in value:
        if (not isinstance(p, list) or len(p) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in p)):
            raise AppError(f"'{name}': each point must be [x, y] in image pixels, got {p!r}")
        out.append((float(p[0]), float(p[1])))
    return out


def build_prompts(req: Mapping[str, Any]) -> list[VisualPrompt]:
    """Clicks and boxes -> one object per box, plus one object for the clicks.

    Positive clicks form one object; negative clicks refine it.  Without positive clicks, negative clicks
    refine every box instead (so "box + a click on what is not the object" works too).
    """
    pos, neg = _points(req.get("points"), "points"), _points(req.get("negative_points"), "negative_points")
    boxes = req.get("boxes") or []
    if not isinstance(boxes, list) or len(boxes) > 32:
        raise AppError("'boxes' must be a list of at most 32 [x1, y1, x2, y2] boxes")
    prompts: list[VisualPrompt] = []
    try:
        if pos:
            prompts.append(VisualPrompt(points=pos, negative_points=neg))
        for box in boxes:
            if not isinstance(box, list) or len(box) != 4:
                raise AppError(f"each box must be [x1, y1, x2, y2], got {box!r}")
            prompts.append(VisualPrompt(box=box, negative_points=[] if pos else neg))
    except ValueError as exc:
        raise AppError(str(exc)) from None
    if not prompts:
        raise AppError("click on the object (or drag a box around it) first; negative clicks alone select nothing"
                       if neg else "click on the object or drag a box around it first")
    return prompts


def coco_document(dets: Detections, file_name: str, category_names: Sequence[str]) -> dict[str, Any]:
    """A COCO file for one image: ``images``, ``categories`` and scored ``annotations`` (RLE masks)."""
    h, w = dets.image_size
    records = dets.to_coco(image_id=1)  # category_id = class index + 1
    areas = dets.mask_areas().tolist() if dets.masks is not None else None
    for k, rec in enumerate(records):
        rec["id"] = k + 1
        rec["iscrowd"] = 0
        rec["area"] = float(areas[k]) if areas is not None else float(rec["bbox"][2] * rec["bbox"][3])
    return {
        "info": {"description": "GLEE predictions (glee app)"},
        "images": [{"id": 1, "file_name": file_name, "height": h, "width": w}],
        "categories": [{"id": i + 1, "name": n} for i, n in enumerate(category_names)],
        "annotations": records,
    }


class Engine:
    """The app's work, with its settings, models and store."""

    def __init__(self, config: AppConfig, registry: ModelRegistry, store: Store) -> None:
        self.config = config
        self.registry = registry
        self.store = store
        self._predictor: ImagePredictor | None = None

    # ------------------------------------------------------------------ uploads
    def save_image_upload(self, data: bytes, filename: str) -> dict[str, Any]:
        """Decode an uploaded image (the check that it is one) and keep it as PNG."""
        suffix = Path(filename).suffix.lower()
        if suffix in VIDEO_SUFFIXES and suffix != ".gif":
            raise AppError(f"'{filename}' is a video; open the Video tab to track objects in it", 415)
        try:
            array = read_image(data, max_pixels=self.config.max_image_pixels)
        except ImageReadError as exc:
            reason = str(exc).removeprefix("<bytes>: ")
            raise AppError(f"'{filename}' is not an image this app can read ({reason.split(' (')[0]}). Upload a "
                           f"photo as {', '.join(e.lstrip('.').upper() for e in IMAGE_EXTENSIONS[:8])}.", 415) from None
        item, folder = self.store.new("image", name=filename, width=int(array.shape[1]), height=int(array.shape[0]))
        save_image(array, folder / IMAGE_FILE)
        return self.describe_upload(item)

    def save_video_upload(self, data: bytes, filename: str) -> dict[str, Any]:
        """Keep an uploaded video after checking that ffmpeg decodes it and that it is short enough."""
        suffix = Path(filename).suffix.lower()
        if suffix not in VIDEO_SUFFIXES:
            kind = "an image; open the Image tab for it" if suffix in IMAGE_EXTENSIONS else "not a supported video"
            raise AppError(f"'{filename}' is {kind}. Videos: {', '.join(s.lstrip('.').upper() for s in VIDEO_SUFFIXES)}"
                           f", at most {self.config.max_video_seconds:g} s.", 415)
        item, folder = self.store.new("video", name=filename)
        path = folder / f"video{suffix}"
        path.write_bytes(data)
        try:
            return self._register_video(item, path, filename, trim_seconds=None)
        except AppError:
            shutil.rmtree(folder, ignore_errors=True)
            raise

    def use_sample(self, name: Any) -> dict[str, Any]:
        """Copy a bundled sample into the store, as if uploaded."""
        if not isinstance(name, str):
            raise AppError("'name' must be a sample name")
        try:
            sample, path = get_sample(name)
        except KeyError as exc:
            raise AppError(str(exc.args[0]), 404) from None
        if sample.kind == "image":
            return self.save_image_upload(path.read_bytes(), path.name)
        item, folder = self.store.new("video", name=sample.label)
        target = folder / f"video{path.suffix.lower()}"
        shutil.copyfile(path, target)
        return self._register_video(item, target, sample.label, trim_seconds=sample.max_seconds)

    def _register_video(self, item: str, path: Path, filename: str, trim_seconds: float | None) -> dict[str, Any]:
        from glee.video import VideoReadError, open_video

        cap = self.config.max_video_frames
        try:
            src = open_video(path)
            try:
                info = src.info
                frames = iter(src)
                first = next(frames)
                if info.fps and info.num_frames:
                    duration, count = info.num_frames / info.fps, info.num_frames
                else:  # no usable header (some GIFs): count what decodes, up to just past the cap
                    count = 1 + sum(1 for _ in zip(range(cap), frames))
                    duration = count / info.fps if info.fps else None
            finally:
                src.close()
        except (VideoReadError, OSError, StopIteration) as exc:
            reason = str(exc).replace(str(path), "the file") or "no frames"
            raise AppError(f"'{filename}' is not a video this app can read: {reason}", 415) from None
        fps = float(info.fps or 10.0)
        if trim_seconds is not None:
            count = min(count, max(1, int(trim_seconds * fps)))
            duration = count / fps
        if duration is not None and duration > self.config.max_video_seconds + 1e-6:
            raise AppError(f"'{filename}' is {duration:.1f} s long; this server takes videos up to "
                           f"{self.config.max_video_seconds:g} s. Trim it first, e.g. "
                           f"ffmpeg -i in.mp4 -t {self.config.max_video_seconds:g} -c copy out.mp4", 413)
        if count > cap:
            raise AppError(f"'{filename}' has more than {cap} frames; this server tracks at most {cap}. Trim it "
                           "or lower its frame rate first", 413)
        save_image(first, path.parent / FIRST_FRAME)
        meta = self.store.meta(item)
        meta.update(name=filename, file=path.name, width=int(first.shape[1]), height=int(first.shape[0]), fps=fps,
                    frames=int(count), duration=None if duration is None else round(duration, 3))
        self.store.write_meta(item, meta)
        return self.describe_upload(item)

    def describe_upload(self, item: str) -> dict[str, Any]:
        meta = self.store.meta(item)
        out = {"id": item, "kind": meta["kind"], "name": meta["name"], "width": meta["width"],
               "height": meta["height"]}
        if meta["kind"] == "image":
            out["url"] = f"/files/{item}/{IMAGE_FILE}"
        else:
            out.update(url=f"/files/{item}/{FIRST_FRAME}", frames=meta["frames"], fps=meta["fps"],
                       duration=meta["duration"])
        return out

    def _upload(self, req: Mapping[str, Any], kind: str) -> tuple[str, dict[str, Any]]:
        item = _field(req, kind, str, required=True)
        try:
            meta = self.store.meta(item)
        except KeyError as exc:
            raise AppError(str(exc.args[0]), 404) from None
        if meta["kind"] != kind:
            raise AppError(f"upload {item} is a {meta['kind']}, not a {kind}")
        return item, meta

    # ------------------------------------------------------------------ models
    def _short_side(self, choice: ModelChoice) -> int:
        return self.config.short_side or choice.short_side or DEFAULT_SHORT_SIDE

    def _glee(self, req: Mapping[str, Any]) -> tuple[ModelChoice, Any]:
        try:
            return self.registry.get("glee", _field(req, "model", str))
        except KeyError as exc:
            raise AppError(str(exc.args[0])) from None

    def predictor(self, choice: ModelChoice, model: Any) -> ImagePredictor:
        """The predictor of the loaded model (rebuilt when the model changes, so the old one can be freed)."""
        if self._predictor is None or self._predictor.model is not model:
            self._predictor = None
            config = PredictorConfig(preprocess=PreprocessConfig(short_side=self._short_side(choice)),
                                     with_embeddings=False, max_pixels=self.config.max_image_pixels)
            self._predictor = ImagePredictor(model, config)
        return self._predictor

    @staticmethod
    def _warning(choice: ModelChoice) -> str | None:
        return None if choice.trained else choice.describe()["note"]

    # ------------------------------------------------------------------ image mode
    def run_image(self, job: Job, req: Mapping[str, Any]) -> dict[str, Any]:
        item, meta = self._upload(req, "image")
        task = _field(req, "task", str, "classes")
        threshold = _number(req, "threshold", 0.2, 0.0, 1.0)
        top_k = int(_number(req, "top_k", 15, 1, 300))
        image = read_image(self.store.file(item, IMAGE_FILE), max_pixels=None)
        choice, model = self._glee(req)
        predictor = self.predictor(choice, model)
        prompts: list[VisualPrompt] = []
        job.report(0, 1, "segmenting")
        if task == "classes":
            names = parse_classes(req.get("classes"))
            dets = predictor.detect(image, names, top_k=top_k, threshold=threshold)
            categories = names
        elif task == "expression":
            text = _field(req, "expression", str, "").strip()
            if not text:
                raise AppError("enter a referring expression, e.g. 'the dog on the left'")
            if len(text) > 300:
                raise AppError("the expression is longer than 300 characters; shorten it")
            dets = predictor.ground(image, text, top_k=top_k, threshold=threshold)
            categories = [text]
        elif task == "prompts":
            if not model.cfg.visual_prompt:
                raise AppError(f"model {choice.label} has no visual prompter (a stage-1 checkpoint); clicks and "
                               "boxes need stage-2/3 weights")
            prompts = build_prompts(req)
            dets = predictor.segment(image, prompts)  # one mask per object, as the official demo
            categories = ["object"]
        else:
            raise AppError(f"task must be 'classes', 'expression' or 'prompts', got {task!r}")
        dets = dets.sort()
        result, folder = self.store.new("image-result", source=item, task=task)
        overlay = draw_detections(image, dets)
        if prompts:
            overlay = draw_prompts(overlay, prompts)
        save_image(overlay, folder / "overlay.png")
        stem = Path(meta["name"]).stem or "image"
        coco = coco_document(dets, meta["name"], categories)
        (folder / "detections.coco.json").write_text(json.dumps(coco))
        colors = instance_colors(dets)
        areas = dets.mask_areas().tolist() if dets.masks is not None else [None] * len(dets)
        instances = [{"label": dets.class_names[i], "score": round(float(dets.scores[i]), 4),
                      "box": [round(v, 1) for v in dets.boxes[i].tolist()], "area": areas[i],
                      "color": _hex(colors[i])} for i in range(len(dets))]
        job.report(1, 1, "done")
        return {"result": result, "overlay": f"/files/{result}/overlay.png",
                "coco": f"/files/{result}/detections.coco.json", "coco_name": f"{stem}.coco.json",
                "instances": instances, "size": list(dets.image_size), "model": choice.id,
                "warning": self._warning(choice)}

    # ------------------------------------------------------------------ video mode
    def run_video(self, job: Job, req: Mapping[str, Any]) -> dict[str, Any]:
        from glee.video import (
            MOTWriter,
            ObjectTracker,
            ReferringTracker,
            VideoTracker,
            VideoWriter,
            YTVISWriter,
            draw_frame,
        )

        item, meta = self._upload(req, "video")
        task = _field(req, "task", str, "classes")
        threshold = _number(req, "threshold", 0.3, 0.0, 1.0)
        choice, model = self._glee(req)
        preprocess = PreprocessConfig(short_side=self._short_side(choice))
        frames_total = int(meta["frames"])
        source = self.store.file(item, meta["file"])
        if task == "classes":
            names = parse_classes(req.get("classes"))
            tracker: Any = VideoTracker(model, names, preprocess=preprocess, score_threshold=threshold)
            stream = tracker.track(source, max_frames=frames_total)
        elif task == "expression":
            text = _field(req, "expression", str, "").strip()
            if not text:
                raise AppError("enter a referring expression, e.g. 'the person on the bike'")
            stream = ReferringTracker(model, text, preprocess=preprocess).track(source, max_frames=frames_total)
        elif task == "click":
            points = _points(req.get("points"), "points")
            if len(points) != 1:
                raise AppError("click once on the object in the first frame")
            if not model.cfg.visual_prompt:
                raise AppError(f"model {choice.label} has no visual prompter; click tracking needs stage-2/3 weights")
            try:
                prompt = VisualPrompt(points=points)
            except ValueError as exc:
                raise AppError(str(exc)) from None
            stream = ObjectTracker(model, preprocess=preprocess).track(source, [prompt], max_frames=frames_total)
        else:
            raise AppError(f"task must be 'classes', 'expression' or 'click', got {task!r}")
        result, folder = self.store.new("video-result", source=item, task=task)
        stem = "tracks"
        ytvis = YTVISWriter(video_id=1)
        tracks: dict[int, dict[str, Any]] = {}
        job.report(0, frames_total, "tracking")
        with MOTWriter(folder / f"{stem}.mot.txt") as mot, VideoWriter(folder / f"{stem}.mp4", fps=meta["fps"]) as mp4:
            for frame in stream:
                drawn = draw_frame(frame)
                if frame.index == 0:
                    save_image(drawn, folder / "preview.png")
                mp4.write(drawn)
                mot.write(frame)
                ytvis.add(frame)
                d = frame.detections
                for i, tid in enumerate(d.track_ids.tolist() if d.track_ids is not None else []):
                    t = tracks.setdefault(tid, {"id": tid, "label": d.class_names[i], "frames": 0, "best": 0.0,
                                               "color": _hex(color_for(tid))})
                    t["frames"] += 1
                    t["best"] = round(max(t["best"], float(d.scores[i])), 4)
                job.report(frame.index + 1, frames_total)
        if job.done == 0:
            raise AppError("the video yielded no frames")
        ytvis.save(folder / f"{stem}.ytvis.json")
        job.report(job.done, job.done, "done")
        return {"result": result, "video": f"/files/{result}/{stem}.mp4", "preview": f"/files/{result}/preview.png",
                "mot": f"/files/{result}/{stem}.mot.txt", "ytvis": f"/files/{result}/{stem}.ytvis.json",
                "frames": job.done, "fps": meta["fps"], "tracks": [tracks[k] for k in sorted(tracks)],
                "model": choice.id, "warning": self._warning(choice)}

    # ------------------------------------------------------------------ chat mode
    def run_chat(self, job: Job, req: Mapping[str, Any]) -> dict[str, Any]:
        from llm_bridge.chat import PALETTE

        item, _ = self._upload(req, "image")
        message = _field(req, "message", str, "").strip()
        if not message:
            raise AppError("type a question first, e.g. 'Please segment the dog.'")
        if len(message) > 2000:
            raise AppError("the message is longer than 2000 characters; shorten it")
        history = self._history(req.get("history"))
        try:
            choice, chat = self.registry.get("bridge", _field(req, "model", str))
        except KeyError as exc:
            raise AppError(str(exc.args[0])) from None
        image = read_image(self.store.file(item, IMAGE_FILE), max_pixels=None)
        job.report(0, 1, "thinking")
        answer = chat.ask(image, message, history=history, max_new_tokens=self.config.max_new_tokens)
        result, folder = self.store.new("chat-result", source=item)
        answer.save_overlay(folder / "overlay.png")
        segments = [{"index": i, "area": int(m.sum()),
                     "color": _hex(PALETTE[i % len(PALETTE)])}
                    for i, m in enumerate(np.asarray(answer.masks))]
        job.report(1, 1, "done")
        return {"result": result, "text": answer.text, "segments": segments, "overlay": f"/files/{result}/overlay.png",
                "finished": bool(answer.finished), "model": choice.id, "warning": self._warning(choice)}

    def _history(self, value: Any) -> list[dict[str, str]]:
        if value is None:
            return []
        if not isinstance(value, list):
            raise AppError("'history' must be a list of {role, content} messages")
        out = []
        for m in value:
            if (not isinstance(m, dict) or m.get("role") not in ("user", "assistant")
                    or not isinstance(m.get("content"), str)):
                raise AppError("each history message must be {'role': 'user' | 'assistant', 'content': str}")
            out.append({"role": m["role"], "content": m["content"][:2000]})
        keep = 2 * self.config.max_history_turns
        out = out[-keep:] if keep else []
        while out and out[0]["role"] != "user":  # the conversation must open with the user
            out.pop(0)
        return out
