"""``ImagePredictor``: every GLEE image task over any ``GleeModel``, with the official demo's pre/postprocessing.

Tasks:

* :meth:`ImagePredictor.detect` -- detection + instance segmentation from a category list of any size;
* :meth:`ImagePredictor.detect_objects` -- open-world / class-agnostic (the demo's ``['object']`` list);
* :meth:`ImagePredictor.ground` -- referring expressions (REC / RES), top-1 per image;
* :meth:`ImagePredictor.segment` -- interactive segmentation from clicks (several, with negative clicks),
  boxes, scribbles or masks, one object per :class:`~glee.inference.prompts.VisualPrompt`.

Building blocks are public for other front ends (video, evaluation): :meth:`prepare`,
:meth:`encode_classes` / :meth:`encode_expressions` (cached), :meth:`forward`, :meth:`to_detections`.

Images may be paths, bytes, PIL images, arrays or tensors (see :func:`glee.io.read_image`); a list gives a
list of :class:`~glee.structures.Detections`, a single image a single one.  Batches may mix sizes: each
image is resized on its own and the batch is padded to a common canvas (``PredictorConfig.batch_size``
images per forward; 1, the default, equals the demo exactly).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from glee.inference.postprocess import PostprocessConfig, Selection, postprocess_image, select_by_clicks
from glee.inference.preprocess import PreparedBatch, PreprocessConfig, prepare_batch, resize_prompt_mask
from glee.inference.prompts import VisualPrompt, clicks_to_canvas, plan_prompt
from glee.inference.text_cache import TextEmbeddingCache
from glee.io import DEFAULT_MAX_PIXELS, read_image
from glee.modeling.glee_model import CategoryEmbeddings, ExpressionEmbeddings, GleeModel, GleeOutput
from glee.structures import Detections
from glee.tokenizer import clean_text

_OVERRIDABLE = {f.name for f in dataclasses.fields(PostprocessConfig)}


@dataclass
class PredictorConfig:
    """Settings of :class:`ImagePredictor`; the defaults reproduce the official demo.

    Attributes:
        preprocess: resize / normalise / pad settings.
        categories / expressions / prompts: postprocessing per prompt kind (demo: top-15 with threshold 0.2
            for categories; top-1 without threshold for expressions and visual prompts).
        batch_size: images (or visual prompts) per forward.
        with_embeddings: attach each instance's decoder query embedding.
        text_chunk_size / text_cache_size: class names per text-encoder call / texts kept in the cache.
        click_ranking: rank candidates by click agreement for multi-click / negative-click prompts.
        prompt_seed: seed for subsampling prompts larger than ``max_spatial_len`` pixels (the official code
            uses the global RNG); ``None`` uses the global RNG.
        max_pixels: larger input images are downscaled on reading, with a warning.
        clean_expressions: apply the RefCOCO text cleaning (lower-case, strip punctuation) -- the official
            evaluation mapper does, the demo does not.
    """

    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    categories: PostprocessConfig = field(default_factory=lambda: PostprocessConfig(top_k=15, threshold=0.2))
    expressions: PostprocessConfig = field(default_factory=lambda: PostprocessConfig(top_k=1, threshold=None))
    prompts: PostprocessConfig = field(default_factory=lambda: PostprocessConfig(top_k=1, threshold=None))
    batch_size: int = 1
    with_embeddings: bool = True
    text_chunk_size: int = 256
    text_cache_size: int = 8192
    click_ranking: bool = True
    prompt_seed: int | None = 0
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    clean_expressions: bool = False

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


def check_class_names(names: Any) -> list[str]:
    """Validate a category list: a non-empty list of non-empty, distinct names (compared as CLIP sees them)."""
    if isinstance(names, str):
        raise ValueError(f"classes must be a list of names, not one string; e.g. {names.split(',')!r}")
    try:
        names = list(names)
    except TypeError as exc:
        raise ValueError(f"classes must be a list of strings, got {type(names).__name__}") from exc
    if not names:
        raise ValueError("the class list is empty; give at least one class name (or use detect_objects for "
                         "class-agnostic detection)")
    bad = [n for n in names if not isinstance(n, str) or not n.strip()]
    if bad:
        raise ValueError(f"class names must be non-empty strings, got {bad!r}")
    seen: dict[str, str] = {}
    duplicates = []
    for name in names:
        key = clean_text(name).lower()  # CLIP lower-cases and collapses whitespace: these encode identically
        if key in seen:
            duplicates.append((seen[key], name))
        seen.setdefault(key, name)
    if duplicates:
        raise ValueError(f"duplicate class names {duplicates}: every name must be distinct (case and spacing "
                         "ignored) so that each class id maps to one name; remove the repeats")
    return names


def clean_expression(text: str) -> str:
    """RefCOCO mapper cleaning: lower-case, drop ``. , ' ! ? " ( ) * # : ;``, '-' and '/' to spaces."""
    text = text.lower()
    for ch in ".,'!?\"()*#:;":
        text = text.replace(ch, "")
    return " ".join(text.replace("-", " ").replace("/", " ").split())


