"""Small building blocks shared by GLEE's modules."""

from __future__ import annotations

import weakref
from collections.abc import Callable

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

    def _folds(self, x: Tensor) -> bool:
        """Whether this call takes the fast path's folded-BatchNorm convolution."""
        return (self.fast_inference and not self.training and isinstance(self.norm, FrozenBatchNorm2d)
                and not (torch.is_grad_enabled() and self.weight.requires_grad))

    def _folded_for(self, x: Tensor) -> tuple[Tensor, Tensor]:
        dtype = self.weight.dtype
        if torch.is_autocast_enabled(x.device.type):  # keep a low-precision copy instead of casting per call
            dtype = torch.get_autocast_dtype(x.device.type)
        return self._folded(dtype)

    def forward(self, x: Tensor) -> Tensor:
        if self._folds(x):
            weight, bias = self._folded_for(x)
            x = F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)
            return F.relu_(x) if self.relu else x
        if (self.fast_inference and not self.training and isinstance(self.norm, nn.GroupNorm)
                and x.device.type == "cpu" and torch.is_autocast_enabled("cpu") and not torch.is_grad_enabled()):
            # bf16 mode: GroupNorm on the conv's bf16 output (float32 statistics inside the kernel) instead of
            # autocast's round trip through float32: two fewer passes over a stride-4 map
            x = super().forward(x)
            with torch.autocast("cpu", enabled=False):
                x = F.group_norm(x, self.norm.num_groups, self.norm.weight, self.norm.bias, self.norm.eps)
            return F.relu_(x) if self.relu else x
        x = super().forward(x)
        if self.norm is not None:
            x = self.norm(x)
        return F.relu(x) if self.relu else x

    def add_relu(self, x: Tensor, residual: Tensor) -> Tensor:
        """``relu(self(x) + residual)`` (a ResNet block's last convolution and its shortcut).

        On the fast CPU path the sum and the ReLU run inside oneDNN's convolution (a binary post-op): one pass
        over the block's output instead of three -- 1.8x (float32) to 4.5x (bf16) faster for the stride-4
        blocks of ResNet-50.  Elsewhere: the plain ops.
        """
        if not self.relu and x.device.type == "cpu" and self._folds(x):
            weight, bias = self._folded_for(x)
            if x.dtype == residual.dtype == weight.dtype and _onednn_conv_add_relu_usable(weight.dtype):
                return torch.ops.mkldnn._convolution_pointwise.binary(
                    x, residual, weight, bias, list(self.padding), list(self.stride), list(self.dilation),
                    self.groups, "add", 1.0, "relu", [], "")
        return F.relu(self(x) + residual)

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


_ONEDNN_PROBES: dict[tuple[str, torch.dtype], bool] = {}


def _onednn_agrees(op: str, dtype: torch.dtype, tol: float, probe: Callable[[], tuple[Tensor, Tensor]]) -> bool:
    """Whether ``torch.ops.mkldnn.<op>`` exists for ``dtype`` and agrees with the plain ops: ``probe()`` returns
    (the op's output, the plain float32 result) on small inputs.  Probed once per (op, dtype)."""
    key = (op, dtype)
    if key not in _ONEDNN_PROBES:
        ok = False
        if torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, op):
            try:
                with torch.autocast("cpu", enabled=False):  # the first call may come from inside autocast
                    out, expected = probe()
                ok = out.dtype == dtype and torch.allclose(out.float(), expected, atol=tol, rtol=tol)
            except RuntimeError:
                ok = False
        _ONEDNN_PROBES[key] = ok
    return _ONEDNN_PROBES[key]


def _onednn_conv_add_relu_usable(dtype: torch.dtype) -> bool:
    """oneDNN's convolution with an add + ReLU post-op exists for ``dtype`` and agrees with the plain ops."""

    def probe() -> tuple[Tensor, Tensor]:
        gen = torch.Generator().manual_seed(0)
        x, w, b = (torch.randn(*s, generator=gen).to(dtype) for s in ((1, 8, 5, 6), (16, 8, 3, 3), (16,)))
        other = torch.randn(1, 16, 5, 6, generator=gen).to(dtype)
        x, w, other = (t.contiguous(memory_format=torch.channels_last) for t in (x, w, other))
        out = torch.ops.mkldnn._convolution_pointwise.binary(
            x, other, w, b, [1, 1], [1, 1], [1, 1], 1, "add", 1.0, "relu", [], "")
        return out, F.relu(F.conv2d(x.float(), w.float(), b.float(), padding=1) + other.float())

    return _onednn_agrees("_convolution_pointwise", dtype, 1e-4 if dtype == torch.float32 else 5e-2, probe)


