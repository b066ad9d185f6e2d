"""Batching: images -> pixel values, conversations -> padded ids/labels, masks kept per image.

One batch item is an image with up to a few conversations (LISA: 3); every conversation becomes a row and
``image_index`` maps rows to images, so each image is encoded once.  Rows longer than the context budget are
truncated from the end, and the masks of any [SEG] cut off are dropped with them, so [SEG] and masks stay
aligned.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from llm_bridge.data.base import SegSample
from llm_bridge.data.conversation import IMAGE_PLACEHOLDER, pad_batch, tokenize_conversation


class BridgeCollator:
    def __init__(self, tokenizer: Any, image_processor: Any, seg_token_id: int, image_token_id: int,
                 num_visual_tokens: int, max_context: int, system_prompt: str | None = None) -> None:
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.seg_token_id = seg_token_id
        self.image_token_id = image_token_id
        self.num_visual_tokens = num_visual_tokens
        self.max_context = max_context
        self.system_prompt = system_prompt

    @classmethod
    def for_model(cls, model: Any) -> BridgeCollator:
        return cls(model.tokenizer, model.image_processor, model.seg_token_id, model.image_token_id,
                   model.num_visual_tokens, model.max_context, model.config.system_prompt)

    def __call__(self, samples: Sequence[SegSample]) -> dict[str, Any]:
        if not samples:
            raise ValueError("empty batch")
        rows, labels, image_index = [], [], []
        gt_masks, gt_sets = [], []
        for i, sample in enumerate(samples):
            kept_masks: list[np.ndarray] = []
            kept_sets: list[int] = []
            sets = sample.mask_sets if sample.mask_sets is not None else np.full(len(sample.masks), -1)
            cursor = 0
            for conv in sample.conversations:
                ids, lab = tokenize_conversation(self.tokenizer, conv, self.system_prompt)
                n_seg = ids.count(self.seg_token_id)
                has_image = any(IMAGE_PLACEHOLDER in m["content"] for m in conv if m["role"] == "user")
                budget = self.max_context - (self.num_visual_tokens - 1 if has_image else 0)
                if len(ids) > budget:
                    if has_image and self.image_token_id not in ids[:budget]:
                        raise ValueError(f"{sample.source} {sample.image_path}: the image token falls beyond the "
                                         f"context budget ({budget} text tokens); raise model_max_length")
                    warnings.warn(f"{sample.source}: conversation of {len(ids)} tokens truncated to {budget}",
                                  stacklevel=2)
                    ids, lab = ids[:budget], lab[:budget]
                kept = ids.count(self.seg_token_id)
                if cursor + n_seg > len(sample.masks):
                    raise ValueError(f"{sample.source} {sample.image_path}: the conversations hold more [SEG] "
                                     f"tokens than the {len(sample.masks)} mask(s) given")
                kept_masks += list(sample.masks[cursor:cursor + kept])
                kept_sets += [int(v) for v in sets[cursor:cursor + kept]]
                cursor += n_seg
                rows.append(ids)
                labels.append(lab)
                image_index.append(i)
            if cursor != len(sample.masks):
                raise ValueError(f"{sample.source} {sample.image_path}: {cursor} [SEG] token(s) in the "
                                 f"conversations but {len(sample.masks)} mask(s)")
            h, w = sample.image.shape[:2]
            gt_masks.append(torch.from_numpy(np.stack(kept_masks)) if kept_masks
                            else torch.zeros((0, h, w), dtype=torch.uint8))
            gt_sets.append(torch.tensor(kept_sets, dtype=torch.long))
        input_ids, attention_mask, label_t = pad_batch(rows, int(self.tokenizer.pad_token_id), "right", labels)
        pixel_values = self.image_processor([s.image for s in samples], return_tensors="pt")["pixel_values"]
        original = [(int(s.image.shape[0]), int(s.image.shape[1])) for s in samples]
        resized = [self.image_processor.resized_size(h, w) for h, w in original]
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": label_t,
            "pixel_values": pixel_values,
            "image_index": torch.tensor(image_index, dtype=torch.long),
            "gt_masks": gt_masks,
            "gt_mask_sets": gt_sets,  # per image [n_i]: set id of each mask (-1: ordered); see SegSample.mask_sets
            "original_sizes": original,
            "resized_sizes": resized,
            "sources": [s.source for s in samples],
        }
