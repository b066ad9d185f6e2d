"""Conversations -> token ids and labels, for any chat template.

Messages are ``{"role": "user" | "assistant" | "system", "content": str}``; an image is the literal
``<image>`` in a user message (LISA puts ``"<image>\\n"`` in front of the first question).  The text is
rendered with the tokenizer's chat template (SmolLM2: ChatML) or, when it has none, LLaVA's ``llava_v1``
format.  Labels come from character offsets: a token is supervised when it overlaps an assistant message or
the end-of-turn token right after it.  This avoids LISA's length arithmetic per round (and its
``cur_len == total_len`` assertion on tokenizer mismatches, LISA issue #66).

LISA's question and answer templates are reproduced here as data (they define the training task).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from llm_bridge.losses import IGNORE_INDEX

IMAGE_PLACEHOLDER = "<image>"
LLAVA_V1_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
                   "The assistant gives helpful, detailed, and polite answers to the human's questions.")

SHORT_QUESTION_LIST = [
    "Can you segment the {class_name} in this image?",
    "Please segment the {class_name} in this image.",
    "What is {class_name} in this image? Please respond with segmentation mask.",
    "What is {class_name} in this image? Please output segmentation mask.",
]
LONG_QUESTION_LIST = [
    "{sent} Please respond with segmentation mask.",
    "{sent} Please output segmentation mask.",
]
EXPLANATORY_QUESTION_LIST = [
    "Please output segmentation mask and explain why.",
    "Please output segmentation mask and explain the reason.",
    "Please output segmentation mask and give some explanation.",
]
ANSWER_LIST = [
    "It is [SEG].",
    "Sure, [SEG].",
    "Sure, it is [SEG].",
    "Sure, the segmentation result is [SEG].",
    "[SEG].",
]

# answers naming several objects, one [SEG] each ({segs}: "[SEG], [SEG] and [SEG]")
MULTI_ANSWER_LIST = [
    "They are {segs}.",
    "Sure, {segs}.",
    "Sure, they are {segs}.",
    "Sure, the segmentation results are {segs}.",
    "{segs}.",
]

Message = dict[str, str]


# answers that name each object before its [SEG] ({objects}: "the red circle [SEG] and the blue ring [SEG]")
NAMED_ANSWER_LIST = [
    "It is {objects}.",
    "Sure, {objects}.",
    "Sure, it is {objects}.",
]
NAMED_MULTI_ANSWER_LIST = [
    "They are {objects}.",
    "Sure, {objects}.",
    "Sure, they are {objects}.",
]


def named_seg_answer(rng: Any, names: Sequence[str], seg_token: str = "[SEG]") -> str:
    """A templated answer naming each object before its [SEG]: "Sure, they are the red circle [SEG] and ..."."""
    if not names:
        raise ValueError("a named answer needs at least one object name")
    parts = [f"the {name} {seg_token}" for name in names]
    objects = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + f" and {parts[-1]}"
    pool = NAMED_ANSWER_LIST if len(parts) == 1 else NAMED_MULTI_ANSWER_LIST
    return str(rng.choice(pool)).format(objects=objects)


def seg_answer(rng: Any, count: int, seg_token: str = "[SEG]") -> str:
    """A templated answer with ``count`` [SEG] tokens (LISA's ANSWER_LIST for one)."""
    if count < 1:
        raise ValueError(f"an answer needs at least one {seg_token}, got count={count}")
    if count == 1:
        return str(rng.choice(ANSWER_LIST)).replace("[SEG]", seg_token)
    segs = ", ".join([seg_token] * (count - 1)) + f" and {seg_token}"
    return str(rng.choice(MULTI_ANSWER_LIST)).format(segs=segs)


def with_image(text: str) -> str:
    """LISA's form of the first user turn: ``<image>\\n`` + question."""
    return f"{IMAGE_PLACEHOLDER}\n{text}"


def render(tokenizer: Any, messages: Sequence[Message], add_generation_prompt: bool = False,
           system_prompt: str | None = None) -> str:
    """The conversation as one string in the tokenizer's chat format."""
    _check_messages(messages)
    msgs = list(messages)
    if system_prompt is not None and (not msgs or msgs[0]["role"] != "system"):
        msgs = [{"role": "system", "content": system_prompt}, *msgs]
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=add_generation_prompt)
    # llava_v1 (LISA's default conv_type): "<sys> USER: q ASSISTANT: a</s>USER: ..."
    system = LLAVA_V1_SYSTEM
    if msgs and msgs[0]["role"] == "system":
        system, msgs = msgs[0]["content"], msgs[1:]
    eos = tokenizer.eos_token or "</s>"
    text = (tokenizer.bos_token or "") + system
    for m in msgs:
        if m["role"] == "user":
            text += " USER: " + m["content"]
        else:
            text += " ASSISTANT: " + m["content"] + eos
    if add_generation_prompt:
        text += " ASSISTANT:"
    return text


