"""Small building blocks shared by GLEE's modules."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them (DETR's FFN head).  Keys: ``layers.{i}``."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims_in, dims_out))

    def forward(self, x: Tensor) -> Tensor:
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < last:
                x = F.relu(x)
        return x


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm with fixed statistics (detectron2 ``FrozenBN``): four buffers, eps 1e-5."""

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features) - eps)

    def forward(self, x: Tensor) -> Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.view(1, -1, 1, 1).to(x.dtype) + shift.view(1, -1, 1, 1).to(x.dtype)


class ConvNorm(nn.Conv2d):
    """detectron2-style ``Conv2d`` with an attached ``norm`` (keys ``weight``, ``bias``?, ``norm.*``)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
        bias: bool = False,
        norm: nn.Module | None = None,
        relu: bool = False,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=bias)
        self.norm = norm
        self.relu = relu

    fast_inference = False  # set by GleeModel.set_inference_mode; used only in eval mode

    def forward(self, x: Tensor) -> Tensor:
        if (self.fast_inference and not self.training and isinstance(self.norm, FrozenBatchNorm2d)
                and not (torch.is_grad_enabled() and self.weight.requires_grad)):
            dtype = self.weight.dtype
            if torch.is_autocast_enabled(x.device.type):  # keep a low-precision copy instead of casting per call
                dtype = torch.get_autocast_dtype(x.device.type)
            weight, bias = self._folded(dtype)
            x = F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)
            return F.relu_(x) if self.relu else x
        x = super().forward(x)
        if self.norm is not None:
            x = self.norm(x)
        return F.relu(x) if self.relu else x

    def _folded(self, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """Conv weight and bias with the frozen BatchNorm folded in (cached until a tensor changes).

        ``norm(conv(x)) = conv(x) * s + t`` with per-channel ``s, t``, so it equals a convolution with weight
        ``W * s`` and bias ``b * s + t``: one pass over the output instead of three.  The weight is kept
        channels-last, the layout the fast path feeds oneDNN.
        """
        norm = self.norm
        tensors = [self.weight, norm.weight, norm.bias, norm.running_mean, norm.running_var]
        if self.bias is not None:
            tensors.append(self.bias)
        key = tuple((t.data_ptr(), t._version, t.dtype) for t in tensors)
        caches = self.__dict__.setdefault("_folded_cache", {})  # dtype -> (key, weight, bias)
        cached = caches.get(dtype)
        if cached is None or cached[0] != key:
            with torch.no_grad():
                scale = norm.weight * (norm.running_var + norm.eps).rsqrt()
                shift = norm.bias - norm.running_mean * scale
                weight = (self.weight * scale.view(-1, 1, 1, 1)).contiguous(memory_format=torch.channels_last)
                bias = shift if self.bias is None else self.bias * scale + shift
            cached = (key, weight.to(dtype), bias.to(dtype))
            caches[dtype] = cached
        return cached[1], cached[2]


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """``log(x / (1 - x))`` with both terms clamped at ``eps`` (DINO's definition)."""
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


_ONEDNN_LINEAR: dict[str, bool] = {}


def _onednn_linear_usable() -> bool:
    """oneDNN's fused linear (``torch.ops.mkldnn._linear_pointwise``) exists and agrees with ``F.linear``."""
    if "ok" not in _ONEDNN_LINEAR:
        ok = False
        if torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise"):
            try:
                gen = torch.Generator().manual_seed(0)
                x, w, b = (torch.randn(*s, generator=gen) for s in ((37, 24), (19, 24), (19,)))
                out = torch.ops.mkldnn._linear_pointwise(x, w, b, "relu", [], "")
                ok = torch.allclose(out, F.relu(F.linear(x, w, b)), atol=1e-5, rtol=1e-5)
            except RuntimeError:
                ok = False
        _ONEDNN_LINEAR["ok"] = ok
    return _ONEDNN_LINEAR["ok"]


def fused_linear(x: Tensor, weight: Tensor, bias: Tensor | None, relu: bool = False) -> Tensor:
    """``F.linear`` (+ ReLU) for the fast inference path.

    On CPU in float32 without autograd it runs oneDNN's linear with the bias and ReLU in the GEMM's epilogue
    (``torch.ops.mkldnn._linear_pointwise``): no extra passes over the output, about 10-35% faster than
    ``addmm`` + ``relu`` for the encoder's K=256 shapes.  Elsewhere, or if that op is missing, plain ``F.linear``.
    """
    if (x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
            and _onednn_linear_usable()):
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "relu" if relu else "none", [], "")
    out = F.linear(x, weight, bias)
    return F.relu(out) if relu else out
