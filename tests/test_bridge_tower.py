"""GLEE vision tower: transformers' LlavaForConditionalGeneration, the original LLaVA tower contract, preprocessing."""

from __future__ import annotations

import sys
import types
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from glee import GleeConfig, GleeModel
from llm_bridge.testing import tiny_tokenizer
from llm_bridge.tower import (
    GleeFeatureExtractor,
    GleeImageProcessor,
    GleeLlavaProcessor,
    GleeLlavaVisionTower,
    GleeVisionConfig,
    GleeVisionModel,
    build_llava_config,
    glee_vision_config,
    register_llava_builder,
    tower_name,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: one thread is faster, steadier





@pytest.fixture(scope="module")
def glee_tiny():
    torch.manual_seed(0)
    return GleeModel(GleeConfig.preset("tiny")).eval()


def test_llava_for_conditional_generation_with_glee_tower(tmp_path, glee_tiny):
    from transformers import AutoConfig, AutoModel, LlamaConfig, LlavaForConditionalGeneration

    tok = tiny_tokenizer()
    tok.add_tokens(["<image>"], special_tokens=True)
    vision = glee_vision_config(glee_tiny, image_size=64, pooled_tokens_per_side=2)
    assert vision.image_seq_length == 6 + 4 and vision.hidden_size == 256
    assert isinstance(AutoConfig.for_model("glee_vision_model"), GleeVisionConfig)  # registered
    text = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, eos_token_id=2)
    config = build_llava_config(vision, text, image_token_id=tok.convert_tokens_to_ids("<image>"))
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).eval()
    tower = model.model.vision_tower
    assert isinstance(tower, GleeVisionModel) and isinstance(AutoModel.from_config(vision), GleeVisionModel)
    tower.load_glee(glee_tiny)
    assert not any(p.requires_grad for p in tower.parameters())  # frozen by default

    processor = GleeLlavaProcessor(image_processor=GleeImageProcessor.for_size(64), tokenizer=tok,
                                   num_image_tokens=vision.image_seq_length)
    image = np.random.default_rng(0).integers(0, 255, (48, 80, 3), dtype=np.uint8)
    batch = processor(images=[image], text=["<image>\nWhat is in the image?"], return_tensors="pt")
    assert int((batch["input_ids"] == config.image_token_id).sum()) == 10
    assert tuple(batch["pixel_values"].shape) == (1, 3, 64, 64)
    out = model.generate(**batch, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == batch["input_ids"].shape[1] + 4
    assert tuple(tower.last_pixel_embeddings.shape) == (1, 256, 16, 16)  # kept for [SEG] decoding
    with torch.no_grad():
        tokens = tower(batch["pixel_values"]).hidden_states[-1]
        direct = GleeFeatureExtractor(glee_tiny, pooled_tokens_per_side=2)(batch["pixel_values"]).tokens
    torch.testing.assert_close(tokens, direct)

    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    reloaded = LlavaForConditionalGeneration.from_pretrained(tmp_path).eval()
    processor2 = GleeLlavaProcessor.from_pretrained(tmp_path)
    batch2 = processor2(images=[image], text=["<image>\nWhat is in the image?"], return_tensors="pt")
    assert torch.equal(batch2["input_ids"], batch["input_ids"])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch2).logits, model(**batch).logits)


def test_llava_tower_contract_and_builder_hook(glee_tiny, tmp_path):
    glee_tiny.save_pretrained(tmp_path / "glee")
    args = SimpleNamespace(mm_vision_tower=tower_name(tmp_path / "glee"), mm_vision_select_layer=-1,
                           mm_vision_select_feature="patch", mm_glee_image_size=64, mm_glee_pooled_tokens=1)
    tower = GleeLlavaVisionTower(args.mm_vision_tower, args, delay_load=True)
    assert not tower.is_loaded and tower.hidden_size == 256 and tower.num_patches == 7
    with pytest.raises(RuntimeError, match="load_model"):
        tower(torch.zeros(1, 3, 64, 64))
    tower.load_model()
    assert tower.is_loaded and tower.dummy_feature.shape == (1, 256)
    assert tower.config.image_size == 64 and tower.image_processor.crop_size["height"] == 64
    pixels = tower.image_processor.preprocess([np.zeros((30, 64, 3), np.uint8)], return_tensors="pt")["pixel_values"]
    feats = tower(pixels)
    assert feats.shape == (1, 7, 256) and tower.last_pixel_embeddings.shape == (1, 256, 16, 16)
    as_list = tower([pixels[0], pixels[0]])
    assert isinstance(as_list, list) and len(as_list) == 2 and as_list[0].shape == (1, 7, 256)
    torch.testing.assert_close(as_list[1], feats)

    # LLaVA binds build_vision_tower in two modules; both are patched, other names fall through
    builder = types.ModuleType("fake_llava_builder")
    arch = types.ModuleType("fake_llava_arch")
    builder.build_vision_tower = arch.build_vision_tower = lambda cfg, **kw: ("clip", cfg.mm_vision_tower)
    sys.modules.update({"fake_llava_builder": builder, "fake_llava_arch": arch})
    try:
        assert register_llava_builder(builder, arch) == ["fake_llava_builder", "fake_llava_arch"]
        assert isinstance(arch.build_vision_tower(args, delay_load=True), GleeLlavaVisionTower)
        assert builder.build_vision_tower(SimpleNamespace(mm_vision_tower="openai/clip")) == ("clip", "openai/clip")
        register_llava_builder(builder)  # idempotent
    finally:
        del sys.modules["fake_llava_builder"], sys.modules["fake_llava_arch"]
    with pytest.raises(ValueError, match="mm_vision_select_feature"):
        GleeLlavaVisionTower(args.mm_vision_tower, SimpleNamespace(mm_vision_select_feature="cls"), delay_load=True)
    with pytest.raises(ValueError, match="neither a folder"):
        GleeLlavaVisionTower("glee:no_such_preset", None, delay_load=True)


def test_tower_is_frozen_and_stays_in_eval(glee_tiny):
    ext = GleeFeatureExtractor(glee_tiny, pooled_tokens_per_side=0)
    wrapper = torch.nn.Sequential(ext)
    wrapper.train()
    assert not ext.glee.training and not any(p.requires_grad for p in ext.parameters())
    x = torch.randn(1, 3, 64, 64, requires_grad=True)
    out = ext(x)
    assert not out.tokens.requires_grad and out.tokens.shape == (1, 6, 256)
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        ext(torch.zeros(3, 64, 64))


def test_image_processor_resizes_longest_side_and_pads():
    proc = GleeImageProcessor.for_size(64)
    image = np.full((30, 120, 3), 255, dtype=np.uint8)
    pixels = proc([image], return_tensors="pt")["pixel_values"]
    assert tuple(pixels.shape) == (1, 3, 64, 64)
    assert proc.resized_size(30, 120) == (16, 64)
    mean, std = np.array(GleeConfig().pixel_mean), np.array(GleeConfig().pixel_std)
    torch.testing.assert_close(pixels[0, :, 0, 0], torch.tensor((255 - mean) / std, dtype=torch.float32))
    assert torch.all(pixels[0, :, 16:, :] == 0)  # zero padding (= the mean colour) below the image
