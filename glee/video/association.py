"""MinVIS query association: the official way GLEE links object queries across frames.

GLEE runs every frame independently; tracking is an assignment problem on the decoder's query embeddings
(``GleeOutput.query_embeddings``, the LayerNorm-ed last-layer queries):

* frame 0 defines ``Q`` track slots, slot ``i`` = query ``i``;
* for frame ``t >= 1`` the reference of each slot is the mean of its aligned embeddings over the last
  ``memory`` (3) frames; the cost is ``1 - cosine(reference_i, current_j)``; the Hungarian solution
  (``scipy.optimize.linear_sum_assignment``) permutes the current queries into the slots;
* there is no track birth or death: every slot lives for the whole video.

Only the last ``memory`` aligned embeddings are kept, so the state is ``memory x Q x C`` floats whatever
the video length.  (Official: ``GLEE.match_from_embds`` / ``GLEE.MinVIS_inference``.)
"""

from __future__ import annotations

from collections import deque

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor


def match_embeddings(reference: Tensor, current: Tensor) -> Tensor:
    """Permutation that aligns ``current`` queries to ``reference`` slots.

    Args:
        reference: [Q, C] per-slot reference embeddings.
        current: [Q, C] this frame's query embeddings.
    Returns:
        [Q] long tensor ``perm`` with ``current[perm][i]`` matched to slot ``i`` (minimum total ``1 - cos``).
    """
    if reference.dim() != 2 or current.dim() != 2 or reference.shape != current.shape:
        raise ValueError(f"reference and current must both be [Q, C] of equal shape, got {tuple(reference.shape)} "
                         f"and {tuple(current.shape)}")
    cost = 1 - F.normalize(reference.float(), dim=-1) @ F.normalize(current.float(), dim=-1).T  # [slot, current]
    rows, cols = linear_sum_assignment(cost.detach().cpu().numpy())
    # rows come back sorted 0..Q-1 for a square matrix, so cols is the permutation itself
    perm = np.empty(len(rows), dtype=np.int64)
    perm[rows] = cols
    return torch.from_numpy(perm).to(current.device)


class MinVISAssociator:
    """Streaming MinVIS association: feed one frame's embeddings at a time, get its slot permutation."""

    def __init__(self, memory: int = 3) -> None:
        if memory < 1:
            raise ValueError(f"memory must be >= 1 frame, got {memory}")
        self.memory = memory
        self._history: deque[Tensor] = deque(maxlen=memory)
        self.frames_seen = 0

    @property
    def num_slots(self) -> int | None:
        return self._history[0].shape[0] if self._history else None

    def reset(self) -> None:
        self._history.clear()
        self.frames_seen = 0

    def reference(self) -> Tensor:
        """[Q, C] mean of the last ``memory`` aligned embeddings."""
        if not self._history:
            raise RuntimeError("no frame seen yet")
        return torch.stack(list(self._history)).mean(0)

    def align(self, embeddings: Tensor) -> Tensor:
        """[Q, C] embeddings of the next frame -> [Q] permutation (identity on the first frame).

        The aligned embeddings ``embeddings[perm]`` join the memory.
        """
        if embeddings.dim() != 2:
            raise ValueError(f"embeddings must be [Q, C], got {tuple(embeddings.shape)}")
        embeddings = embeddings.detach()
        if not self._history:
            perm = torch.arange(embeddings.shape[0], device=embeddings.device)
        else:
            if embeddings.shape != self._history[0].shape:
                raise ValueError(f"frame has {tuple(embeddings.shape)} query embeddings but the video started with "
                                 f"{tuple(self._history[0].shape)}; every frame must come from the same model")
            perm = match_embeddings(self.reference(), embeddings)
        self._history.append(embeddings[perm])  # indexing copies: no view of the batch is kept
        self.frames_seen += 1
        return perm

    def state_nbytes(self) -> int:
        """Bytes held by the association state (constant once ``memory`` frames were seen)."""
        return sum(t.numel() * t.element_size() for t in self._history)
