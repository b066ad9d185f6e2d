"""Single-target video modes: VOS from a first-frame mask or box, interactive tracking from clicks on frame 0,
and referring video object segmentation (R-VOS) from an expression.

The official inference for these tasks is not public (``inference_ytbvos`` / ``inference_rvos`` are
referenced but missing; spec 8.6-8.7).  The design here follows what the official code does define:

**VOS / clicks** (:class:`ObjectTracker`).  Each object is a :class:`~glee.inference.prompts.VisualPrompt`
on frame 0 (mask, box, scribble or clicks; built exactly as the image predictor builds it) and runs with
GLEE's visual prompter and the category list ``["object"]``.  Two prompt modes:

* ``first_frame`` (default) -- the official *training* mechanism (``GLEE_Model.video_visualP``): the
  frame-0 template tokens (early fusion) and the frame-0 decoder point tokens are computed once and reused
  for every later frame, so each frame's queries look for "that object".
* ``propagate`` -- every frame is prompted with the previous frame's predicted mask (type ``mask``).

Query choice: on frame 0, the query that best fits the prompt (mask IoU for a mask, box IoU for a box,
the demo's top-1 class probability for one click or a scribble, the image predictor's click ranking for
several or negative clicks).  On later frames the query maximising
``(1 - embed_weight) * sigmoid(logit) + embed_weight * cosine(reference, embedding)``, the reference being
the mean embedding of the object's last ``memory`` (3) chosen queries -- temporal consistency through
``pred_track_embed`` as in MinVIS.

**R-VOS** (:class:`ReferringTracker`): per-frame grounding with the expression (K = 1), top-1 on the first
frame, the same probability + embedding-similarity choice afterwards.  The offline alternative, a
MinVIS-associated slot with the best video-level score, is ``track_offline(..., expression=..., top_k=1)``.

Memory is flat: per object, the last ``memory`` embeddings (and, in ``propagate`` mode, one prompt mask).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from glee.box_ops import box_iou
from glee.inference.postprocess import boxes_to_image, mask_logits_to_image, select_by_clicks
from glee.inference.preprocess import PreparedBatch, PreprocessConfig, prepare_batch, resize_prompt_mask
from glee.inference.prompts import PromptPlan, VisualPrompt, clicks_to_canvas, plan_prompt
from glee.modeling.glee_model import GleeModel, GleeOutput, VisualPromptEmbeddings
from glee.structures import Detections
from glee.video._common import (
    Progress,
    TextPrompt,
    as_source,
    check_model,
    forward_frames,
    iter_batches,
    model_device,
)
from glee.video.tracks import TrackedFrame, empty_detections

PromptMode = Literal["first_frame", "propagate"]


class _TargetMemory:
    """One target's recent query embeddings and the probability + similarity choice of its next query."""

    def __init__(self, memory: int, embed_weight: float) -> None:
        self.history: deque[Tensor] = deque(maxlen=memory)
        self.embed_weight = embed_weight

    def choose(self, probs: Tensor, embeddings: Tensor) -> int:
        """[Q] probabilities, [Q, C] embeddings -> the chosen query."""
        if not self.history:
            return int(probs.argmax())
        reference = torch.stack(list(self.history)).mean(0)
        similarity = F.normalize(embeddings.float(), dim=-1) @ F.normalize(reference.float(), dim=-1)
        key = (1 - self.embed_weight) * probs.float() + self.embed_weight * similarity
        return int(key.argmax())

    def remember(self, embedding: Tensor) -> None:
        self.history.append(embedding.detach().float().clone())

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.history)


def _check_weights(embed_weight: float, memory: int, min_score: float) -> None:
    if not 0.0 <= embed_weight <= 1.0:
        raise ValueError(f"embed_weight must lie in [0, 1], got {embed_weight}")
    if memory < 1:
        raise ValueError(f"memory must be >= 1 frame, got {memory}")
    if not 0.0 <= min_score <= 1.0:
        raise ValueError(f"min_score must be a probability in [0, 1], got {min_score}")


