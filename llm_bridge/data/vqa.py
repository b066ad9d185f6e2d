"""LLaVA-Instruct visual question answering (``llava_instruct_150k.json``): multi-turn, no masks.

Records are ``{"id", "image", "conversations": [{"from": "human"|"gpt", "value": str}, ...]}`` with
``<image>`` in the first human turn; images under ``image_root`` (LISA: ``<dataset_dir>/coco/train2017``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from llm_bridge.data.base import RandomSampleDataset, SegSample, empty_masks, read_image
from llm_bridge.data.conversation import IMAGE_PLACEHOLDER, with_image

ROLES = {"human": "user", "gpt": "assistant"}


def convert_llava_conversation(turns: list[dict]) -> list[dict[str, str]]:
    """LLaVA ``from``/``value`` turns -> role/content messages (a leading gpt turn is dropped, as in LISA)."""
    messages = []
    for i, turn in enumerate(turns):
        role = ROLES.get(turn.get("from", ""))
        if role is None:
            raise ValueError(f"turn {i}: unknown speaker {turn.get('from')!r} (expected 'human' or 'gpt')")
        if not messages and role == "assistant":
            continue
        if messages and messages[-1]["role"] == role:
            raise ValueError(f"turn {i}: two consecutive {role} turns")
        messages.append({"role": role, "content": str(turn.get("value", ""))})
    if not messages:
        raise ValueError("conversation has no human turn")
    if not any(IMAGE_PLACEHOLDER in m["content"] for m in messages):
        messages[0]["content"] = with_image(messages[0]["content"])
    return messages


class VQADataset(RandomSampleDataset):
    kind = "vqa"

    def __init__(self, json_file: str | Path, image_root: str | Path, samples_per_epoch: int = 1000,
                 seed: int = 0) -> None:
        super().__init__(samples_per_epoch, seed)
        path = Path(json_file)
        if not path.exists():
            raise FileNotFoundError(f"LLaVA instruction file {path} does not exist")
        self.records = [r for r in json.loads(path.read_text()) if "image" in r and r.get("conversations")]
        if not self.records:
            raise ValueError(f"{path}: no records with an image and conversations")
        self.image_root = Path(image_root)

    def describe(self) -> str:
        return f"{len(self.records)} conversations"

    def sample(self, rng: np.random.Generator) -> SegSample:
        record = self.records[int(rng.integers(len(self.records)))]
        path = self.image_root / record["image"]
        image = read_image(path)
        messages = convert_llava_conversation(record["conversations"])
        return SegSample(image, [messages], empty_masks(image), self.kind, str(path))
