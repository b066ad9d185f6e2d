"""Official-checkpoint loading: manifests of Lite/Plus/Pro, prefixes, strictness, our safetensors format."""

from __future__ import annotations

import json
import re

import pytest
import torch

from glee import GleeConfig, GleeModel
from glee.checkpoint import (
    CheckpointError,
    convert_official_state_dict,
    load_official_checkpoint,
    model_shapes,
    read_state_dict,
    strip_prefixes,
)

ALIAS = re.compile(r"^predictor\.(bbox_embed\.\d+|decoder\.bbox_embed\.\d+|decoder\.norm)\.")


@pytest.mark.parametrize("variant", ["lite", "plus", "pro"])
def test_manifest_state_dict_fills_the_model(variant, fixture_dir):
    manifest = json.loads((fixture_dir / f"manifest_{variant}.json").read_text())
    entries = manifest["state_dict"]
    assert len(entries) == manifest["state_dict_num_keys"]
    with torch.device("meta"):
        model = GleeModel(GleeConfig.preset(variant))
        official = {e["key"]: torch.empty(e["shape"]) for e in entries}
    converted, report = convert_official_state_dict(official, model_shapes(model))
    assert report.unexpected == [] and report.shape_mismatch == [] and report.missing == []
    assert set(converted) == set(model.state_dict())  # every parameter and buffer filled
    # keys dropped on purpose: the teacher tower, tied aliases, and recomputed buffers
    teacher = {k for k in official if k.startswith("text_encoder_teacher.")}
    aliases = {k for k in official if ALIAS.match(k)}
    tied = {e["key"] for e in entries if e.get("tied_to")}
    assert len(teacher) == 196 and len(aliases) == 110
    assert teacher | aliases <= set(report.dropped)
    # every storage-sharing key is dropped as an alias, is the renamed canonical copy, or a model buffer
    buffers = {k for k, _ in model.named_buffers(remove_duplicate=False)}
    assert tied <= set(report.dropped) | set(report.renamed) | buffers
    derived = set(report.dropped) - teacher - aliases
    assert all(("relative_position_index" in k or "freqs_" in k) for k in derived), sorted(derived)[:5]
    assert report.renamed == {k: k.replace("_bbox_embed", "bbox_embed") for k in official if "_bbox_embed" in k}
    total = sum(p.numel() for p in model.parameters())
    assert total == manifest["trainable_parameters"]  # no teacher: total = trainable of the official model


def _tiny_official_sd(model: GleeModel) -> dict[str, torch.Tensor]:
    """Our tiny model's weights under official names (aliases included), as a trainer would save them."""
    sd = {}
    for k, v in model.state_dict().items():
        if k.startswith("predictor.bbox_embed."):
            rest = k[len("predictor.bbox_embed.") :]
            sd[f"predictor._bbox_embed.{rest}"] = v
            for i in range(model.cfg.dec_layers):
                sd[f"predictor.bbox_embed.{i}.{rest}"] = v
                sd[f"predictor.decoder.bbox_embed.{i}.{rest}"] = v
        else:
            sd[k] = v
            if k.startswith("predictor.decoder_norm."):
                sd["predictor.decoder.norm." + k.split(".")[-1]] = v
    return sd


@pytest.mark.parametrize("wrap", ["plain", "glee", "module.glee", "model-dict"])
def test_prefixes_and_wrappers(wrap, tiny_model, tmp_path):
    sd = _tiny_official_sd(tiny_model)
    if wrap == "glee":
        sd = {f"glee.{k}": v for k, v in sd.items()} | {"criterion.empty_weight": torch.tensor([1.0, 0.1])}
    elif wrap == "module.glee":
        sd = {f"module.glee.{k}": v for k, v in sd.items()}
    path = tmp_path / "ckpt.pth"
    torch.save({"model": sd, "iteration": 7} if wrap == "model-dict" else sd, path)
    fresh = GleeModel(GleeConfig.preset("tiny"))
    report = load_official_checkpoint(fresh, path)
    assert report.ok
    for k, v in tiny_model.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k
    if wrap == "glee":
        assert "criterion.empty_weight" in report.dropped


def test_strip_prefixes():
    sd = {"module.glee.backbone.x": 1, "glee.predictor.y": 2, "pixel_decoder.z": 3}
    assert list(strip_prefixes(sd)) == ["backbone.x", "predictor.y", "pixel_decoder.z"]


def test_strict_failures_name_the_keys(tiny_model):
    sd = _tiny_official_sd(tiny_model)
    missing = {k: v for k, v in sd.items() if not k.startswith("sot_fuser.")}
    with pytest.raises(CheckpointError, match=r"missing keys .*\n.*sot_fuser\.refine"):
        load_official_checkpoint(GleeModel(GleeConfig.preset("tiny")), missing)
    extra = dict(sd, **{"predictor.some_new_head.weight": torch.zeros(3)})
    with pytest.raises(CheckpointError, match="unexpected keys.*\n.*some_new_head"):
        load_official_checkpoint(GleeModel(GleeConfig.preset("tiny")), extra)
    wrong = dict(sd, lang_projection=torch.zeros(4, 4))
    with pytest.raises(CheckpointError, match="shape mismatch lang_projection"):
        load_official_checkpoint(GleeModel(GleeConfig.preset("tiny")), wrong)
    # a tied alias that disagrees with its canonical tensor is not silently dropped
    bad_alias = dict(sd)
    bad_alias["predictor.bbox_embed.1.layers.0.bias"] = bad_alias["predictor.bbox_embed.1.layers.0.bias"] + 1
    with pytest.raises(CheckpointError, match="predictor.bbox_embed.1.layers.0.bias"):
        load_official_checkpoint(GleeModel(GleeConfig.preset("tiny")), bad_alias)
    report = load_official_checkpoint(GleeModel(GleeConfig.preset("tiny")), missing, strict=False)
    assert report.missing and not report.ok


class Payload:  # a pickled object: refused by weights_only loading
    pass


def test_unsafe_and_corrupt_files(tmp_path):
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "obj": Payload()}, unsafe)
    with pytest.raises(CheckpointError, match="weights-only"):
        read_state_dict(unsafe)
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00\x01garbage")
    with pytest.raises(CheckpointError, match="safetensors"):
        read_state_dict(corrupt)
    with pytest.raises(FileNotFoundError):
        read_state_dict(tmp_path / "nope.pth")


def test_save_and_from_pretrained_round_trip(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").exists()
    loaded = GleeModel.from_pretrained(tmp_path / "m")
    image = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        a = tiny_model(image, categories=["cat", "dog"])
        b = loaded(image, categories=["cat", "dog"])
    assert torch.equal(a.pred_logits, b.pred_logits) and torch.equal(a.pred_masks, b.pred_masks)
    (tmp_path / "m" / "config.json").write_text(json.dumps({"model_type": "other"}))
    with pytest.raises(CheckpointError, match="model_type"):
        GleeModel.from_pretrained(tmp_path / "m")