def _single_target_detections(out: GleeOutput, b: int, query: int, prepared: PreparedBatch, pb: int,
                              original: tuple[int, int], track_id: int, name: str, with_masks: bool,
                              frame_index: int) -> tuple[Detections, np.ndarray | None]:
    """One chosen query -> Detections with one instance (and its full-resolution mask as numpy)."""
    q = torch.tensor([query], device=out.pred_boxes.device)
    resized, padded = prepared.resized_sizes[pb], prepared.padded_size
    boxes = boxes_to_image(out.pred_boxes[b][q].float(), padded, resized, original)
    mask = None
    if with_masks:
        mask = (mask_logits_to_image(out.pred_masks[b][q], padded, resized, original) > 0).cpu()
    dets = Detections(
        boxes=boxes.cpu(), scores=out.pred_logits[b][q, :1].float().sigmoid()[:, 0].cpu(),
        class_ids=torch.zeros(1, dtype=torch.long), class_names=[name], image_size=original, masks=mask,
        query_indices=q.cpu(), query_embeddings=out.query_embeddings[b][q].float().cpu(),
        track_ids=torch.tensor([track_id]), meta={"frame_index": frame_index},
    )
    return dets, None if mask is None else mask[0].numpy()


# ---------------------------------------------------------------------------------------------------------
@dataclass
class _Object:
    """State of one prompted object."""

    track_id: int
    plan: PromptPlan
    memory: _TargetMemory
    prompt_mask: np.ndarray | None = None  # propagate mode: the mask that prompts the next frame
    extra: dict[str, Any] = field(default_factory=dict)


def _as_prompt(p: Any) -> VisualPrompt:
    if isinstance(p, VisualPrompt):
        return p
    if isinstance(p, np.ndarray) or (isinstance(p, Tensor) and p.dim() >= 2):
        return VisualPrompt(mask=np.asarray(p.cpu() if isinstance(p, Tensor) else p).astype(bool))
    raise TypeError(f"an object prompt must be a VisualPrompt or a [H, W] mask array, got {type(p).__name__}")


