"""detectron2 ResNet (Lite backbone): bottleneck blocks, FrozenBN, stride in the 3x3 conv.

Keys: ``stem.conv1.{weight, norm.*}``, ``res{2..5}.{i}.{conv1, conv2, conv3, shortcut}.{weight, norm.*}``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from glee.config import ResNetConfig
from glee.modeling.layers import ConvNorm, FrozenBatchNorm2d

_BLOCKS = {50: [3, 4, 6, 3], 101: [3, 4, 23, 3], 152: [3, 8, 36, 3]}


class Bottleneck(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, mid_ch: int, stride: int, groups: int, stride_in_1x1: bool) -> None:
        super().__init__()
        s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.shortcut = (
            ConvNorm(in_ch, out_ch, 1, stride=stride, norm=FrozenBatchNorm2d(out_ch)) if in_ch != out_ch else None
        )
        self.conv1 = ConvNorm(in_ch, mid_ch, 1, stride=s1, norm=FrozenBatchNorm2d(mid_ch), relu=True)
        self.conv2 = ConvNorm(
            mid_ch, mid_ch, 3, stride=s3, padding=1, groups=groups, norm=FrozenBatchNorm2d(mid_ch), relu=True
        )
        self.conv3 = ConvNorm(mid_ch, out_ch, 1, norm=FrozenBatchNorm2d(out_ch))
        for conv in (self.conv1, self.conv2, self.conv3, self.shortcut):
            if conv is not None:
                nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        identity = self.shortcut(x) if self.shortcut is not None else x
        return self.conv3.add_relu(self.conv2(self.conv1(x)), identity)


class Stem(nn.Module):
    def __init__(self, out_ch: int) -> None:
        super().__init__()
        self.conv1 = ConvNorm(3, out_ch, 7, stride=2, padding=3, norm=FrozenBatchNorm2d(out_ch), relu=True)
        nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        return F.max_pool2d(self.conv1(x), kernel_size=3, stride=2, padding=1)


class ResNetBackbone(nn.Module):
    """Returns ``res2..res5`` at strides 4, 8, 16, 32."""

    def __init__(self, cfg: ResNetConfig) -> None:
        super().__init__()
        if cfg.depth not in _BLOCKS:
            raise ValueError(f"ResNet depth {cfg.depth} unsupported; choose from {sorted(_BLOCKS)}")
        self.stem = Stem(cfg.stem_out_channels)
        in_ch = cfg.stem_out_channels
        out_ch = cfg.res2_out_channels
        mid_ch = cfg.num_groups * cfg.width_per_group
        self.out_features = ["res2", "res3", "res4", "res5"]
        self.out_channels: dict[str, int] = {}
        self.out_strides: dict[str, int] = {}
        for stage, (name, n_blocks) in enumerate(zip(self.out_features, _BLOCKS[cfg.depth])):
            blocks = []
            for i in range(n_blocks):
                stride = 2 if (i == 0 and stage > 0) else 1
                blocks.append(Bottleneck(in_ch, out_ch, mid_ch, stride, cfg.num_groups, cfg.stride_in_1x1))
                in_ch = out_ch
            self.add_module(name, nn.Sequential(*blocks))
            self.out_channels[name] = out_ch
            self.out_strides[name] = 4 * 2**stage
            out_ch *= 2
            mid_ch *= 2

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """images [B, 3, H, W] -> {res2: [B, C2, H/4, W/4], ..., res5: [B, C5, H/32, W/32]}."""
        x = self.stem(images)
        out = {}
        for name in self.out_features:
            x = getattr(self, name)(x)
            out[name] = x
        return out
