"""The official offline clip mode (``GLEE.MinVIS_inference``): whole-video association, then top-k tracks.

1. Frames go through the network in windows of ``VIDEO_WINDOW_SIZE`` (10) frames, each window one batch;
2. MinVIS association over the whole video (frame 0 defines the Q slots; mean of the last 3 aligned
   embeddings; ``1 - cosine``; Hungarian);
3. video-level class scores ``sigmoid(mean over frames of the aligned logits)`` [Q, K];
4. the top-k (30) (slot, class) pairs over the flattened Q x K scores -- multi-label, a slot may appear
   once per class -- are the video's instances; their per-frame masks (bilinear to the padded size, crop,
   resize to the frame size, ``> 0``) and boxes become YouTube-VIS results.

Unlike the official code, which keeps every frame's Q mask logits in RAM, the aligned per-frame outputs
are spooled to a temporary file (float16 mask logits by default) and read back frame by frame once the
top-k is known, so RAM stays flat; disk use is ``T x Q x h x w x 2`` bytes (e.g. 300 queries at 480p input
give about 15 MB per frame).  Use :class:`glee.video.tracker.VideoTracker` for unbounded streams.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from glee.inference.postprocess import boxes_to_image, mask_logits_to_image
from glee.inference.preprocess import PreprocessConfig
from glee.modeling.glee_model import GleeModel
from glee.structures import Detections
from glee.video._common import Progress, TextPrompt, as_source, check_model, forward_frames, iter_batches
from glee.video.association import MinVISAssociator
from glee.video.tracks import TrackedFrame, empty_detections


class _Spool:
    """Append-only per-frame arrays of a fixed shape in an unlinked temporary file, read back by memmap."""

    def __init__(self, shape: tuple[int, ...], dtype: Any, folder: str | os.PathLike | None) -> None:
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        self._file = tempfile.TemporaryFile(dir=folder)  # removed by the OS when closed
        self.count = 0
        self._view: np.memmap | None = None

    def append(self, array: np.ndarray) -> None:
        if array.shape != self.shape:
            raise ValueError(f"spooled frame has shape {array.shape}, expected {self.shape}")
        self._file.write(np.ascontiguousarray(array, dtype=self.dtype).tobytes())
        self.count += 1

    def __getitem__(self, t: int) -> np.ndarray:
        if self._view is None:
            self._file.flush()
            self._view = np.memmap(self._file, dtype=self.dtype, mode="r", shape=(self.count, *self.shape))
        return np.array(self._view[t])  # a writable copy of one frame

    def close(self) -> None:
        self._view = None
        self._file.close()


def _rle(mask: np.ndarray) -> dict[str, Any]:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _decode(rle: Mapping[str, Any]) -> np.ndarray:
    from pycocotools import mask as mask_utils

    counts = rle["counts"]
    with warnings.catch_warnings():  # pycocotools' decode trips a numpy-2 deprecation warning on every call
        warnings.filterwarnings("ignore", message="__array__ implementation", category=DeprecationWarning)
        return mask_utils.decode({"size": rle["size"], "counts": counts.encode("ascii") if isinstance(counts, str)
                                  else counts}).astype(bool)


@dataclass
class VideoInstance:
    """One instance (a slot with one class) over the whole video; T frames."""

    track_id: int  # rank + 1 (a slot kept with two classes is two instances with two ids)
    slot: int  # the MinVIS slot (= frame-0 query index)
    class_id: int
    class_name: str
    score: float  # video-level sigmoid(mean aligned logit)
    boxes: np.ndarray  # [T, 4] float32 xyxy in frame pixels
    frame_scores: np.ndarray  # [T] float32 sigmoid of this frame's aligned logit
    segmentations: list[dict[str, Any]] | None = None  # T COCO RLEs (empty RLE where the mask is empty)


@dataclass
class OfflineVideoResult:
    """The top-k instances of a video (official offline protocol)."""

    instances: list[VideoInstance]
    num_frames: int
    image_size: tuple[int, int]
    label_names: list[str]
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.instances)

    def to_ytvis(self, video_id: int | str,
                 category_ids: Sequence[int] | Mapping[str, int] | None = None) -> list[dict[str, Any]]:
        """YouTube-VIS results records (``video_id``, ``score``, ``category_id``, per-frame RLE
        ``segmentations``, per-frame ``bboxes`` [x, y, w, h] or ``None`` where the mask is empty).

        ``category_ids`` maps class indices to dataset ids (a sequence, or name -> id); default index + 1.
        """
        from glee.video.export import category_id_of

        records = []
        for inst in self.instances:
            if inst.segmentations is None:
                raise ValueError("this result has no masks (with_masks=False); YouTube-VIS results need masks")
            bboxes = []
            for rle, box in zip(inst.segmentations, inst.boxes):
                bboxes.append(None if _area(rle) == 0 else [round(float(box[0]), 2), round(float(box[1]), 2),
                                                  round(float(box[2] - box[0]), 2), round(float(box[3] - box[1]), 2)])
            records.append({
                "video_id": video_id,
                "score": float(inst.score),
                "category_id": category_id_of(inst.class_id, inst.class_name, category_ids),
                "segmentations": inst.segmentations,
                "bboxes": bboxes,
            })
        return records

    def save_ytvis(self, path: str | os.PathLike, video_id: int | str,
                   category_ids: Sequence[int] | Mapping[str, int] | None = None) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_ytvis(video_id, category_ids)))
        return path

    def frames(self, images: Iterable[np.ndarray] | None = None, min_area: int = 1,
               min_score: float = 0.0) -> Iterator[TrackedFrame]:
        """Per-frame view (for MOT export or drawing): in each frame, the instances whose mask has at least
        ``min_area`` pixels (or, without masks, whose frame score is at least ``min_score``).

        ``images``: the video's frames again, attached to the results for drawing.
        """
        image_iter = iter(images) if images is not None else None
        with_masks = bool(self.instances) and self.instances[0].segmentations is not None
        for t in range(self.num_frames):
            image = next(image_iter) if image_iter is not None else None
            rows, masks = [], []
            for i, inst in enumerate(self.instances):
                if with_masks:
                    m = _decode(inst.segmentations[t])  # type: ignore[index]
                    if m.sum() < min_area:
                        continue
                    masks.append(m)
                elif inst.frame_scores[t] < min_score:
                    continue
                rows.append(i)
            if not rows:
                dets = empty_detections(self.image_size, with_masks)
            else:
                insts = [self.instances[i] for i in rows]
                dets = Detections(
                    boxes=torch.from_numpy(np.stack([x.boxes[t] for x in insts])),
                    scores=torch.tensor([float(x.frame_scores[t]) for x in insts]),
                    class_ids=torch.tensor([x.class_id for x in insts]),
                    class_names=[x.class_name for x in insts],
                    image_size=self.image_size,
                    masks=torch.from_numpy(np.stack(masks)) if with_masks else None,
                    query_indices=torch.tensor([x.slot for x in insts]),
                    track_ids=torch.tensor([x.track_id for x in insts]),
                    meta={"frame_index": t, "video_scores": [x.score for x in insts]},
                )
            yield TrackedFrame(index=t, detections=dets, image=image)


def _area(rle: Mapping[str, Any]) -> int:
    """Pixels of an RLE mask, without decoding it."""
    from pycocotools import mask as mask_utils

    counts = rle["counts"]
    return int(mask_utils.area({"size": rle["size"], "counts": counts.encode("ascii") if isinstance(counts, str)
                                else counts}))


def track_offline(
    model: GleeModel,
    source: Any,
    categories: list[str] | None = None,
    *,
    expression: str | None = None,
    preprocess: PreprocessConfig | None = None,
    window: int | None = None,
    top_k: int = 30,
    memory: int = 3,
    with_masks: bool = True,
    spool_dir: str | os.PathLike | None = None,
    spool_dtype: Any = np.float16,
    max_frames: int | None = None,
    stride: int = 1,
    progress: bool = False,
) -> OfflineVideoResult:
    """Official offline VIS inference on a whole video.

    Args:
        model: a ``GleeModel`` in eval mode.
        source: video path, frame folder, or iterable of frames (all of one size).
        categories / expression: the vocabulary, or one referring expression (R-VOS: use ``top_k=1``).
        preprocess: resize settings (official YTVIS evaluation: ``PreprocessConfig(short_side=480,
            max_size=..., rounding="round")``; default: the demo's shorter side 800).
        window: frames per forward pass (default ``model.cfg.video_window_size``, official 10).
        top_k: instances kept over the flattened (slot, class) scores (official 30).
        spool_dir: folder for the temporary spool file (default: the system temp folder).
        spool_dtype: dtype of the spooled mask logits (float16 halves the disk; float32 is bit-faithful).
    Returns:
        :class:`OfflineVideoResult` with ``top_k`` instances sorted by score.
    """
    model = check_model(model)
    prompt = TextPrompt.encode(model, categories, expression)
    preprocess = preprocess or PreprocessConfig()
    window = window or model.cfg.video_window_size
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    associator = MinVISAssociator(memory)
    src = as_source(source, max_frames, stride)
    bar = Progress(progress, src.info.num_frames, "glee track (offline)")
    spools: dict[str, _Spool] = {}
    logit_sum: torch.Tensor | None = None
    geometry: tuple[tuple[int, int], tuple[int, int], tuple[int, int]] | None = None  # original, resized, padded
    num_frames = 0
    try:
        for group in iter_batches(src, window):
            images = [f for _, f in group]
            out, prepared = forward_frames(model, images, preprocess, **prompt.kwargs(len(images)))
            geo = ((int(images[0].shape[0]), int(images[0].shape[1])), prepared.resized_sizes[0], prepared.padded_size)
            if geometry is None:
                geometry = geo
                q, k = out.pred_logits.shape[1:]
                spools["logits"] = _Spool((q, k), np.float32, spool_dir)
                spools["boxes"] = _Spool((q, 4), np.float32, spool_dir)
                if with_masks:
                    spools["masks"] = _Spool(tuple(out.pred_masks.shape[1:]), spool_dtype, spool_dir)
                logit_sum = torch.zeros(q, k, dtype=torch.float64)
            elif geo != geometry:
                raise ValueError(f"frame {group[0][0]} is {geo[0][1]}x{geo[0][0]} but the video started at "
                                 f"{geometry[0][1]}x{geometry[0][0]}; offline mode needs frames of one size")
            for b in range(len(images)):
                perm = associator.align(out.query_embeddings[b])
                logits = out.pred_logits[b][perm].float().cpu()
                assert logit_sum is not None
                logit_sum += logits.double()
                spools["logits"].append(logits.numpy())
                spools["boxes"].append(out.pred_boxes[b][perm].float().cpu().numpy())
                if with_masks:
                    spools["masks"].append(out.pred_masks[b][perm].float().cpu().numpy())
                num_frames += 1
                bar.update()
        if num_frames == 0 or geometry is None or logit_sum is None:
            raise ValueError("the video has no frames")  # open_video raises first; kept for custom sources
        return _select(spools, logit_sum / num_frames, num_frames, geometry, prompt.label_names, top_k, with_masks)
    finally:
        bar.close()
        src.close()
        for s in spools.values():
            s.close()


def _select(spools: dict[str, _Spool], mean_logits: torch.Tensor, num_frames: int,
            geometry: tuple[tuple[int, int], tuple[int, int], tuple[int, int]], names: list[str], top_k: int,
            with_masks: bool) -> OfflineVideoResult:
    """Top-k (slot, class) pairs by video-level score, then their per-frame boxes, scores and masks."""
    original, resized, padded = geometry
    scores = mean_logits.float().sigmoid()  # [Q, K]
    num_classes = scores.shape[1]
    values, flat = scores.flatten().topk(min(top_k, scores.numel()), sorted=True)
    slots, classes = (flat // num_classes).tolist(), (flat % num_classes).tolist()
    unique_slots = sorted(set(slots))
    col = {s: i for i, s in enumerate(unique_slots)}
    slot_index = torch.tensor(unique_slots, dtype=torch.long)
    boxes = np.zeros((len(slots), num_frames, 4), np.float32)
    frame_scores = np.zeros((len(slots), num_frames), np.float32)
    segms: list[list[dict[str, Any]]] = [[] for _ in slots]
    for t in range(num_frames):
        logits_t = torch.from_numpy(spools["logits"][t])
        boxes_t = boxes_to_image(torch.from_numpy(spools["boxes"][t])[slot_index], padded, resized, original)
        masks_t = None
        if with_masks:
            low = torch.from_numpy(spools["masks"][t].astype(np.float32))[slot_index]
            masks_t = (mask_logits_to_image(low, padded, resized, original) > 0).numpy()
        for i, (s, c) in enumerate(zip(slots, classes)):
            boxes[i, t] = boxes_t[col[s]].numpy()
            frame_scores[i, t] = float(logits_t[s, c].sigmoid())
            if masks_t is not None:
                segms[i].append(_rle(masks_t[col[s]]))
    instances = [
        VideoInstance(track_id=i + 1, slot=s, class_id=c, class_name=names[c], score=float(v), boxes=boxes[i],
                      frame_scores=frame_scores[i], segmentations=segms[i] if with_masks else None)
        for i, (s, c, v) in enumerate(zip(slots, classes, values.tolist()))
    ]
    return OfflineVideoResult(instances=instances, num_frames=num_frames, image_size=original, label_names=names)
