"""Models for testing the app end to end without trained weights.

* :class:`ScriptedChat` -- the tiny random bridge with its language model's tokens forced to a fixed answer.
  Only the *text* is scripted: every ``[SEG]`` still goes through the real path (the hidden state that
  produced it, the [SEG] projection, GLEE's pixel decoder), so the masks are genuine bridge outputs.  A
  random LM would almost never emit ``[SEG]``; this is how the page's "answer with a mask" is exercised.
* :func:`scripted_registry` -- a registry of the random tiny GLEE and a scripted bridge.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from llm_bridge.app.models import ModelChoice, ModelRegistry, random_tiny_glee
from llm_bridge.chat import BridgeChat, ChatResult


class _Script:
    """Logits processor forcing ``ids`` one per step (the prompt length is taken from the first call)."""

    def __init__(self, ids: Sequence[int]) -> None:
        self.ids = list(ids)
        self.start: int | None = None

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        if self.start is None:
            self.start = input_ids.shape[1]
        token = self.ids[min(input_ids.shape[1] - self.start, len(self.ids) - 1)]
        forced = torch.full_like(scores, float("-inf"))
        forced[:, token] = 0.0
        return forced


class ScriptedChat(BridgeChat):
    """A :class:`BridgeChat` whose answer text is always ``answer`` (masks computed for real)."""

    def __init__(self, model: Any, answer: str = "Sure, it is [SEG].") -> None:
        super().__init__(model)
        tok = model.tokenizer
        self.answer = answer
        self.script = tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]

    def ask(self, image: Any, prompt: str, history: Any = None, max_new_tokens: int = 256,
            threshold: float = 0.0, **kwargs: Any) -> ChatResult:
        return super().ask(image, prompt, history, max_new_tokens=len(self.script) + 1, threshold=threshold,
                           logits_processor=_Script(self.script))


def scripted_chat(answer: str = "Sure, it is [SEG].", seed: int = 0) -> ScriptedChat:
    from llm_bridge.testing import tiny_bridge, tiny_llm_dir

    return ScriptedChat(tiny_bridge(tiny_llm_dir(), seed=seed), answer)


def scripted_registry(answer: str = "Sure, it is [SEG].", glee_model: Any = None) -> ModelRegistry:
    """Random tiny GLEE (or ``glee_model``) and a scripted tiny bridge, both marked untrained."""
    return ModelRegistry([
        ModelChoice(id="default", kind="glee", label="tiny GLEE (untrained demo weights)", trained=False,
                    source="random weights, seed 0",
                    loader=(lambda: glee_model) if glee_model is not None else (lambda: random_tiny_glee(0))),
        ModelChoice(id="default", kind="bridge", label="tiny bridge (untrained demo weights, scripted text)",
                    trained=False, source="random weights, seed 0", loader=lambda: scripted_chat(answer)),
    ])
