"""Model-level API: typed outputs, prompts, padding, and clear errors for bad input."""

from __future__ import annotations

import pytest
import torch

from glee import GleeConfig, GleeModel, GleeOutput


def test_category_forward_shapes_and_embeddings(tiny_model):
    image = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        out = tiny_model(image, categories=["person", "car", "dog"])
    assert isinstance(out, GleeOutput)
    q = tiny_model.cfg.num_queries
    assert out.pred_logits.shape == (2, q, 3)
    assert out.pred_boxes.shape == (2, q, 4) and out.pred_scores.shape == (2, q, 1)
    assert out.pred_masks.shape == (2, q, 16, 24)
    assert out.query_embeddings.shape == (2, q, 256) and out.pixel_embeddings.shape == (2, 256, 16, 24)
    assert out.padded_size == (64, 96) and out.mask_stride == 4
    assert len(out.aux_outputs) == tiny_model.cfg.dec_layers
    assert ((out.pred_boxes >= 0) & (out.pred_boxes <= 1)).all()
    # masks are the dot product of the mask embedding of each query with the pixel embedding
    z = tiny_model.predictor.decoder_norm(out.query_embeddings)
    manual = torch.einsum("bqc,bchw->bqhw", tiny_model.predictor.mask_embed(z), out.pixel_embeddings)
    assert torch.allclose(manual, out.pred_masks, atol=1e-5)


def test_precomputed_text_equals_strings(tiny_model):
    image = torch.randn(1, 3, 64, 64)
    cats = tiny_model.encode_categories(["cat", "dog"])
    with torch.no_grad():
        a = tiny_model(image, categories=["cat", "dog"])
        b = tiny_model(image, categories=cats)
        c = tiny_model(image, expressions=["the cat on the left"])
        d = tiny_model(image, expressions=tiny_model.encode_expressions(["the cat on the left"]))
    # equal within the parity tolerance (the fast path may take another but equivalent text route)
    assert torch.allclose(a.pred_logits, b.pred_logits, rtol=1e-4, atol=1e-4)
    assert torch.allclose(c.pred_logits, d.pred_logits, rtol=1e-4, atol=1e-4) and c.pred_logits.shape[-1] == 1


def test_visual_prompts_change_the_prediction(tiny_model):
    image = torch.randn(1, 3, 64, 64)
    mask = torch.zeros(1, 64, 64, dtype=torch.bool)
    mask[:, 10:30, 20:40] = True
    with torch.no_grad():
        plain = tiny_model(image, categories=["object"])
        outs = {t: tiny_model(image, categories=["object"], visual_prompt_masks=mask, visual_prompt_type=t)
                for t in ("box", "point", "scribble", "mask")}
    for t, out in outs.items():
        assert not torch.allclose(out.pred_logits, plain.pred_logits), t
    # point/scribble add the mask to the template image; box/mask do not
    assert torch.equal(outs["box"].pred_logits, outs["mask"].pred_logits)
    assert not torch.equal(outs["box"].pred_logits, outs["point"].pred_logits)


def test_sizes_not_divisible_by_32_are_padded(tiny_model):
    image = torch.randn(1, 3, 50, 70)
    with torch.no_grad():
        out = tiny_model(image, categories=["cat"])
        ref = tiny_model(torch.nn.functional.pad(image, (0, 26, 0, 14)), categories=["cat"])
    assert out.padded_size == (64, 96)
    assert torch.equal(out.pred_logits, ref.pred_logits)


def test_bad_inputs_raise_clear_errors(tiny_model):
    image = torch.randn(1, 3, 64, 64)
    with pytest.raises(ValueError, match="rank 4"):
        tiny_model(image[0], categories=["cat"])
    with pytest.raises(ValueError, match="float"):
        tiny_model((image * 50).to(torch.uint8), categories=["cat"])
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        tiny_model(torch.randn(1, 4, 64, 64), categories=["cat"])
    with pytest.raises(ValueError, match="category list is empty"):
        tiny_model(image, categories=[])
    with pytest.raises(ValueError, match="not one string"):
        tiny_model(image, categories="cat")
    with pytest.raises(ValueError, match="give `categories`"):
        tiny_model(image)
    with pytest.raises(ValueError, match="one per image"):
        tiny_model(torch.randn(2, 3, 64, 64), expressions=["only one"])
    empty = torch.zeros(1, 64, 64, dtype=torch.bool)
    with pytest.raises(ValueError, match="outside the image"):
        tiny_model(image, categories=["object"], visual_prompt_masks=empty)
    with pytest.raises(ValueError, match=r"\[B, H, W\]"):
        tiny_model(image, categories=["object"], visual_prompt_masks=torch.ones(1, 32, 32, dtype=torch.bool))
    with pytest.raises(ValueError, match="visual_prompt_type"):
        tiny_model(image, categories=["object"], visual_prompt_masks=~empty, visual_prompt_type="lasso")


def test_long_expression_is_truncated_with_a_warning(tiny_model):
    with pytest.warns(UserWarning, match="truncated to 75"):
        emb = tiny_model.encode_expressions(["the small red car " * 30])
    assert int(emb.attention_mask.sum()) == 77


def test_teacher_only_when_asked_and_stage1_models_refuse_prompts():
    cfg = GleeConfig.preset("tiny")
    assert not hasattr(GleeModel(cfg), "text_encoder_teacher")
    teacher = GleeModel(cfg, with_teacher=True).text_encoder_teacher
    assert not any(p.requires_grad for p in teacher.parameters())
    stage1 = GleeModel(cfg.replace(visual_prompt=False)).eval()
    assert not hasattr(stage1, "sot_fuser")
    with pytest.raises(ValueError, match="no visual prompter"):
        stage1(torch.randn(1, 3, 64, 64), categories=["object"], visual_prompt_masks=torch.ones(1, 64, 64, dtype=bool))


def test_config_presets_yaml_and_json(fixture_dir, tmp_path):
    cfg = GleeConfig.from_official_yaml(fixture_dir / "tiny_config.yaml")
    tiny = GleeConfig.preset("tiny")
    for name in ("backbone", "resnet", "enc_layers", "dec_layers", "num_queries", "enc_dim_feedforward",
                 "dec_dim_feedforward", "visual_prompt", "deformable_in_features", "total_num_feature_levels"):
        assert getattr(cfg, name) == getattr(tiny, name), name
    lite = GleeConfig.preset("lite")
    assert (lite.num_queries, lite.dec_layers, lite.enc_layers, lite.text.arch) == (300, 9, 6, "clip_teacher")
    assert GleeConfig.preset("pro").mask_feature_stride == 8 and lite.mask_feature_stride == 4
    lite.to_json(tmp_path / "c.json")
    assert GleeConfig.from_json(tmp_path / "c.json") == lite
    with pytest.raises(ValueError, match="unknown preset"):
        GleeConfig.preset("huge")
    with pytest.raises(ValueError, match="unknown GleeConfig fields"):
        GleeConfig.from_dict({"not_a_field": 1})
    (tmp_path / "bad.yaml").write_text("foo: 1\n")
    with pytest.raises(ValueError, match="MODEL"):
        GleeConfig.from_official_yaml(tmp_path / "bad.yaml")
