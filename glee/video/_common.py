"""Pieces shared by the video modes: frame batching, prompt encoding once per video, one batched forward."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from glee.inference.predictor import check_class_names
from glee.inference.preprocess import PreparedBatch, PreprocessConfig, prepare_batch
from glee.inference.text_cache import TextEmbeddingCache
from glee.modeling.glee_model import CategoryEmbeddings, ExpressionEmbeddings, GleeModel, GleeOutput
from glee.video.reader import FrameSource, open_video


def iter_batches(frames: Iterable[np.ndarray], batch_size: int) -> Iterator[list[tuple[int, np.ndarray]]]:
    """Consecutive (index, frame) groups of up to ``batch_size`` frames of one size (a size change flushes)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    group: list[tuple[int, np.ndarray]] = []
    it = iter(frames)
    i = 0
    while True:
        try:
            frame = next(it)
        except StopIteration:
            break
        except Exception:
            if group:  # a source that breaks off (truncated file): the frames before the break still count
                yield group
            raise
        if group and group[0][1].shape != frame.shape:
            yield group
            group = []
        group.append((i, frame))
        i += 1
        if len(group) == batch_size:  # hand over at once: never read a frame ahead of a full batch
            yield group
            group = []
    if group:
        yield group


def model_device(model: GleeModel) -> torch.device:
    return next(model.parameters()).device


def check_model(model: Any) -> GleeModel:
    if not isinstance(model, GleeModel):
        raise TypeError(f"model must be a glee GleeModel, got {type(model).__name__}; load one with "
                        "GleeModel.from_pretrained(folder)")
    if model.training:
        raise ValueError("the model is in training mode (dropout, denoising queries); call model.eval() first")
    return model


@dataclass
class TextPrompt:
    """A category list or one referring expression, encoded once for the whole video."""

    categories: CategoryEmbeddings | None = None
    expression: ExpressionEmbeddings | None = None

    @classmethod
    def encode(cls, model: GleeModel, categories: list[str] | None, expression: str | None) -> TextPrompt:
        if (categories is None) == (expression is None):
            raise ValueError("give either `categories` (a list of class names) or `expression` (one referring "
                             "expression), not both and not neither")
        cache = TextEmbeddingCache(max_lists=1)  # chunked encoding: a 1203-name vocabulary stays bounded
        if expression is not None:
            if not isinstance(expression, str) or not expression.strip():
                raise ValueError(f"expression must be one non-empty string, got {expression!r}")
            return cls(expression=cache.expressions(model, [expression]))
        return cls(categories=cache.categories(model, check_class_names(categories)))

    @property
    def label_names(self) -> list[str]:
        if self.categories is not None:
            return list(self.categories.names)
        assert self.expression is not None
        return list(self.expression.texts[:1])

    def kwargs(self, batch: int) -> dict[str, Any]:
        """``GleeModel.forward`` keyword arguments for a batch of ``batch`` frames."""
        if self.categories is not None:
            return {"categories": self.categories}
        e = self.expression
        assert e is not None
        return {"expressions": replace(
            e, texts=e.texts[:1] * batch, tokens=e.tokens[:1].expand(batch, -1, -1),
            attention_mask=e.attention_mask[:1].expand(batch, -1),
            grounding_class=e.grounding_class[:1].expand(batch, -1), input_ids=e.input_ids[:1].expand(batch, -1),
        )}


def forward_frames(model: GleeModel, frames: list[np.ndarray], preprocess: PreprocessConfig,
                   **kwargs: Any) -> tuple[GleeOutput, PreparedBatch]:
    """Preprocess ``frames`` (uint8 RGB, one size) as one batch and run the model without gradients."""
    prepared = prepare_batch(frames, preprocess, model.cfg, model_device(model))
    with torch.inference_mode():
        out = model(prepared.images, **kwargs)
    return out, prepared


class Progress:
    """A tqdm bar over frames when asked for (and tqdm is importable); otherwise nothing."""

    def __init__(self, enabled: bool, total: int | None, desc: str) -> None:
        self._bar = None
        if enabled:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=desc, unit="frame", dynamic_ncols=True)

    def update(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def as_source(source: Any, max_frames: int | None = None, stride: int = 1) -> FrameSource:
    return open_video(source, max_frames=max_frames, stride=stride)