class ObjectTracker:
    """Semi-supervised VOS and interactive tracking: objects given on the first frame, segmented in every frame.

    Args:
        model: a ``GleeModel`` with a visual prompter (``cfg.visual_prompt``; stage-2/3 or VOS weights).
        prompt_mode: ``first_frame`` (reuse frame-0 prompt tokens) or ``propagate`` (re-prompt each frame with
            the previous mask); see the module docstring.
        preprocess: resize/normalise settings (default: the demo's, shorter side 800).
        embed_weight: weight of embedding similarity against class probability when choosing a query.
        memory: embeddings averaged into an object's reference (MinVIS: 3).
        min_score: a frame whose best query has a lower probability reports the object as absent there.
        with_masks: compute full-resolution masks (``propagate`` needs them and forces this on).
        prompt_seed: seed for subsampling large prompts' points (``None``: the global RNG, as officially).
    """

    def __init__(
        self,
        model: GleeModel,
        *,
        prompt_mode: PromptMode = "first_frame",
        preprocess: PreprocessConfig | None = None,
        embed_weight: float = 0.5,
        memory: int = 3,
        min_score: float = 0.0,
        with_masks: bool = True,
        prompt_seed: int | None = 0,
    ) -> None:
        self.model = check_model(model)
        if not model.cfg.visual_prompt:
            raise ValueError("this model has no visual prompter (cfg.visual_prompt is False, e.g. a stage-1 "
                             "checkpoint); VOS and click tracking need stage-2/3 or VOS weights")
        if prompt_mode not in ("first_frame", "propagate"):
            raise ValueError(f"prompt_mode must be 'first_frame' or 'propagate', got {prompt_mode!r}")
        _check_weights(embed_weight, memory, min_score)
        self.prompt_mode = prompt_mode
        self.preprocess = preprocess or PreprocessConfig()
        self.embed_weight = embed_weight
        self.memory = memory
        self.min_score = min_score
        self.with_masks = with_masks or prompt_mode == "propagate"
        self.prompt_seed = prompt_seed
        self.text = TextPrompt.encode(model, ["object"], None)
        self._objects: list[_Object] = []
        self._caches: list[tuple[list[int], VisualPromptEmbeddings]] = []  # (object indices, frame-0 prompt) per kind

    def state_nbytes(self) -> int:
        """Bytes carried between frames (embeddings, cached prompt tokens, propagated masks)."""
        total = sum(o.memory.nbytes() + (o.prompt_mask.nbytes if o.prompt_mask is not None else 0)
                    for o in self._objects)
        return total + sum(c.nbytes() for _, c in self._caches)

    def track(self, source: Any, prompts: VisualPrompt | Sequence[Any], *, max_frames: int | None = None,
              stride: int = 1, progress: bool = False) -> Iterator[TrackedFrame]:
        """Segment the prompted objects through ``source``; track id ``i + 1`` is ``prompts[i]``.

        Args:
            prompts: one or more :class:`VisualPrompt` (or ``[H, W]`` bool masks) on the first frame.
        """
        prompts = [prompts] if isinstance(prompts, VisualPrompt) else list(prompts)
        if not prompts:
            raise ValueError("give at least one object prompt (a VisualPrompt or a first-frame mask)")
        prompts = [_as_prompt(p) for p in prompts]
        src = as_source(source, max_frames, stride)
        bar = Progress(progress, src.info.num_frames, "glee track (objects)")
        try:
            for group in iter_batches(src, 1):
                index, image = group[0]
                yield self._first(image, prompts) if index == 0 else self._next(index, image)
                bar.update()
        finally:
            bar.close()
            src.close()
            self._caches = []

    # ------------------------------------------------------------------ frames
    def _generator(self) -> torch.Generator | None:
        if self.prompt_seed is None:
            return None
        return torch.Generator(device=model_device(self.model)).manual_seed(self.prompt_seed)

    def _forward(self, image: np.ndarray, masks: list[np.ndarray], kind: str,
                 encoded: VisualPromptEmbeddings | None = None) -> tuple[GleeOutput, PreparedBatch]:
        """One frame, one prompt per batch entry (the frame repeated); ``encoded``: reuse an earlier frame's
        prompt (template + point tokens) instead of encoding ``masks`` on this frame."""
        prepared = prepare_batch([image], self.preprocess, self.model.cfg, model_device(self.model))
        n = len(masks)
        prompt = None
        if encoded is None:
            prompt = torch.stack([resize_prompt_mask(m, prepared.resized_sizes[0], prepared.padded_size,
                                                     self.preprocess) for m in masks]).to(prepared.images.device)
        with torch.inference_mode():
            out = self.model(prepared.images.expand(n, -1, -1, -1), categories=self.text.categories,
                             visual_prompt_masks=prompt, visual_prompt_type=kind, generator=self._generator(),
                             visual_prompt=encoded)
        return out, prepared

    def _first(self, image: np.ndarray, prompts: list[VisualPrompt]) -> TrackedFrame:
        height, width = image.shape[:2]
        self._objects = [_Object(i + 1, plan_prompt(p, height, width), _TargetMemory(self.memory, self.embed_weight))
                         for i, p in enumerate(prompts)]
        self._caches = []
        by_kind: dict[str, list[int]] = {}
        for i, o in enumerate(self._objects):
            by_kind.setdefault(o.plan.prompt.kind, []).append(i)
        results: dict[int, Detections] = {}
        for kind, idx in by_kind.items():
            out, prepared = self._forward(image, [self._objects[i].plan.mask for i in idx], kind)
            self._caches.append((idx, out.extra["visual_prompt"]))
            for b, i in enumerate(idx):
                query = self._first_choice(out, b, prepared, self._objects[i].plan, (height, width))
                results[i] = self._emit(out, b, query, prepared, image, 0, self._objects[i])
        return self._frame(0, image, [results[i] for i in range(len(self._objects))])

    def _next(self, index: int, image: np.ndarray) -> TrackedFrame:
        results: dict[int, Detections] = {}
        if self.prompt_mode == "first_frame":
            for idx, encoded in self._caches:
                masks = [self._objects[i].plan.mask for i in idx]
                if masks[0].shape != image.shape[:2]:
                    raise ValueError(f"frame {index} is {image.shape[1]}x{image.shape[0]} but the first frame was "
                                     f"{masks[0].shape[1]}x{masks[0].shape[0]}; frames must keep one size")
                out, prepared = self._forward(image, masks, self._objects[idx[0]].plan.prompt.kind, encoded)
                for b, i in enumerate(idx):
                    results[i] = self._follow(out, b, prepared, image, index, self._objects[i])
        else:
            masks = [o.prompt_mask if o.prompt_mask is not None else o.plan.mask for o in self._objects]
            out, prepared = self._forward(image, masks, "mask")
            for i, o in enumerate(self._objects):
                results[i] = self._follow(out, i, prepared, image, index, o)
        return self._frame(index, image, [results[i] for i in range(len(self._objects))])

    def _first_choice(self, out: GleeOutput, b: int, prepared: PreparedBatch, plan: PromptPlan,
                      original: tuple[int, int]) -> int:
        """The frame-0 query that fits the prompt best."""
        probs = out.pred_logits[b].float().sigmoid().max(-1).values  # [Q]
        kind = plan.prompt.kind
        resized, padded = prepared.resized_sizes[0], prepared.padded_size
        if kind == "point" and plan.prompt.needs_click_ranking:
            pos = clicks_to_canvas(plan.positive, original, resized, padded)
            neg = clicks_to_canvas(plan.negative, original, resized, padded)
            return int(select_by_clicks(out.pred_logits[b], out.pred_masks[b], pos, neg, 1).query_indices[0])
        if kind == "box":
            target = torch.tensor([plan.prompt.box], dtype=torch.float32)
            pred = boxes_to_image(out.pred_boxes[b].float(), padded, resized, original).cpu()
            iou = box_iou(pred, target)[0][:, 0]
            return int((iou + 1e-3 * probs.cpu()).argmax())  # probability only breaks ties
        if kind == "mask":
            # IoU on the mask-feature grid: the prompt mask pooled to the logits' resolution
            target = resize_prompt_mask(plan.mask, resized, padded, self.preprocess).float()
            low = F.adaptive_avg_pool2d(target[None, None], out.pred_masks.shape[-2:])[0, 0] > 0.5
            if not low.any():  # a prompt smaller than one feature cell: fall back to full resolution
                full = mask_logits_to_image(out.pred_masks[b], padded, resized, original) > 0
                low, pred = torch.from_numpy(plan.mask).to(full.device), full
            else:
                pred = out.pred_masks[b] > 0
            low = low.to(pred.device)
            inter = (pred & low).flatten(1).sum(1).float()
            union = (pred | low).flatten(1).sum(1).float().clamp(min=1)
            return int((inter / union + 1e-3 * probs.to(pred.device)).argmax())
        return int(probs.argmax())  # one click, scribble: the demo's top-1

    def _follow(self, out: GleeOutput, b: int, prepared: PreparedBatch, image: np.ndarray, index: int,
                obj: _Object) -> Detections:
        probs = out.pred_logits[b].float().sigmoid().max(-1).values
        query = obj.memory.choose(probs, out.query_embeddings[b])
        if float(probs[query]) < self.min_score:
            d = empty_detections((image.shape[0], image.shape[1]), self.with_masks)
            d.meta = {"frame_index": index}
            return d
        return self._emit(out, b, query, prepared, image, index, obj)

    def _emit(self, out: GleeOutput, b: int, query: int, prepared: PreparedBatch, image: np.ndarray, index: int,
              obj: _Object) -> Detections:
        obj.memory.remember(out.query_embeddings[b][query])
        dets, mask = _single_target_detections(out, b, query, prepared, 0, (image.shape[0], image.shape[1]),
                                               obj.track_id, "object", self.with_masks, index)
        if self.prompt_mode == "propagate" and mask is not None and mask.any():
            obj.prompt_mask = mask  # an empty prediction keeps the last non-empty prompt
        return dets

    def _frame(self, index: int, image: np.ndarray, per_object: list[Detections]) -> TrackedFrame:
        present = [d for d in per_object if len(d)]  # absent objects have no rows (and no embeddings) to join
        dets = Detections.cat(present) if present else empty_detections((image.shape[0], image.shape[1]),
                                                                         self.with_masks)
        dets.meta = {"frame_index": index}
        return TrackedFrame(index=index, detections=dets, image=image)


