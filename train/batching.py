"""Turn a list of mapped samples into what one training forward needs (official ``prepare_targets`` and the
vocabulary / visual-prompt logic of ``GLEE.forward``).

* images are normalised, zero-padded (after normalisation, like detectron2's ``ImageList``) to a common size
  divisible by 32, and stacked; video clips are flattened frame-major into the batch;
* targets: boxes xyxy -> cxcywh divided by the padded size and clamped to [0, 1], masks zero-padded;
* vocabulary: the dataset's full list; or, for Objects365 / LVIS / OpenImages (and any dataset with more names
  than ``max_category_len``), the batch's positive classes padded with uniformly sampled negatives to exactly
  ``max_category_len`` (100) names, labels remapped to the positives' positions; Visual Genome / GRIT use the
  region descriptions plus sampled negatives (200 / 100) in shuffled order; grounding uses the expression;
* visual prompts: with probability ``visual_prompt_prob`` (0.2) an eligible image batch becomes a prompt batch:
  one random object per image is the prompt and the only target; 60% 'mask' prompts (the object mask), 40% image
  prompts of which 20% 'box' (the filled box) and 80% 'point' (an H/20 x W/20 rectangle at a random object pixel).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from train.data.common import SkipStats
from train.data.routing import VISUAL_PROMPT_TASKS, dn_table, vocab_mode


@dataclass
class DatasetMeta:
    """What batching needs to know about the dataset a batch came from."""

    name: str
    class_names: list[str]
    has_masks: bool
    is_video: bool
    visual_prompt: bool | None = None  # None: the official task list decides
    description_pool: list[str] = field(default_factory=list)  # negatives for vg / grit vocabularies


@dataclass
class BatchingConfig:
    pixel_mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    pixel_std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    size_divisibility: int = 32
    max_category_len: int = 100
    visual_prompt: bool = False  # the model has a visual prompter (stage 2/3)
    visual_prompt_prob: float = 0.2


@dataclass
class TrainBatch:
    """One step's model inputs and targets.  N = images (or frames of all clips)."""

    step: int
    task: str
    dataset_index: int
    images: Tensor  # [N, 3, H, W] normalised, padded to a multiple of size_divisibility
    targets: list[dict[str, Any]]  # labels [n], boxes [n, 4] cxcywh in [0, 1], masks [n, H, W] bool | None, inst_id
    vocabulary: list[str] | None  # category names (None for grounding)
    expressions: list[str] | None  # one per image (grounding)
    visual_prompt_masks: Tensor | None  # [N, H, W] bool
    visual_prompt_type: str
    clip_length: int | None
    dn_task: str
    dn_classes: int
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def num_images(self) -> int:
        return self.images.shape[0]


