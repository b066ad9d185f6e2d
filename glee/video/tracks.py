"""Per-frame tracking results: a :class:`glee.structures.Detections` with track ids, plus the frame."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from glee.structures import Detections


@dataclass
class TrackedFrame:
    """One frame's tracks.

    Attributes:
        index: 0-based index of the frame in the stream (after any stride).
        detections: the visible tracks; ``track_ids`` is set (ids >= 1, stable across the video), boxes and
            masks are in original frame pixels.  ``meta["video_scores"]`` holds each track's score over the
            video so far (sigmoid of its running mean logit) where the mode has one.
        image: the RGB frame ``[H, W, 3]`` uint8 the detections refer to (not a copy; for drawing).
    """

    index: int
    detections: Detections
    image: np.ndarray | None = field(default=None, repr=False)

    @property
    def track_ids(self) -> list[int]:
        assert self.detections.track_ids is not None
        return self.detections.track_ids.tolist()

    def __len__(self) -> int:
        return len(self.detections)

    def nbytes(self) -> int:
        """Bytes of the tensors this result owns (the frame image excluded)."""
        d = self.detections
        tensors = [d.boxes, d.scores, d.class_ids, d.masks, d.query_indices, d.query_embeddings, d.track_ids]
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def empty_detections(image_size: tuple[int, int], with_masks: bool) -> Detections:
    """No tracks in this frame (``track_ids`` set to an empty tensor)."""
    d = Detections.empty(image_size, with_masks=with_masks)
    d.track_ids = torch.zeros(0, dtype=torch.long)
    return d