def segment_objects(model: GleeModel, source: Any, *, masks: Sequence[Any] = (), boxes: Sequence[Sequence[float]] = (),
                    points: Sequence[Sequence[float]] = (), **options: Any) -> Iterator[TrackedFrame]:
    """VOS / interactive tracking in one call: objects from first-frame ``masks`` ([H, W] bool), ``boxes``
    (x1, y1, x2, y2) and/or click ``points`` (x, y), one object each, in that order of track ids.

    ``options`` go to :class:`ObjectTracker` (``prompt_mode``, ``preprocess``, ...) or to its ``track``
    (``max_frames``, ``stride``, ``progress``).
    """
    track_keys = {"max_frames", "stride", "progress"}
    prompts = [_as_prompt(m) for m in masks] + [VisualPrompt(box=b) for b in boxes]
    prompts += [VisualPrompt(points=[p]) for p in points]
    tracker = ObjectTracker(model, **{k: v for k, v in options.items() if k not in track_keys})
    return tracker.track(source, prompts, **{k: v for k, v in options.items() if k in track_keys})


def track_click(model: GleeModel, source: Any, point: Sequence[float], **options: Any) -> Iterator[TrackedFrame]:
    """Interactive tracking: the object under the click ``point`` = (x, y) on frame 0, through the video."""
    return segment_objects(model, source, points=[point], **options)


