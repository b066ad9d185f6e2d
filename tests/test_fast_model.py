"""The fast inference path gives the reference outputs: text trimming and caching, folded layers, modes."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from glee.config import GleeConfig
from glee.modeling.early_fusion import BiMultiHeadAttention
from glee.modeling.glee_model import GleeModel, GleeOutput
from glee.modeling.layers import ConvNorm, FrozenBatchNorm2d, fused_linear
from glee.modeling.object_decoder import DecoderLayer, DecoderPrompt, trim_prompt_padding
from glee.modeling.threads import single_threaded

NAMES = ["person", "traffic light", "a very long and rather unusual category name", "cat"]
EXPRESSIONS = ["the person on the left", "cat"]


@pytest.fixture(scope="module")
def model() -> GleeModel:
    torch.manual_seed(0)
    m = GleeModel(GleeConfig.preset("tiny")).eval()
    with torch.no_grad():  # spread the deformable sampling points so that some fall off the maps
        for module in m.modules():
            if hasattr(module, "sampling_offsets"):
                module.sampling_offsets.weight.normal_(std=0.3)
    return m


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, 70, 90, generator=torch.Generator().manual_seed(1))  # padded inside to 96x96


def assert_outputs_close(ours: GleeOutput, ref: GleeOutput, atol: float = 1e-4, rtol: float = 1e-4) -> None:
    """The parity tolerance |ours - ref| <= 1e-4 + 1e-4 |ref| on every prediction."""
    for name in ("pred_logits", "pred_scores", "pred_boxes", "pred_masks", "query_embeddings", "pixel_embeddings"):
        torch.testing.assert_close(getattr(ours, name), getattr(ref, name), atol=atol, rtol=rtol, msg=name)
    for a, b in zip(ours.aux_outputs, ref.aux_outputs):
        for k in ("pred_logits", "pred_scores", "pred_boxes"):
            torch.testing.assert_close(a[k], b[k], atol=atol, rtol=rtol)
    for k, v in ref.interm_outputs.items():
        if k == "pred_masks" and ours.interm_outputs[k] is None:
            continue  # the fast modes skip the two-stage masks unless asked (test_interm_masks_...)
        torch.testing.assert_close(ours.interm_outputs[k], v, atol=atol, rtol=rtol)


def run(model: GleeModel, mode: str, *args, **kwargs) -> GleeOutput:
    with torch.no_grad(), model.using_inference_mode(mode):
        model.clear_text_cache()
        return model(*args, **kwargs)


# ------------------------------------------------------------------------------------------------ text
def test_trimmed_category_encoding_equals_full_padding(model):
    with torch.no_grad():
        with model.using_inference_mode("reference"):
            ref = model.encode_categories(NAMES)
        model.clear_text_cache()
        fast = model.encode_categories(NAMES)
    assert ref.input_ids.shape == (4, 77)  # the official PAD_MAX tokenisation is still what is returned
    assert torch.equal(fast.input_ids, ref.input_ids) and torch.equal(fast.attention_mask, ref.attention_mask)
    torch.testing.assert_close(fast.class_embeddings, ref.class_embeddings, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast.fusion_tokens, ref.fusion_tokens, atol=1e-5, rtol=1e-5)


def test_expression_encoding_keeps_every_padded_position_exactly(model):
    with torch.no_grad():
        with model.using_inference_mode("reference"):
            ref = model.encode_expressions(EXPRESSIONS)
        model.clear_text_cache()
        fast = model.encode_expressions(EXPRESSIONS)
    # early fusion reads all 77 positions, padding included: they must be the reference's values
    assert fast.tokens.shape == ref.tokens.shape == (2, 77, model.cfg.dim_proj)
    torch.testing.assert_close(fast.tokens, ref.tokens, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast.grounding_class, ref.grounding_class, atol=1e-5, rtol=1e-5)
    assert torch.equal(fast.attention_mask.cpu(), ref.attention_mask.cpu())


def test_text_cache_hits_misses_and_invalidation():
    torch.manual_seed(0)
    model = GleeModel(GleeConfig.preset("tiny")).eval()
    calls = []
    model.text_encoder.register_forward_hook(lambda mod, args, out: calls.append(args[0].shape))
    longest = model.tokenizer(NAMES, pad_to_max_length=False)[0].shape[1]
    assert 3 < longest < 77
    with torch.no_grad():
        first = model.encode_categories(NAMES)
        assert calls == [(4, longest)]  # one call, trimmed to the longest name (BOS ... EOS)
        again = model.encode_categories(list(reversed(NAMES)) + ["dog"])
        assert calls[1:] == [(1, 3)]  # only the new name is encoded
        torch.testing.assert_close(again.class_embeddings[:4], first.class_embeddings.flip(0), atol=0, rtol=0)
        model.encode_expressions(EXPRESSIONS)
        model.encode_expressions(EXPRESSIONS[:1])
        assert calls[2:] == [(2, 77)]
        model.text_encoder.text_model.final_layer_norm.bias.add_(0.5)  # in-place change: entries are stale
        changed = model.encode_categories(NAMES)
        assert len(calls) == 4
        assert not torch.allclose(changed.class_embeddings, first.class_embeddings)
    model.encode_categories(NAMES)  # gradients enabled: the cache is bypassed
    assert len(calls) == 5
    model.text_cache_size = 2
    with torch.no_grad():
        model.encode_categories(["dog", "bird", "horse"])
    assert [key[1] for key in model._text_cache] == ["bird", "horse"]  # least recently used go first


# ------------------------------------------------------------------------------------------------ forward
@pytest.mark.parametrize("prompt", ["categories", "expressions"])
def test_fast_forward_equals_reference(model, images, prompt):
    kwargs = {"categories": NAMES} if prompt == "categories" else {"expressions": EXPRESSIONS}
    ref = run(model, "reference", images, **kwargs)
    fast = run(model, "fast", images, **kwargs)
    assert_outputs_close(fast, ref)
    with torch.no_grad():  # a cached second call gives the same result
        again = model(images, **kwargs)
    assert_outputs_close(again, fast, atol=1e-6, rtol=0)


def test_fast_forward_equals_reference_with_visual_prompt(model, images):
    masks = torch.zeros(2, 70, 90, dtype=torch.bool)
    masks[0, 10:30, 20:50] = True
    masks[1, 40:60, 5:25] = True
    kwargs = {"categories": ["object"], "visual_prompt_masks": masks, "visual_prompt_type": "box"}
    torch.manual_seed(0)
    ref = run(model, "reference", images, **kwargs)
    torch.manual_seed(0)
    fast = run(model, "fast", images, **kwargs)
    assert_outputs_close(fast, ref)


def test_bf16_mode_runs_close_to_float32(model, images):
    fp32 = run(model, "fast", images, categories=NAMES)
    bf16 = run(model, "fast_bf16", images, categories=NAMES)
    for name in ("pred_logits", "pred_scores", "pred_boxes", "pred_masks", "query_embeddings"):
        out = getattr(bf16, name)
        assert out.dtype == torch.float32 and torch.isfinite(out).all(), name
    # the per-pixel embedding involves no top-k choice, so it can be compared directly (random weights make the
    # query selection itself fragile): bf16 rounding only, a few percent of its scale
    scale = fp32.pixel_embeddings.abs().max()
    assert (bf16.pixel_embeddings - fp32.pixel_embeddings).abs().max() < 0.05 * scale
    assert not torch.equal(bf16.pixel_embeddings, fp32.pixel_embeddings)  # it did run in bf16
    assert model.inference_mode == "fast"


def test_interm_masks_skipped_at_fast_inference_unless_requested(images):
    torch.manual_seed(0)
    model = GleeModel(GleeConfig.preset("tiny")).eval()
    ref = run(model, "reference", images, categories=NAMES)
    assert ref.interm_outputs["pred_masks"] is not None  # reference mode computes what the official code does
    assert run(model, "reference", images, categories=NAMES, interm_masks=False).interm_outputs["pred_masks"] is None
    for mode in ("fast", "fast_bf16"):
        out = run(model, mode, images, categories=NAMES)
        assert out.interm_outputs["pred_masks"] is None, mode
        assert out.interm_outputs["pred_logits"] is not None and out.pred_masks is not None
        asked = run(model, mode, images, categories=NAMES, interm_masks=True)
        masks = asked.interm_outputs["pred_masks"]
        assert masks is not None and masks.dtype == torch.float32 and masks.shape == ref.interm_outputs[
            "pred_masks"].shape
        if mode == "fast":  # asked for, they are the reference's; nothing else changes
            torch.testing.assert_close(masks, ref.interm_outputs["pred_masks"], atol=1e-4, rtol=1e-4)
            assert_outputs_close(asked, ref)
            assert_outputs_close(out, asked, atol=0, rtol=0)
    with torch.no_grad():  # all_layer_masks (training-style outputs) implies them
        out = model(images[:1], categories=NAMES[:2], all_layer_masks=True)
    assert out.interm_outputs["pred_masks"] is not None
    model.train()  # training: always (the losses match them)
    out = model(images[:1], categories=NAMES[:2])
    assert out.interm_outputs["pred_masks"] is not None and out.interm_outputs["pred_masks"].requires_grad


@pytest.mark.parametrize("threads", [1, 4])
def test_blocked_decoder_equals_the_float32_decoder(images, threads):
    """bf16 mode's decoder (query blocks on worker threads, value projection after the sampling, category_embed
    folded into the prompt) computes the same function: run in float32 it equals the float32 fast decoder."""
    from glee.modeling.object_decoder import ObjectDecoder

    torch.manual_seed(0)
    model = GleeModel(GleeConfig.preset("tiny")).eval()
    with torch.no_grad():  # clear gaps between the token scores (torch.rand init gives near-ties in the top-k)
        model.predictor.category_embed.normal_(0.0, 0.0625)
        for module in model.modules():
            if hasattr(module, "sampling_offsets"):
                module.sampling_offsets.weight.normal_(std=0.3)
    captured = {}
    hook = model.predictor.register_forward_pre_hook(
        lambda _, args, kwargs: captured.update(args=args, kwargs=kwargs), with_kwargs=True)
    masks = torch.zeros(2, 70, 90, dtype=torch.bool)
    masks[0, 10:30, 20:50] = True
    masks[1, 40:60, 5:25] = True
    visual = {"categories": ["object"], "visual_prompt_masks": masks, "visual_prompt_type": "box"}
    for prompt in ({"categories": NAMES}, {"expressions": EXPRESSIONS}, visual):  # no / one / per-level token sets
        run(model, "fast", images, **prompt)
        features, mask_features, decoder_prompt = captured["args"][:3]
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            with torch.no_grad():
                plain = model.predictor(features, mask_features, decoder_prompt)
                blocked = model.predictor(features, mask_features, decoder_prompt, value_dtype=torch.bfloat16)
        finally:
            torch.set_num_threads(previous)
        assert isinstance(model.predictor, ObjectDecoder)
        for name in ("pred_logits", "pred_scores", "pred_boxes", "pred_masks", "pred_track_embed"):
            torch.testing.assert_close(getattr(blocked, name), getattr(plain, name), atol=1e-4, rtol=1e-4, msg=name)
        for a, b in zip(blocked.aux_outputs, plain.aux_outputs):
            for k in ("pred_logits", "pred_scores", "pred_boxes"):
                torch.testing.assert_close(a[k], b[k], atol=1e-4, rtol=1e-4)
        assert len(blocked.aux_outputs) == len(plain.aux_outputs) == model.cfg.dec_layers
    hook.remove()


def test_add_upsampled_2x_equals_bilinear_interpolate():
    from glee.modeling.pixel_decoder import add_upsampled_2x_

    gen = torch.Generator().manual_seed(0)
    for b, h, w, c, extra in ((1, 10, 13, 16, 7), (2, 5, 7, 8, 3), (1, 1, 1, 8, 0), (1, 1, 6, 4, 2), (3, 4, 1, 4, 0)):
        sequence = torch.randn(b, h * w + extra, c, generator=gen)  # the map is the first h * w tokens
        tokens = sequence[:, : h * w]
        lateral = torch.randn(b, c, 2 * h, 2 * w, generator=gen).contiguous(memory_format=torch.channels_last)
        up = F.interpolate(tokens.transpose(1, 2).reshape(b, c, h, w), scale_factor=2, mode="bilinear",
                           align_corners=False)
        for rows in (1, 3, 100):
            out = lateral.clone()
            assert add_upsampled_2x_(out, tokens, rows) is out
            torch.testing.assert_close(out, lateral + up, atol=1e-6, rtol=1e-6)
        low = lateral.bfloat16()  # the bf16 mode: float32 tokens added into a bf16 lateral with one rounding
        add_upsampled_2x_(low, tokens)
        torch.testing.assert_close(low.float(), lateral.bfloat16().float() + up, atol=2e-2, rtol=1e-2)
    with pytest.raises(ValueError, match="channels-last"):
        add_upsampled_2x_(torch.zeros(1, 4, 4, 6), torch.zeros(1, 6, 4))


def test_mode_switch_keeps_state_dict_and_training_computes_reference(images):
    torch.manual_seed(0)
    model = GleeModel(GleeConfig.preset("tiny"))
    assert model.inference_mode == "fast"
    keys = list(model.state_dict())
    for mode in ("reference", "fast_bf16", "fast"):
        model.set_inference_mode(mode)
        assert list(model.state_dict()) == keys
    with pytest.raises(ValueError, match="inference mode must be one of"):
        model.set_inference_mode("turbo")
    with model.using_inference_mode("reference"):
        assert model.inference_mode == "reference"
    assert model.inference_mode == "fast"
    # train mode ignores the fast flags: the same random draws give the same outputs in both modes
    model.train()
    outs = []
    for mode in ("reference", "fast"):
        model.set_inference_mode(mode)
        torch.manual_seed(3)
        outs.append(model(images[:1], categories=NAMES[:2]))
    assert_outputs_close(outs[1], outs[0], atol=0, rtol=0)


# ------------------------------------------------------------------------------------------------ pieces
def test_folded_early_fusion_equals_reference_including_the_clamp():
    torch.manual_seed(0)
    attn = BiMultiHeadAttention(v_dim=16, l_dim=16, embed_dim=64, num_heads=4).eval()
    attn.chunk = 5  # several chunks
    v, lang = torch.randn(2, 23, 16), torch.randn(2, 9, 16)
    for scale in (1.0, 3000.0):  # 3000: logits beyond +-50000, so the clamp matters
        lang_s = lang * scale
        with torch.no_grad():
            ref, _ = attn(v * scale, lang_s)
            attn.fast_inference = True
            ours, _ = attn(v * scale, lang_s)
            attn.fast_inference = False
        torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)


def test_folded_frozen_batchnorm_conv_equals_conv_then_norm():
    torch.manual_seed(0)
    conv = ConvNorm(6, 8, 3, padding=1, stride=2, norm=FrozenBatchNorm2d(8), relu=True).eval()
    for name in ("weight", "bias", "running_mean"):
        getattr(conv.norm, name).normal_()
    conv.norm.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 6, 11, 13).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = conv(x)
        conv.fast_inference = True
        torch.testing.assert_close(conv(x), ref, atol=1e-5, rtol=1e-5)
        conv.norm.running_mean.add_(1.0)  # in-place buffer change: the cached fold is recomputed
        fast = conv(x)
        conv.fast_inference = False
        torch.testing.assert_close(fast, conv(x), atol=1e-5, rtol=1e-5)


def test_conv_add_relu_equals_conv_then_add_then_relu():
    """A ResNet block's last convolution + shortcut + ReLU (fused into oneDNN's convolution on the fast path)."""
    torch.manual_seed(0)
    conv = ConvNorm(16, 32, 1, norm=FrozenBatchNorm2d(32)).eval()
    for name in ("weight", "bias", "running_mean"):
        getattr(conv.norm, name).normal_()
    x = torch.randn(1, 16, 9, 14).contiguous(memory_format=torch.channels_last)
    residual = torch.randn(1, 32, 9, 14).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = torch.relu(conv(x) + residual)
        conv.fast_inference = True
        torch.testing.assert_close(conv.add_relu(x, residual), expected, atol=1e-5, rtol=1e-5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = conv.add_relu(x.bfloat16(), residual.bfloat16())
        assert low.dtype == torch.bfloat16
        torch.testing.assert_close(low.float(), expected, atol=0.1, rtol=0.02)
        conv.fast_inference = False
        torch.testing.assert_close(conv.add_relu(x, residual), expected)
    conv.fast_inference = True
    conv.train()  # training: plain ops, differentiable
    conv.weight.requires_grad_(True)
    conv.add_relu(x, residual).sum().backward()
    assert conv.weight.grad is not None


def test_groupnorm_conv_in_bf16_mode_stays_bf16_and_close_to_float32():
    torch.manual_seed(0)
    conv = ConvNorm(8, 64, 3, padding=1, norm=torch.nn.GroupNorm(32, 64), relu=True).eval()
    torch.nn.init.normal_(conv.norm.weight)
    torch.nn.init.normal_(conv.norm.bias)
    x = torch.randn(1, 8, 20, 24).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = conv(x)
        conv.fast_inference = True
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast = conv(x)
        conv.fast_inference = False
    assert fast.dtype == torch.bfloat16  # no round trip through float32
    torch.testing.assert_close(fast.float(), ref, atol=0.06, rtol=0.02)


def test_dropping_prompt_padding_leaves_decoder_outputs_unchanged():
    torch.manual_seed(0)
    layer = DecoderLayer(32, 64, n_levels=2, n_heads=4, n_points=2).eval()
    nq, n_prompt, batch = 5, 12, 2
    shapes = [(4, 4), (2, 2)]
    tgt, pos = torch.randn(nq, batch, 32), torch.randn(nq, batch, 32)
    boxes = torch.rand(nq, batch, 2, 4)
    memory = torch.randn(20, batch, 32)
    tokens = torch.randn(n_prompt, batch, 32)
    padding = torch.zeros(batch, n_prompt, dtype=torch.bool)
    padding[0, 4:] = True  # image 0: 4 valid tokens; image 1: 7 -> columns 7.. are padding in both
    padding[1, 7:] = True
    prompt = trim_prompt_padding(DecoderPrompt(prompt_tokens=[tokens], prompt_padding=[padding]))
    assert prompt.prompt_tokens[0].shape[0] == 7 and prompt.prompt_padding[0].shape == (2, 7)
    with torch.no_grad():
        ref = layer(tgt, pos, boxes, memory, shapes, None, tokens, padding)
        ours = layer(tgt, pos, boxes, memory, shapes, None, prompt.prompt_tokens[0], prompt.prompt_padding[0])
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_compiled_encoder_block_falls_back_to_eager_on_failure(model, images, monkeypatch):
    from glee.modeling import pixel_decoder

    def broken(*args):
        raise RuntimeError("no compiler here")

    monkeypatch.setitem(pixel_decoder._COMPILED, "fn", broken)
    monkeypatch.delitem(pixel_decoder._COMPILED, "failed", raising=False)
    ref = run(model, "fast", images, categories=NAMES)
    model.compile_fast()
    try:
        with pytest.warns(UserWarning, match="running eagerly"):
            out = run(model, "fast", images, categories=NAMES)
        assert pixel_decoder._COMPILED.get("failed")
    finally:
        model.compile_fast(False)
        pixel_decoder._COMPILED.pop("failed", None)
    assert_outputs_close(out, ref, atol=0, rtol=0)


def test_parity_fixture_in_reference_mode(fixture_dir):
    """``test_parity_official`` runs the default (fast) mode; the reference mode must pass as well."""
    from glee.parity import check_fixture, load_fixture_model

    model = load_fixture_model(fixture_dir).set_inference_mode("reference")
    results = [c for c in check_fixture(fixture_dir, model) if not c.note.startswith("skipped")]
    failed = [f"{c.task}/{c.image}/{c.name}: {c.max_abs:.3g}" for c in results if not c.passed]
    assert len(results) >= 200 and not failed, "\n".join(failed)
    assert copy.copy(model.inference_mode) == "reference"


@pytest.mark.parametrize("relu", [False, True])
def test_fused_linear_equals_linear_and_keeps_autograd(relu):
    gen = torch.Generator().manual_seed(3)
    x, w, b = (torch.randn(*shape, generator=gen) for shape in ((3, 70, 256), (96, 256), (96,)))
    expected = torch.nn.functional.linear(x, w, b)
    expected = expected.relu() if relu else expected
    with torch.no_grad():
        torch.testing.assert_close(fused_linear(x, w, b, relu=relu), expected, atol=1e-4, rtol=1e-5)
    w.requires_grad_(True)  # training: must stay differentiable (plain F.linear path)
    out = fused_linear(x, w, b, relu=relu)
    out.sum().backward()
    assert w.grad is not None and w.grad.abs().sum() > 0


@pytest.mark.parametrize("relu", [False, True])
def test_fused_linear_under_bf16_autocast_matches_autocast_linear_and_sees_weight_updates(relu):
    from glee.modeling.layers import _onednn_linear_usable

    if not _onednn_linear_usable(torch.bfloat16):
        pytest.skip("oneDNN bf16 linear not available on this CPU")
    gen = torch.Generator().manual_seed(4)
    x, w, b = (torch.randn(*shape, generator=gen) for shape in ((2, 50, 256), (96, 256), (96,)))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected = torch.nn.functional.linear(x, w, b)
        expected = expected.relu() if relu else expected
        out = fused_linear(x, w, b, relu=relu)
        assert out.dtype == torch.bfloat16
        # same bf16 operands and float32 accumulation: equal up to one bf16 rounding of the output
        torch.testing.assert_close(out.float(), expected.float(), atol=2e-2, rtol=8e-3)
        w.mul_(2.0)  # an in-place update must not be served from the cached bf16 copy
        doubled = torch.nn.functional.linear(x, w, b)
        doubled = doubled.relu() if relu else doubled
        torch.testing.assert_close(fused_linear(x, w, b, relu=relu).float(), doubled.float(), atol=4e-2,
                                   rtol=8e-3)


def test_single_threaded_restores_the_thread_count():
    before = torch.get_num_threads()
    with single_threaded(True):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), single_threaded(True):
        raise RuntimeError("boom")
    assert torch.get_num_threads() == before