def _onednn_linear_usable(dtype: torch.dtype = torch.float32) -> bool:
    """oneDNN's fused linear (``torch.ops.mkldnn._linear_pointwise``) exists for ``dtype`` and agrees with
    ``F.linear`` (float32: to 1e-5; bfloat16: to bfloat16 rounding of the float32 product)."""

    def probe() -> tuple[Tensor, Tensor]:
        gen = torch.Generator().manual_seed(0)
        x, w, b = (torch.randn(*s, generator=gen).to(dtype) for s in ((37, 24), (19, 24), (19,)))
        out = torch.ops.mkldnn._linear_pointwise(x, w, b, "relu", [], "")
        return out, F.relu(F.linear(x.float(), w.float(), b.float()))

    return _onednn_agrees("_linear_pointwise", dtype, 1e-5 if dtype == torch.float32 else 2e-2, probe)


# id(weight) -> (weakref to the weight, (data_ptr, version) of weight and bias, low-precision weight, bias)
_LOW_PRECISION: dict[int, tuple[weakref.ref, tuple, Tensor, Tensor | None]] = {}


def _low_precision_copy(weight: Tensor, bias: Tensor | None, dtype: torch.dtype) -> tuple[Tensor, Tensor | None]:
    """``weight`` and ``bias`` in ``dtype``, cast once and kept until the weight is changed or freed (autocast
    would cast them again on every call: for the encoder that is a copy of each weight per token chunk)."""
    key = id(weight)
    # inference tensors (e.g. weights derived inside inference mode) have no version counter
    state = tuple(None if t is None else (t.data_ptr(), -1 if t.is_inference() else t._version)
                  for t in (weight, bias))
    cached = _LOW_PRECISION.get(key)
    if cached is not None and cached[0]() is weight and cached[1] == state and cached[2].dtype == dtype:
        return cached[2], cached[3]
    low_weight = weight.detach().to(dtype)
    low_bias = None if bias is None else bias.detach().to(dtype)
    ref = weakref.ref(weight, lambda _, key=key: _LOW_PRECISION.pop(key, None))
    _LOW_PRECISION[key] = (ref, state, low_weight, low_bias)
    return low_weight, low_bias


def fused_linear(x: Tensor, weight: Tensor, bias: Tensor | None, relu: bool = False) -> Tensor:
    """``F.linear`` (+ ReLU) for the fast inference path.

    On CPU without autograd it runs oneDNN's linear with the bias and ReLU in the GEMM's epilogue
    (``torch.ops.mkldnn._linear_pointwise``): no extra passes over the output, about 10-35% faster than
    ``addmm`` + ``relu`` for the encoder's K=256 shapes.  In float32 that is exact up to summation order; under
    bfloat16 autocast it computes what autocast's ``F.linear`` computes (bf16 operands, float32 accumulation,
    bf16 output) with the weight cast once instead of per call.  Elsewhere, or if the op is missing,
    plain ``F.linear``.
    """
    if x.device.type == "cpu" and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)):
        if torch.is_autocast_enabled("cpu"):
            dtype = torch.get_autocast_dtype("cpu")
            if (dtype == torch.bfloat16 and x.dtype in (torch.float32, dtype) and weight.dtype == torch.float32
                    and _onednn_linear_usable(dtype)):
                low_weight, low_bias = _low_precision_copy(weight, bias, dtype)
                return torch.ops.mkldnn._linear_pointwise(x.to(dtype), low_weight, low_bias,
                                                          "relu" if relu else "none", [], "")
        elif x.dtype == weight.dtype == torch.float32 and _onednn_linear_usable():
            return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "relu" if relu else "none", [], "")
    out = F.linear(x, weight, bias)
    return F.relu(out) if relu else out
