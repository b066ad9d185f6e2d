"""Typed prediction results and their exporters (COCO results JSON, supervision-style dicts, JSON).

One :class:`Detections` holds the instances kept for one image (or one video frame): N boxes in image
pixels, scores, class ids and names, optional boolean masks at image resolution, and the decoder query
each instance came from with its embedding (the tracking/association feature).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

IndexLike = int | slice | Sequence[int] | Tensor | np.ndarray


@dataclass
class Detections:
    """Instances of one image.  N instances, image of ``image_size`` = (H, W).

    Attributes:
        boxes: [N, 4] float32 (x1, y1, x2, y2) in image pixels.
        scores: [N] float32 final scores (see ``PostprocessConfig.score_mode``).
        class_ids: [N] int64 index into the prompt's class list (0 for expressions and visual prompts).
        class_names: N names (the class name, the expression, or ``"object"``).
        image_size: (H, W) of the image the boxes and masks refer to.
        masks: [N, H, W] bool, or ``None`` when masks were not requested.
        query_indices: [N] int64 decoder query of each instance.
        query_embeddings: [N, C] float32 decoder embeddings (``GleeOutput.query_embeddings``), or ``None``.
        mask_scores: [N] mean mask probability over each mask (``None`` unless computed).
        track_ids: [N] int64 track identities (video), or ``None``.
        prompt_ids: [N] int64 index of the visual prompt that produced each instance, or ``None``.
        file_name: optional source name, carried into exports.
    """

    boxes: Tensor
    scores: Tensor
    class_ids: Tensor
    class_names: list[str]
    image_size: tuple[int, int]
    masks: Tensor | None = None
    query_indices: Tensor | None = None
    query_embeddings: Tensor | None = None
    mask_scores: Tensor | None = None
    track_ids: Tensor | None = None
    prompt_ids: Tensor | None = None
    file_name: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = self.boxes.shape[0]
        if self.boxes.dim() != 2 or self.boxes.shape[-1] != 4:
            raise ValueError(f"boxes must be [N, 4] xyxy, got {tuple(self.boxes.shape)}")
        if len(self.class_names) != n:
            raise ValueError(f"{len(self.class_names)} class names for {n} boxes")
        for name in ("scores", "class_ids", "query_indices", "mask_scores", "track_ids", "prompt_ids"):
            value = getattr(self, name)
            if value is not None and value.shape[:1] != (n,):
                raise ValueError(f"{name} must have {n} entries, got shape {tuple(value.shape)}")
        if self.masks is not None:
            expected = (n, *self.image_size)
            if tuple(self.masks.shape) != tuple(expected):
                raise ValueError(f"masks must be [N, H, W] = [{n}, {self.image_size[0]}, {self.image_size[1]}], "
                                 f"got {tuple(self.masks.shape)}")
            if self.masks.dtype != torch.bool:
                raise ValueError(f"masks must be bool, got {self.masks.dtype}")
        if self.query_embeddings is not None and self.query_embeddings.shape[0] != n:
            raise ValueError(f"query_embeddings must have {n} rows, got {tuple(self.query_embeddings.shape)}")

    # ------------------------------------------------------------------ container behaviour
    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    @classmethod
    def empty(cls, image_size: tuple[int, int], with_masks: bool = True, embed_dim: int | None = None) -> Detections:
        h, w = image_size
        return cls(
            boxes=torch.zeros(0, 4),
            scores=torch.zeros(0),
            class_ids=torch.zeros(0, dtype=torch.long),
            class_names=[],
            image_size=(int(h), int(w)),
            masks=torch.zeros(0, h, w, dtype=torch.bool) if with_masks else None,
            query_indices=torch.zeros(0, dtype=torch.long),
            query_embeddings=torch.zeros(0, embed_dim) if embed_dim else None,
        )

    def __getitem__(self, index: IndexLike) -> Detections:
        """Select instances by an int, slice, index list or boolean mask; always returns ``Detections``."""
        if isinstance(index, int):
            index = [index]
        if isinstance(index, np.ndarray):
            index = torch.from_numpy(index)
        if isinstance(index, slice):
            idx = torch.arange(len(self))[index]
        else:
            idx = torch.as_tensor(index)
            if idx.dtype == torch.bool:
                if idx.shape != (len(self),):
                    raise IndexError(f"boolean index must have {len(self)} entries, got {tuple(idx.shape)}")
                idx = idx.nonzero().flatten()
            idx = idx.long().flatten()
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "class_names":
                out[f.name] = [self.class_names[i] for i in idx.tolist()]
            elif isinstance(value, Tensor):
                out[f.name] = value[idx.to(value.device)]
            else:
                out[f.name] = value
        return Detections(**out)

    def to(self, device: str | torch.device) -> Detections:
        return replace(self, **{f.name: getattr(self, f.name).to(device) for f in fields(self)
                                if isinstance(getattr(self, f.name), Tensor)})

    def cpu(self) -> Detections:
        return self.to("cpu")

    @classmethod
    def cat(cls, items: Sequence[Detections]) -> Detections:
        """Concatenate instances of the same image (e.g. one result per visual prompt)."""
        if not items:
            raise ValueError("nothing to concatenate")
        size = items[0].image_size
        if any(tuple(d.image_size) != tuple(size) for d in items):
            raise ValueError("can only concatenate detections of one image size")
        out: dict[str, Any] = {}
        for f in fields(cls):
            values = [getattr(d, f.name) for d in items]
            if f.name == "class_names":
                out[f.name] = [n for v in values for n in v]
            elif f.name == "meta":
                out[f.name] = dict(items[0].meta)
            elif any(isinstance(v, Tensor) for v in values):
                if any(v is None for v in values):
                    raise ValueError(f"field {f.name} is set on some detections but not others")
                out[f.name] = torch.cat(values)
            else:
                out[f.name] = values[0]
        return cls(**out)

    def sort(self, descending: bool = True) -> Detections:
        """Instances in order of score (stable)."""
        return self[torch.sort(self.scores, descending=descending, stable=True).indices]

    # ------------------------------------------------------------------ masks
    def masks_rle(self) -> list[dict[str, Any]]:
        """COCO run-length encodings of the masks (``counts`` as a str, JSON-ready)."""
        if self.masks is None:
            raise ValueError("these detections have no masks; predict with masks enabled")
        from pycocotools import mask as mask_utils

        if len(self) == 0:
            return []
        array = np.asfortranarray(self.masks.cpu().numpy().transpose(1, 2, 0).astype(np.uint8))
        rles = mask_utils.encode(array)
        for rle in rles:
            rle["counts"] = rle["counts"].decode("ascii")
        return rles

    def mask_areas(self) -> Tensor:
        """[N] int64 number of pixels of each mask."""
        if self.masks is None:
            raise ValueError("these detections have no masks")
        return self.masks.flatten(1).sum(1)

    # ------------------------------------------------------------------ exporters
    def to_coco(
        self,
        image_id: int | str,
        category_ids: Sequence[int] | Mapping[str, int] | None = None,
        with_masks: bool = True,
    ) -> list[dict[str, Any]]:
        """COCO results records (``image_id``, ``category_id``, ``bbox`` [x, y, w, h], ``score``,
        ``segmentation`` RLE when masks exist and ``with_masks``).

        ``category_ids`` maps class ids to dataset ids: a sequence (the i-th class name's id) or a
        name -> id mapping.  The default is ``class_id + 1`` (contiguous 1-based ids, e.g. LVIS).
        """
        ids = self._category_ids(category_ids)
        boxes = self.boxes.detach().cpu().double()
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 1).tolist()
        scores = self.scores.detach().cpu().tolist()
        rles = self.masks_rle() if (with_masks and self.masks is not None) else None
        records = []
        for i in range(len(self)):
            rec: dict[str, Any] = {
                "image_id": image_id,
                "category_id": ids[i],
                "bbox": [round(v, 3) for v in xywh[i]],
                "score": float(scores[i]),
            }
            if rles is not None:
                rec["segmentation"] = rles[i]
            records.append(rec)
        return records

    def _category_ids(self, category_ids: Sequence[int] | Mapping[str, int] | None) -> list[int]:
        class_ids = self.class_ids.cpu().tolist()
        if category_ids is None:
            return [c + 1 for c in class_ids]
        if isinstance(category_ids, Mapping):
            missing = sorted({n for n in self.class_names if n not in category_ids})
            if missing:
                raise KeyError(f"category_ids has no id for class name(s) {missing}")
            return [int(category_ids[n]) for n in self.class_names]
        if class_ids and max(class_ids) >= len(category_ids):
            raise IndexError(f"class id {max(class_ids)} has no entry in category_ids (length {len(category_ids)})")
        return [int(category_ids[c]) for c in class_ids]

    def to_supervision(self) -> dict[str, Any]:
        """A plain dict with the fields of ``supervision.Detections`` (``sv.Detections(**d)`` accepts it).

        ``xyxy`` float32 [N, 4], ``mask`` bool [N, H, W] or None, ``confidence`` float32 [N], ``class_id``
        int64 [N], ``tracker_id`` int64 [N] or None, ``data`` {'class_name': str array [N]}.
        """
        return {
            "xyxy": self.boxes.detach().cpu().float().numpy().reshape(-1, 4),
            "mask": None if self.masks is None else self.masks.cpu().numpy(),
            "confidence": self.scores.detach().cpu().float().numpy(),
            "class_id": self.class_ids.cpu().long().numpy(),
            "tracker_id": None if self.track_ids is None else self.track_ids.cpu().long().numpy(),
            "data": {"class_name": np.asarray(self.class_names, dtype=str).reshape(-1)},
        }

    def to_dict(self, with_masks: bool = True, with_embeddings: bool = False) -> dict[str, Any]:
        """JSON-ready summary: lists of floats/ints, masks as RLE."""
        out: dict[str, Any] = {
            "image_size": list(self.image_size),
            "boxes_xyxy": self.boxes.detach().cpu().tolist(),
            "scores": self.scores.detach().cpu().tolist(),
            "class_ids": self.class_ids.cpu().tolist(),
            "class_names": list(self.class_names),
        }
        if self.file_name is not None:
            out["file_name"] = self.file_name
        for name in ("query_indices", "track_ids", "prompt_ids", "mask_scores"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value.detach().cpu().tolist()
        if with_masks and self.masks is not None:
            out["masks_rle"] = self.masks_rle()
        if with_embeddings and self.query_embeddings is not None:
            out["query_embeddings"] = self.query_embeddings.detach().cpu().tolist()
        if self.meta:
            out["meta"] = self.meta
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Detections:
        """Inverse of :meth:`to_dict` (masks decoded from RLE)."""
        h, w = data["image_size"]
        n = len(data["scores"])
        masks = None
        if "masks_rle" in data:
            from pycocotools import mask as mask_utils

            rles = [{"size": r["size"], "counts": r["counts"].encode("ascii")} for r in data["masks_rle"]]
            decoded = mask_utils.decode(rles) if rles else np.zeros((h, w, 0), np.uint8)
            masks = torch.from_numpy(decoded.transpose(2, 0, 1).astype(bool))

        def opt(name: str, dtype: torch.dtype) -> Tensor | None:
            return torch.tensor(data[name], dtype=dtype) if name in data else None

        embeddings = data.get("query_embeddings")
        return cls(
            boxes=torch.tensor(data["boxes_xyxy"], dtype=torch.float32).reshape(n, 4),
            scores=torch.tensor(data["scores"], dtype=torch.float32),
            class_ids=torch.tensor(data["class_ids"], dtype=torch.long),
            class_names=list(data["class_names"]),
            image_size=(int(h), int(w)),
            masks=masks,
            query_indices=opt("query_indices", torch.long),
            query_embeddings=None if embeddings is None else torch.tensor(embeddings, dtype=torch.float32),
            mask_scores=opt("mask_scores", torch.float32),
            track_ids=opt("track_ids", torch.long),
            prompt_ids=opt("prompt_ids", torch.long),
            file_name=data.get("file_name"),
            meta=dict(data.get("meta", {})),
        )


def coco_results(
    detections: Sequence[Detections],
    image_ids: Sequence[int | str],
    category_ids: Sequence[int] | Mapping[str, int] | None = None,
    with_masks: bool = True,
) -> list[dict[str, Any]]:
    """COCO results list for several images (the format ``COCO.loadRes`` and the evaluators read)."""
    if len(detections) != len(image_ids):
        raise ValueError(f"{len(detections)} detections for {len(image_ids)} image ids")
    records: list[dict[str, Any]] = []
    for dets, image_id in zip(detections, image_ids):
        records += dets.to_coco(image_id, category_ids, with_masks)
    return records


def save_coco_results(
    path: str | os.PathLike,
    detections: Sequence[Detections],
    image_ids: Sequence[int | str],
    category_ids: Sequence[int] | Mapping[str, int] | None = None,
    with_masks: bool = True,
) -> Path:
    """Write :func:`coco_results` as JSON; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(coco_results(detections, image_ids, category_ids, with_masks)))
    return path