def _pad_stack(images: list[Tensor], cfg: BatchingConfig) -> Tensor:
    div = cfg.size_divisibility
    h = max(i.shape[-2] for i in images)
    w = max(i.shape[-1] for i in images)
    h, w = -(-h // div) * div, -(-w // div) * div
    mean = torch.tensor(cfg.pixel_mean).view(3, 1, 1)
    std = torch.tensor(cfg.pixel_std).view(3, 1, 1)
    out = torch.zeros(len(images), 3, h, w)
    for k, img in enumerate(images):
        out[k, :, : img.shape[-2], : img.shape[-1]] = (img.float() - mean) / std
    return out


def _frame_target(inst: dict[str, Any], size: tuple[int, int], video: bool) -> dict[str, Any]:
    h, w = size
    boxes = inst["boxes"].float()
    cxcywh = torch.stack(
        [(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2, boxes[:, 2] - boxes[:, 0],
         boxes[:, 3] - boxes[:, 1]], -1,
    ) / torch.tensor([w, h, w, h], dtype=torch.float32)
    masks = inst.get("masks")
    if masks is not None:
        masks = F.pad(masks, (0, w - masks.shape[-1], 0, h - masks.shape[-2]))
    target = {"labels": inst["classes"].long().clone(), "boxes": cxcywh.clamp(0, 1), "masks": masks}
    if video:  # instance ids link frames for the track loss
        target["inst_id"] = inst["ids"].long() if "ids" in inst else torch.zeros(0, dtype=torch.int64)
    if "descriptions" in inst:
        target["descriptions"] = list(inst["descriptions"])
    return target


def _select(target: dict[str, Any], keep: Tensor) -> dict[str, Any]:
    out = dict(target)
    for key in ("labels", "boxes", "masks", "inst_id"):
        if out.get(key) is not None:
            out[key] = out[key][keep]
    if "descriptions" in out:
        out["descriptions"] = [d for d, k in zip(out["descriptions"], keep.tolist()) if k]
    return out


def build_vocabulary(
    targets: list[dict[str, Any]], meta: DatasetMeta, task: str, cfg: BatchingConfig, rng: random.Random,
    stats: SkipStats,
) -> tuple[list[str] | None, list[dict[str, Any]]]:
    """The batch's class-name list and the targets relabelled into it."""
    mode = vocab_mode(task, len(meta.class_names), cfg.max_category_len)
    if mode == "grounding":
        for t in targets:
            t["labels"] = torch.zeros_like(t["labels"])
        return None, targets
    if mode == "full":
        return list(meta.class_names), targets
    if mode == "sampled":
        limit = cfg.max_category_len
        positives = sorted({int(c) for t in targets for c in t["labels"].tolist()})
        if len(positives) > limit:  # official asserts; keep a random subset and drop the other instances
            kept = set(rng.sample(positives, limit))
            positives = sorted(kept)
            for i, t in enumerate(targets):
                keep = torch.tensor([int(c) in kept for c in t["labels"].tolist()], dtype=torch.bool)
                stats.add("instance_dropped_vocabulary_overflow", n=int((~keep).sum()))
                targets[i] = _select(t, keep)
        rest = sorted(set(range(len(meta.class_names))) - set(positives))
        negatives = rng.sample(rest, min(limit - len(positives), len(rest)))
        remap = {c: i for i, c in enumerate(positives)}
        for t in targets:
            t["labels"] = torch.as_tensor([remap[int(c)] for c in t["labels"].tolist()], dtype=torch.int64)
        return [meta.class_names[c] for c in positives + negatives], targets
    # descriptions (vg: 2 x max_category_len names, grit: max_category_len)
    size = 2 * cfg.max_category_len if task == "vg" else cfg.max_category_len
    positives = sorted({d for t in targets for d in t.get("descriptions", [])})
    if len(positives) > size:
        kept = set(rng.sample(positives, size))
        positives = sorted(kept)
        for i, t in enumerate(targets):
            keep = torch.tensor([d in kept for d in t["descriptions"]], dtype=torch.bool)
            stats.add("instance_dropped_vocabulary_overflow", n=int((~keep).sum()))
            targets[i] = _select(t, keep)
    pool = sorted(set(meta.description_pool) - set(positives))
    negatives = rng.sample(pool, min(size - len(positives), len(pool)))
    names = positives + negatives
    rng.shuffle(names)
    index = {n: i for i, n in enumerate(names)}
    for t in targets:
        t["labels"] = torch.as_tensor([index[d] for d in t.get("descriptions", [])], dtype=torch.int64)
    return names, targets


def _prompt_batch(
    targets: list[dict[str, Any]], size: tuple[int, int], rng: random.Random
) -> tuple[Tensor, str, list[dict[str, Any]]]:
    """One random object per image becomes the prompt and the only target."""
    h, w = size
    mode_draw = rng.random()
    if mode_draw < 0.6 and all(t["masks"] is not None for t in targets):
        mode = "mask"
    else:
        mode = "box" if rng.random() < 0.2 else "point"
    prompts, new_targets = [], []
    for t in targets:
        k = rng.randrange(len(t["labels"]))
        keep = torch.zeros(len(t["labels"]), dtype=torch.bool)
        keep[k] = True
        t = _select(t, keep)
        if t["masks"] is not None:
            obj = t["masks"][0].bool()
        else:  # box-only data: the object's box region
            cx, cy, bw, bh = (t["boxes"][0] * torch.tensor([w, h, w, h])).tolist()
            obj = torch.zeros(h, w, dtype=torch.bool)
            obj[int(cy - bh / 2) : int(cy + bh / 2) + 1, int(cx - bw / 2) : int(cx + bw / 2) + 1] = True
        if not obj.any():
            obj[min(int(t["boxes"][0, 1] * h), h - 1), min(int(t["boxes"][0, 0] * w), w - 1)] = True
        if mode == "mask":
            prompt = obj
        elif mode == "box":
            ys, xs = torch.nonzero(obj, as_tuple=True)
            prompt = torch.zeros(h, w, dtype=torch.bool)
            prompt[int(ys.min()) : int(ys.max()) + 1, int(xs.min()) : int(xs.max()) + 1] = True
        else:
            ys, xs = torch.nonzero(obj, as_tuple=True)
            j = rng.randrange(len(ys))
            y, x = int(ys[j]), int(xs[j])
            ph, pw = max(h // 40, 1), max(w // 40, 1)
            prompt = torch.zeros(h, w, dtype=torch.bool)
            prompt[max(y - ph, 0) : y + ph, max(x - pw, 0) : x + pw] = True
        prompts.append(prompt)
        new_targets.append(t)
    return torch.stack(prompts), mode, new_targets


def collate(
    step: int,
    dataset_index: int,
    samples: list[dict[str, Any]],
    meta: DatasetMeta,
    cfg: BatchingConfig,
    rng: random.Random,
    skipped: dict[str, int] | None = None,
) -> TrainBatch:
    """Mapped samples of one dataset -> ``TrainBatch`` (see the module docstring)."""
    if not samples:
        raise ValueError("an empty batch")
    task = samples[0]["task"]
    stats = SkipStats()
    if meta.is_video:
        clip_length = len(samples[0]["image"])
        frames = [img for s in samples for img in s["image"]]
        insts = [inst for s in samples for inst in s["instances"]]
        expressions = None
        if samples[0]["expression"] is not None:
            expressions = [s["expression"] for s in samples for _ in range(clip_length)]
    else:
        clip_length = None
        frames = [s["image"] for s in samples]
        insts = [s["instances"] for s in samples]
        expressions = [s["expression"] for s in samples] if samples[0]["expression"] is not None else None
    images = _pad_stack(frames, cfg)
    size = (images.shape[-2], images.shape[-1])
    targets = [_frame_target(inst, size, meta.is_video) for inst in insts]
    vocabulary, targets = build_vocabulary(targets, meta, task, cfg, rng, stats)

    prompt_masks, prompt_type = None, "box"
    eligible = meta.visual_prompt if meta.visual_prompt is not None else task in VISUAL_PROMPT_TASKS
    if (cfg.visual_prompt and eligible and not meta.is_video and vocabulary is not None
            and rng.random() < cfg.visual_prompt_prob and all(len(t["labels"]) for t in targets)):
        prompt_masks, prompt_type, targets = _prompt_batch(targets, size, rng)
    dn_task, dn_classes = dn_table(task, len(vocabulary) if vocabulary is not None else 1)
    counts = dict(skipped or {})
    for k, v in stats.as_dict().items():
        counts[k] = counts.get(k, 0) + v
    return TrainBatch(
        step=step, task=task, dataset_index=dataset_index, images=images, targets=targets, vocabulary=vocabulary,
        expressions=expressions, visual_prompt_masks=prompt_masks, visual_prompt_type=prompt_type,
        clip_length=clip_length, dn_task=dn_task, dn_classes=dn_classes, skipped=counts,
    )