def tokenize_conversation(tokenizer: Any, messages: Sequence[Message],
                          system_prompt: str | None = None) -> tuple[list[int], list[int]]:
    """(input_ids, labels): labels copy the ids of assistant content (+ its end-of-turn token), else -100."""
    text = render(tokenizer, messages, system_prompt=system_prompt)
    spans = _assistant_spans(text, messages, tokenizer.eos_token)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    labels = [IGNORE_INDEX] * len(ids)
    for i, (start, end) in enumerate(enc["offset_mapping"]):
        if end > start and any(start < s_end and end > s_start for s_start, s_end in spans):
            labels[i] = ids[i]
    return ids, labels


def build_prompt(tokenizer: Any, messages: Sequence[Message], system_prompt: str | None = None) -> list[int]:
    """Token ids of a conversation that ends with a user turn, followed by the assistant prefix."""
    if not messages or messages[-1]["role"] != "user":
        raise ValueError("a prompt for generation must end with a user message")
    text = render(tokenizer, messages, add_generation_prompt=True, system_prompt=system_prompt)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def pad_batch(rows: Sequence[Sequence[int]], pad_id: int, side: str = "right",
              labels: Sequence[Sequence[int]] | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
    """Pad id lists to [B, L]; returns (input_ids, attention_mask, labels or None)."""
    if not rows:
        raise ValueError("no rows to pad")
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    lab = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long) if labels is not None else None
    for b, row in enumerate(rows):
        sl = slice(length - len(row), length) if side == "left" else slice(0, len(row))
        ids[b, sl] = torch.tensor(list(row), dtype=torch.long)
        mask[b, sl] = 1
        if lab is not None:
            lab[b, sl] = torch.tensor(list(labels[b]), dtype=torch.long)
    return ids, mask, lab


def _check_messages(messages: Sequence[Message]) -> None:
    if not messages:
        raise ValueError("empty conversation")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant") or \
                not isinstance(m.get("content"), str):
            raise ValueError(f"message {i} must be {{'role': 'user'|'assistant'|'system', 'content': str}}, got {m!r}")


def _assistant_spans(text: str, messages: Sequence[Message], eos: str | None) -> list[tuple[int, int]]:
    """Character spans of the assistant contents in ``text`` (in order), each extended over a following eos.

    Every message is located in turn from a moving cursor, so a user message that quotes an answer cannot be
    mistaken for it.
    """
    spans = []
    cursor = 0
    for m in messages:
        if not m["content"]:
            continue
        start = text.find(m["content"], cursor)
        if start < 0:
            raise ValueError(f"{m['role']} message {m['content'][:40]!r} not found in the rendered conversation; "
                             "the chat template rewrites message contents")
        end = start + len(m["content"])
        if m["role"] == "assistant":
            if eos and text.startswith(eos, end):
                end += len(eos)
            spans.append((start, end))
        cursor = end
    return spans
