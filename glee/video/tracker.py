"""Streaming multi-object tracking (MOT / VIS) with GLEE: one frame in, that frame's tracks out.

Per frame (frames may be batched through the network, which treats them independently, exactly like the
official ``VIDEO_WINDOW_SIZE`` chunks):

1. GLEE runs with the video's category list (encoded once) or one referring expression;
2. :class:`~glee.video.association.MinVISAssociator` permutes the frame's Q queries into the Q track slots
   (mean of the last 3 aligned embeddings, ``1 - cosine`` cost, Hungarian) -- the official association;
3. a running sum of the aligned class logits gives each slot its video-level class scores so far
   (official: ``sigmoid(mean over frames of aligned logits)``), and its label (argmax of that mean);
4. streaming output: a slot is reported in a frame when it is *active* -- it starts when this frame's score
   (sigmoid of its aligned logit for its label) reaches ``score_threshold`` and stays while the score is at
   least ``keep_threshold``.  The official offline protocol, which needs the whole video before choosing,
   is :func:`glee.video.offline.track_offline`.

Track id = slot index + 1, stable by construction (MinVIS has no track birth or death).

Memory is flat: the state is the association memory (3 x Q x C), the running logit sum (Q x K) and a Q-long
active flag.  Masks are upsampled only for the tracks reported in the current frame and handed to the
caller, never kept.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor

from glee.inference.postprocess import boxes_to_image, mask_logits_to_image
from glee.inference.preprocess import PreparedBatch, PreprocessConfig
from glee.modeling.glee_model import GleeModel, GleeOutput
from glee.structures import Detections
from glee.video._common import Progress, TextPrompt, as_source, check_model, forward_frames, iter_batches
from glee.video.association import MinVISAssociator
from glee.video.tracks import TrackedFrame


class VideoTracker:
    """Track every object of the given categories (or the referred object) through a video, online.

    Args:
        model: a ``GleeModel`` in eval mode.
        categories: class names, e.g. ``["person", "car"]``; or
        expression: one referring expression (then K = 1 and the label is the expression).
        preprocess: resize/normalise settings (default: the demo's, shorter side 800).
        score_threshold: a slot becomes a visible track when its frame score reaches this.
        keep_threshold: a visible track stays visible while its frame score is at least this
            (default: ``score_threshold``, i.e. no hysteresis).
        max_tracks: at most this many tracks per frame (highest frame scores).
        memory: frames averaged for the association reference (official: 3).
        batch_size: frames per forward pass (the network sees frames independently; results are identical
            for any batch size up to float rounding).
        with_masks: compute full-resolution masks of the reported tracks.

    Use :meth:`track` on a whole source, or :meth:`update` frame by frame.
    """

    def __init__(
        self,
        model: GleeModel,
        categories: list[str] | None = None,
        *,
        expression: str | None = None,
        preprocess: PreprocessConfig | None = None,
        score_threshold: float = 0.3,
        keep_threshold: float | None = None,
        max_tracks: int = 100,
        memory: int = 3,
        batch_size: int = 1,
        with_masks: bool = True,
    ) -> None:
        self.model = check_model(model)
        if not 0.0 <= score_threshold <= 1.0:
            raise ValueError(f"score_threshold must be a probability in [0, 1], got {score_threshold}")
        keep = score_threshold if keep_threshold is None else keep_threshold
        if not 0.0 <= keep <= score_threshold:
            raise ValueError(f"keep_threshold must lie in [0, score_threshold={score_threshold}], got {keep}")
        if max_tracks < 1:
            raise ValueError(f"max_tracks must be >= 1, got {max_tracks}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.prompt = TextPrompt.encode(model, categories, expression)
        self.preprocess = preprocess or PreprocessConfig()
        self.score_threshold = score_threshold
        self.keep_threshold = keep
        self.max_tracks = max_tracks
        self.batch_size = batch_size
        self.with_masks = with_masks
        self.associator = MinVISAssociator(memory)
        self._logit_sum: Tensor | None = None  # [Q, K] running sum of aligned logits
        self._active: Tensor | None = None  # [Q] bool
        self.frames_seen = 0

    @property
    def label_names(self) -> list[str]:
        return self.prompt.label_names

    def reset(self) -> None:
        """Forget the video (call between videos)."""
        self.associator.reset()
        self._logit_sum = None
        self._active = None
        self.frames_seen = 0

    def state_nbytes(self) -> int:
        """Bytes of tracker state carried from frame to frame (constant after ``memory`` frames)."""
        extra = [t for t in (self._logit_sum, self._active) if t is not None]
        return self.associator.state_nbytes() + sum(t.numel() * t.element_size() for t in extra)

    # ------------------------------------------------------------------ driving
    def update(self, frame: Any) -> TrackedFrame:
        """Track one more frame (any frame type :func:`glee.video.reader.to_rgb_frame` accepts)."""
        from glee.video.reader import to_rgb_frame

        image = to_rgb_frame(frame, f"frame {self.frames_seen}")
        out, prepared = forward_frames(self.model, [image], self.preprocess, **self.prompt.kwargs(1))
        return self._step(out, prepared, 0, self.frames_seen, image)

    def track(self, source: Any, *, max_frames: int | None = None, stride: int = 1,
              progress: bool = False) -> Iterator[TrackedFrame]:
        """Track a whole source (video path, frame folder, iterable of frames); yields one result per frame.

        The tracker is reset first.  Frames are read lazily, so a generator source is consumed as results
        are taken.
        """
        self.reset()
        src = as_source(source, max_frames, stride)
        bar = Progress(progress, src.info.num_frames, "glee track")
        try:
            for group in iter_batches(src, self.batch_size):
                images = [f for _, f in group]
                out, prepared = forward_frames(self.model, images, self.preprocess,
                                               **self.prompt.kwargs(len(images)))
                for b, (index, image) in enumerate(group):
                    yield self._step(out, prepared, b, index, image)
                    bar.update()
        finally:
            bar.close()
            src.close()

    # ------------------------------------------------------------------ one frame
    def _step(self, out: GleeOutput, prepared: PreparedBatch, b: int, index: int, image: np.ndarray) -> TrackedFrame:
        perm = self.associator.align(out.query_embeddings[b])
        logits = out.pred_logits[b][perm].float()  # [Q, K] aligned to the slots
        if self._logit_sum is None:
            self._logit_sum = torch.zeros_like(logits)
            self._active = torch.zeros(logits.shape[0], dtype=torch.bool, device=logits.device)
        self._logit_sum += logits
        self.frames_seen += 1
        mean_logits = self._logit_sum / self.frames_seen
        labels = mean_logits.argmax(-1)  # [Q] the slot's class over the video so far
        frame_scores = logits.gather(1, labels[:, None])[:, 0].sigmoid()
        video_scores = mean_logits.gather(1, labels[:, None])[:, 0].sigmoid()

        assert self._active is not None
        self._active = (self._active & (frame_scores >= self.keep_threshold)) | (frame_scores >= self.score_threshold)
        slots = self._active.nonzero().flatten()
        if len(slots) > self.max_tracks:
            slots = slots[frame_scores[slots].topk(self.max_tracks).indices].sort().values

        original = (int(image.shape[0]), int(image.shape[1]))
        resized = prepared.resized_sizes[b]
        queries = perm[slots]
        boxes = boxes_to_image(out.pred_boxes[b][queries].float(), prepared.padded_size, resized, original)
        masks = None
        if self.with_masks:
            masks = mask_logits_to_image(out.pred_masks[b][queries], prepared.padded_size, resized, original) > 0
        names = self.label_names
        slot_labels = labels[slots]
        dets = Detections(
            boxes=boxes.cpu(),
            scores=frame_scores[slots].cpu(),
            class_ids=slot_labels.cpu(),
            class_names=[names[i] for i in slot_labels.tolist()],
            image_size=original,
            masks=None if masks is None else masks.cpu(),
            query_indices=queries.cpu(),
            query_embeddings=out.query_embeddings[b][queries].float().cpu(),
            track_ids=(slots + 1).cpu(),
            meta={"frame_index": index, "video_scores": video_scores[slots].tolist()},
        )
        return TrackedFrame(index=index, detections=dets, image=image)