def _is_single(images: Any) -> bool:
    if isinstance(images, (str, os.PathLike, bytes, bytearray, memoryview, np.ndarray)):
        return not (isinstance(images, np.ndarray) and images.ndim == 4)
    if isinstance(images, Tensor):
        return images.dim() <= 3
    return not isinstance(images, (list, tuple))


class ImagePredictor:
    """Run a ``GleeModel`` on images, end to end.

    Args:
        model: any GLEE model (Lite/Plus/Pro, stage 1-3, or a test preset); put in ``eval()`` mode.
        config: :class:`PredictorConfig` (defaults: the official demo).
        device: move the model there first (default: where it is).
    """

    def __init__(self, model: GleeModel, config: PredictorConfig | None = None,
                 device: str | torch.device | None = None) -> None:
        if not isinstance(model, GleeModel):
            raise TypeError(f"model must be a glee GleeModel, got {type(model).__name__}")
        if device is not None:
            model = model.to(device)
        self.model = model.eval()
        # without a config, images are resized to the model's own input size (800 = the official demo)
        self.config = config or PredictorConfig(preprocess=PreprocessConfig(short_side=model.cfg.predict_short_side))
        self.text_cache = TextEmbeddingCache(self.config.text_cache_size, self.config.text_chunk_size)

    @classmethod
    def from_pretrained(cls, weights: str | os.PathLike, preset: str | None = None,
                        config: PredictorConfig | None = None, device: str | torch.device = "cpu") -> ImagePredictor:
        """Load weights (see :func:`glee.inference.loading.load_model`) and wrap them."""
        from glee.inference.loading import load_model

        return cls(load_model(weights, preset=preset, device=device), config)

    @property
    def device(self) -> torch.device:
        return self.model.device

    # ------------------------------------------------------------------ tasks
    def detect(self, images: Any, classes: Sequence[str] | CategoryEmbeddings, **overrides: Any) -> Any:
        """Detection and instance segmentation with a category list (any length; encoded in cached chunks).

        ``overrides``: any :class:`PostprocessConfig` field for this call (``top_k``, ``threshold``,
        ``score_mode``, ``multi_label``, ``with_masks``, ...).
        """
        cats = classes if isinstance(classes, CategoryEmbeddings) else self.encode_classes(classes)
        post = self._post(self.config.categories, overrides)
        single, arrays, names = self._read(images)
        results: list[Detections] = []
        for start in range(0, len(arrays), self.config.batch_size):
            batch = self.prepare(arrays[start : start + self.config.batch_size])
            out = self.forward(batch, categories=cats)
            results += self.to_detections(out, batch, [cats.names] * len(batch), post,
                                          file_names=names[start : start + len(batch)])
        return results[0] if single else results

    def detect_objects(self, images: Any, **overrides: Any) -> Any:
        """Open-world / class-agnostic detection: the category path with ``['object']``, as the demo."""
        return self.detect(images, ["object"], **overrides)

    def ground(self, images: Any, expressions: str | Sequence[str], **overrides: Any) -> Any:
        """Referring-expression grounding: one expression for every image, or one per image; top-1 each."""
        post = self._post(self.config.expressions, overrides)
        single, arrays, names = self._read(images)
        if isinstance(expressions, str):
            texts = [expressions] * len(arrays)
        else:
            texts = list(expressions)
            if len(texts) != len(arrays):
                raise ValueError(f"got {len(texts)} expressions for {len(arrays)} images; give one per image or "
                                 "a single string for all")
        results: list[Detections] = []
        for start in range(0, len(arrays), self.config.batch_size):
            batch = self.prepare(arrays[start : start + self.config.batch_size])
            chunk = texts[start : start + len(batch)]
            out = self.forward(batch, expressions=self.encode_expressions(chunk))
            results += self.to_detections(out, batch, [[t] for t in chunk], post,
                                          file_names=names[start : start + len(batch)])
        return results[0] if single else results

    def segment(self, image: Any, prompts: VisualPrompt | Sequence[VisualPrompt], **overrides: Any) -> Detections:
        """Interactive segmentation of one image: ``config.prompts.top_k`` instances (1) per prompt.

        Instances carry ``prompt_ids``; class name ``"object"`` (the demo's category list).  Prompts of one
        type are batched ``batch_size`` at a time by repeating the image; results equal one forward per prompt,
        except that prompts over ``max_spatial_len`` (512) pixels are subsampled at random (seeded by
        ``prompt_seed``), and batching changes which pixels are drawn.
        """
        post = self._post(self.config.prompts, overrides)
        prompts = [prompts] if isinstance(prompts, VisualPrompt) else list(prompts)
        if not prompts:
            raise ValueError("no visual prompts given")
        if not all(isinstance(p, VisualPrompt) for p in prompts):
            raise TypeError("prompts must be VisualPrompt objects")
        single, arrays, names = self._read(image)
        if not single:
            raise ValueError("segment() takes one image; call it per image")
        array = arrays[0]
        height, width = array.shape[:2]
        plans = [plan_prompt(p, height, width) for p in prompts]
        batch1 = self.prepare([array])
        cats = self.encode_classes(["object"])
        per_prompt: list[Detections | None] = [None] * len(plans)
        # the model takes one prompt type per forward: group prompts by kind, batch by repeating the image
        by_kind: dict[str, list[int]] = {}
        for i, plan in enumerate(plans):
            by_kind.setdefault(plan.prompt.kind, []).append(i)
        for kind, indices in by_kind.items():
            for start in range(0, len(indices), self.config.batch_size):
                group = indices[start : start + self.config.batch_size]
                batch = PreparedBatch(batch1.images.repeat(len(group), 1, 1, 1),
                                      batch1.original_sizes * len(group), batch1.resized_sizes * len(group),
                                      batch1.config)
                masks = torch.stack([
                    resize_prompt_mask(plans[i].mask, batch1.resized_sizes[0], batch1.padded_size,
                                       self.config.preprocess) for i in group
                ]).to(self.device)
                out = self.forward(batch, categories=cats, prompt_masks=masks, prompt_type=kind)
                selections = [self._prompt_selection(out, b, plans[i], batch1, post) for b, i in enumerate(group)]
                dets = self.to_detections(out, batch, [cats.names] * len(group), post, selections,
                                          file_names=names * len(group))
                for b, i in enumerate(group):
                    d = dets[b]
                    d.prompt_ids = torch.full((len(d),), i, dtype=torch.long)
                    per_prompt[i] = d
        return Detections.cat([d for d in per_prompt if d is not None])

    def predict(self, images: Any, *, classes: Sequence[str] | None = None,
                expressions: str | Sequence[str] | None = None,
                prompts: VisualPrompt | Sequence[VisualPrompt] | None = None, **overrides: Any) -> Any:
        """Dispatch on the prompt given: ``classes``, ``expressions`` or ``prompts`` (exactly one)."""
        given = [n for n, v in (("classes", classes), ("expressions", expressions), ("prompts", prompts))
                 if v is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of classes, expressions, prompts (got {given or 'none'})")
        if classes is not None:
            return self.detect(images, classes, **overrides)
        if expressions is not None:
            return self.ground(images, expressions, **overrides)
        return self.segment(images, prompts, **overrides)  # type: ignore[arg-type]

    def iter_paths(self, paths: Sequence[str | os.PathLike], *, classes: Sequence[str] | None = None,
                   expressions: str | None = None, progress: bool = False,
                   **overrides: Any) -> Iterator[tuple[Path, Detections | Exception]]:
        """Predict image files one batch at a time; yields (path, Detections) or (path, error) per file.

        Unreadable files are reported as :class:`glee.io.ImageReadError` values instead of stopping the run.
        """
        from tqdm.auto import tqdm

        if (classes is None) == (expressions is None):
            raise ValueError("give classes or expressions")
        cats = self.encode_classes(classes) if classes is not None else None
        paths = [Path(p) for p in paths]
        bar = tqdm(total=len(paths), unit="img", disable=not progress, desc="predict")
        for start in range(0, len(paths), self.config.batch_size):
            chunk = paths[start : start + self.config.batch_size]
            good: list[Path] = []
            arrays: list[np.ndarray] = []
            for p in chunk:
                try:
                    arrays.append(read_image(p, max_pixels=self.config.max_pixels))
                    good.append(p)
                except ValueError as exc:
                    yield p, exc
                    bar.update(1)
            if not arrays:
                continue
            if cats is not None:
                dets = self.detect(arrays, cats, **overrides)
            else:
                dets = self.ground(arrays, expressions, **overrides)  # type: ignore[arg-type]
            for p, d in zip(good, dets):
                d.file_name = str(p)
                yield p, d
                bar.update(1)
        bar.close()

    # ------------------------------------------------------------------ building blocks
    def encode_classes(self, names: Sequence[str]) -> CategoryEmbeddings:
        """Validated, cached, chunked class-name encoding."""
        return self.text_cache.categories(self.model, check_class_names(names))

    def encode_expressions(self, texts: Sequence[str]) -> ExpressionEmbeddings:
        """Validated, cached expression encoding (one per image)."""
        texts = list(texts)
        bad = [t for t in texts if not isinstance(t, str) or not t.strip()]
        if bad or not texts:
            raise ValueError(f"expressions must be non-empty strings, got {bad or texts!r}")
        if self.config.clean_expressions:
            texts = [clean_expression(t) for t in texts]
        return self.text_cache.expressions(self.model, texts)

    def prepare(self, images: Sequence[np.ndarray]) -> PreparedBatch:
        """uint8 RGB arrays -> normalised, resized, padded batch on the model's device."""
        return prepare_batch(images, self.config.preprocess, self.model.cfg, self.device)

    def forward(self, batch: PreparedBatch, categories: CategoryEmbeddings | None = None,
                expressions: ExpressionEmbeddings | None = None, prompt_masks: Tensor | None = None,
                prompt_type: str = "box") -> GleeOutput:
        """One network call (no grad).  ``prompt_masks``: [B, Hp, Wp] bool on the padded canvas."""
        generator = None
        if prompt_masks is not None and self.config.prompt_seed is not None:
            # a CPU generator: the model draws torch.randperm on the CPU whatever the device
            generator = torch.Generator().manual_seed(self.config.prompt_seed)
        with torch.no_grad():
            return self.model(batch.images, categories=categories, expressions=expressions,
                              visual_prompt_masks=prompt_masks, visual_prompt_type=prompt_type, generator=generator)

    def to_detections(self, out: GleeOutput, batch: PreparedBatch, class_names: Sequence[Sequence[str]],
                      post: PostprocessConfig, selections: Sequence[Selection | None] | None = None,
                      file_names: Sequence[str | None] | None = None) -> list[Detections]:
        """Postprocess a forward's outputs into one :class:`Detections` per image."""
        results = []
        for b in range(len(batch)):
            res = postprocess_image(
                out.pred_logits[b], out.pred_boxes[b], out.pred_masks[b], batch.padded_size,
                batch.resized_sizes[b], batch.original_sizes[b], post,
                selection=selections[b] if selections is not None else None,
            )
            names = class_names[b]
            emb = out.query_embeddings[b][res.query_indices].float().cpu() if self.config.with_embeddings else None
            results.append(Detections(
                boxes=res.boxes.float().cpu(),
                scores=res.scores.float().cpu(),
                class_ids=res.class_ids.long().cpu(),
                class_names=[names[i] for i in res.class_ids.tolist()],
                image_size=batch.original_sizes[b],
                masks=None if res.masks is None else res.masks.cpu(),
                query_indices=res.query_indices.long().cpu(),
                query_embeddings=emb,
                mask_scores=None if res.mask_scores is None else res.mask_scores.float().cpu(),
                file_name=file_names[b] if file_names is not None else None,
            ))
        return results

    # ------------------------------------------------------------------ helpers
    def _post(self, base: PostprocessConfig, overrides: dict[str, Any]) -> PostprocessConfig:
        unknown = sorted(set(overrides) - _OVERRIDABLE)
        if unknown:
            raise TypeError(f"unknown option(s) {unknown}; settable per call: {sorted(_OVERRIDABLE)}")
        return dataclasses.replace(base, **overrides) if overrides else base

    def _read(self, images: Any) -> tuple[bool, list[np.ndarray], list[str | None]]:
        single = _is_single(images)
        items = [images] if single else list(images)
        if not items:
            raise ValueError("no images given")
        arrays = [read_image(x, max_pixels=self.config.max_pixels) for x in items]
        names = [os.fspath(x) if isinstance(x, (str, os.PathLike)) else None for x in items]
        return single, arrays, names

    def _prompt_selection(self, out: GleeOutput, b: int, plan: Any, batch: PreparedBatch,
                          post: PostprocessConfig) -> Selection | None:
        if not (self.config.click_ranking and plan.prompt.needs_click_ranking):
            return None
        original, resized, padded = batch.original_sizes[0], batch.resized_sizes[0], batch.padded_size
        pos = clicks_to_canvas(plan.positive, original, resized, padded)
        neg = clicks_to_canvas(plan.negative, original, resized, padded)
        return select_by_clicks(out.pred_logits[b], out.pred_masks[b], pos, neg, post.top_k, post.mask_threshold)
