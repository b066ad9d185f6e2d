"""Image backbones.  Each returns an ordered ``dict`` of feature maps named as in the official code.

Contract shared by every backbone (``build_backbone`` picks one from a ``GleeConfig``)::

    out_features: list[str]          # e.g. ["res2", "res3", "res4", "res5"] or ["p3", "p4", "p5", "p6"]
    out_channels: dict[str, int]
    out_strides: dict[str, int]
    forward(images: Tensor[B, 3, H, W]) -> dict[str, Tensor[B, C_i, H / s_i, W / s_i]]

State-dict keys equal the official ones below the ``backbone.`` prefix.
"""

from __future__ import annotations

from torch import nn

from glee.config import GleeConfig


def build_backbone(cfg: GleeConfig) -> nn.Module:
    if cfg.backbone == "resnet":
        from glee.modeling.backbones.resnet import ResNetBackbone

        return ResNetBackbone(cfg.resnet)
    if cfg.backbone == "swin":
        from glee.modeling.backbones.swin import SwinBackbone

        return SwinBackbone(cfg.swin)
    if cfg.backbone == "eva02":
        from glee.modeling.backbones.eva02 import Eva02Backbone

        return Eva02Backbone(cfg.eva02)
    if cfg.backbone == "efficientnet_lite0":
        from glee.modeling.backbones.efficientnet import EfficientNetLite0Backbone

        return EfficientNetLite0Backbone(cfg.efficientnet)
    raise ValueError(f"unknown backbone {cfg.backbone!r}; choose resnet, swin, eva02 or efficientnet_lite0")