# ---------------------------------------------------------------------------------------------------------
class ReferringTracker:
    """R-VOS: the object a referring expression describes, segmented in every frame (track id 1).

    Args:
        model: a ``GleeModel`` in eval mode.
        expression: the referring expression (encoded once).
        preprocess, embed_weight, memory, min_score, with_masks: as :class:`ObjectTracker`.
        batch_size: frames per forward (frames are independent through the network).
    """

    def __init__(self, model: GleeModel, expression: str, *, preprocess: PreprocessConfig | None = None,
                 embed_weight: float = 0.5, memory: int = 3, min_score: float = 0.0, with_masks: bool = True,
                 batch_size: int = 1) -> None:
        self.model = check_model(model)
        _check_weights(embed_weight, memory, min_score)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.text = TextPrompt.encode(model, None, expression)
        self.expression = expression
        self.preprocess = preprocess or PreprocessConfig()
        self.memory = _TargetMemory(memory, embed_weight)
        self.min_score = min_score
        self.with_masks = with_masks
        self.batch_size = batch_size

    def state_nbytes(self) -> int:
        return self.memory.nbytes()

    def track(self, source: Any, *, max_frames: int | None = None, stride: int = 1,
              progress: bool = False) -> Iterator[TrackedFrame]:
        self.memory.history.clear()
        src = as_source(source, max_frames, stride)
        bar = Progress(progress, src.info.num_frames, "glee track (expression)")
        try:
            for group in iter_batches(src, self.batch_size):
                images = [f for _, f in group]
                out, prepared = forward_frames(self.model, images, self.preprocess, **self.text.kwargs(len(images)))
                for b, (index, image) in enumerate(group):
                    original = (int(image.shape[0]), int(image.shape[1]))
                    probs = out.pred_logits[b, :, 0].float().sigmoid()
                    query = self.memory.choose(probs, out.query_embeddings[b])
                    if float(probs[query]) < self.min_score:
                        dets = empty_detections(original, self.with_masks)
                        dets.meta = {"frame_index": index}
                    else:
                        self.memory.remember(out.query_embeddings[b][query])
                        dets, _ = _single_target_detections(out, b, query, prepared, b, original, 1, self.expression,
                                                            self.with_masks, index)
                    yield TrackedFrame(index=index, detections=dets, image=image)
                    bar.update()
        finally:
            bar.close()
            src.close()


def segment_expression(model: GleeModel, source: Any, expression: str, **options: Any) -> Iterator[TrackedFrame]:
    """R-VOS in one call; ``options`` go to :class:`ReferringTracker` or its ``track``."""
    track_keys = {"max_frames", "stride", "progress"}
    tracker = ReferringTracker(model, expression, **{k: v for k, v in options.items() if k not in track_keys})
    return tracker.track(source, **{k: v for k, v in options.items() if k in track_keys})
