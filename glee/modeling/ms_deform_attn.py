"""Multi-scale deformable attention (Deformable DETR), pure PyTorch.

The sampling kernel ``ms_deform_attn_core`` is the only piece a faster implementation needs to replace:
``MultiScaleDeformableAttention.kernel`` can be swapped for any function with the same signature.  It stays
the reference; ``GleeModel``'s fast inference modes set ``fast_kernel`` per instance instead (see
``glee.modeling.ms_deform_attn_fast``), which is used in eval mode only.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glee.modeling.layers import fused_linear

DeformKernel = Callable[[Tensor, list[tuple[int, int]], Tensor, Tensor], Tensor]


def ms_deform_attn_core(
    value: Tensor, spatial_shapes: list[tuple[int, int]], sampling_locations: Tensor, attention_weights: Tensor
) -> Tensor:
    """Bilinear sampling of every level at every point, weighted and summed.

    Args:
        value: [N, S, M, D] per-head values of all levels concatenated (S = sum of H_l * W_l).
        spatial_shapes: (H_l, W_l) per level, in the order of ``value``.
        sampling_locations: [N, Lq, M, L, P, 2] normalised (x, y), 0..1 covers the map edges.
        attention_weights: [N, Lq, M, L, P], softmaxed over L * P.
    Returns:
        [N, Lq, M * D].
    Sampling is ``grid_sample`` with zero padding and ``align_corners=False`` (the CUDA op's convention).
    """
    n, _, m, d = value.shape
    _, lq, _, n_levels, n_points, _ = sampling_locations.shape
    value_list = value.split([h * w for h, w in spatial_shapes], dim=1)
    grids = 2 * sampling_locations - 1
    sampled = []
    for level, (h, w) in enumerate(spatial_shapes):
        value_l = value_list[level].flatten(2).transpose(1, 2).reshape(n * m, d, h, w)
        grid_l = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)  # [N*M, Lq, P, 2]
        sampled.append(F.grid_sample(value_l, grid_l, mode="bilinear", padding_mode="zeros", align_corners=False))
    weights = attention_weights.transpose(1, 2).reshape(n * m, 1, lq, n_levels * n_points)
    out = (torch.stack(sampled, dim=-2).flatten(-2) * weights).sum(-1).view(n, m * d, lq)
    return out.transpose(1, 2).contiguous()


class MultiScaleDeformableAttention(nn.Module):
    """``MSDeformAttn``: keys ``sampling_offsets``, ``attention_weights``, ``value_proj``, ``output_proj``."""

    kernel: DeformKernel = staticmethod(ms_deform_attn_core)
    fast_kernel: DeformKernel | None = None

    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} must be divisible by n_heads {n_heads}")
        self.d_model, self.n_levels, self.n_heads, self.n_points = d_model, n_levels, n_heads, n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.constant_(self.sampling_offsets.weight, 0.0)
        thetas = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(self.n_heads, 1, 1, 2)
        grid = grid.repeat(1, self.n_levels, self.n_points, 1)
        for i in range(self.n_points):
            grid[:, :, i, :] *= i + 1
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.view(-1))
        nn.init.constant_(self.attention_weights.weight, 0.0)
        nn.init.constant_(self.attention_weights.bias, 0.0)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.constant_(self.value_proj.bias, 0.0)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.constant_(self.output_proj.bias, 0.0)

    def forward(
        self, query: Tensor, reference_points: Tensor, value_input: Tensor, spatial_shapes: list[tuple[int, int]]
    ) -> Tensor:
        """
        Args:
            query: [N, Lq, C].
            reference_points: [N, Lq, L, 2] (x, y) points or [N, Lq, L, 4] (cx, cy, w, h) boxes, in 0..1.
            value_input: [N, S, C] flattened levels.
            spatial_shapes: (H_l, W_l) of each level of ``value_input``.
        Returns:
            [N, Lq, C].
        """
        return self.attend(query, reference_points, self.project_value(value_input), spatial_shapes)

    def project_value(self, value_input: Tensor) -> Tensor:
        """[N, S, C] -> per-head values [N, S, M, C / M] (split out so that query chunks can share it)."""
        n, s, _ = value_input.shape
        if self.fast_kernel is not None and not self.training:  # bias in the GEMM epilogue (no bias copy)
            return fused_linear(value_input, self.value_proj.weight, self.value_proj.bias).view(n, s, self.n_heads, -1)
        return self.value_proj(value_input).view(n, s, self.n_heads, -1)

    def attend(
        self, query: Tensor, reference_points: Tensor, value: Tensor, spatial_shapes: list[tuple[int, int]]
    ) -> Tensor:
        """Sampling offsets and weights from ``query`` [N, Lq, C], sampling of ``value`` [N, S, M, D], output proj."""
        fast = self.fast_kernel is not None and not self.training
        if fast and hasattr(self.fast_kernel, "attend"):  # fused projection + softmax + sampling, if applicable
            sampled = self.fast_kernel.attend(self, query, reference_points, value, spatial_shapes)
            if sampled is not None:
                return fused_linear(self._output_dtype(sampled), self.output_proj.weight, self.output_proj.bias)
        locations, weights = self.sampling_points(query, reference_points, spatial_shapes)
        # ``kernel`` (class-level staticmethod or per-instance function) is the reference; ``fast_kernel`` is set
        # by GleeModel's fast inference modes and used only in eval mode
        kernel = self.fast_kernel if fast else self.kernel
        out = kernel(value, spatial_shapes, locations, weights)
        return self.output_proj(self._output_dtype(out))

    def attend_memory(
        self, query: Tensor, reference_points: Tensor, memory: Tensor, spatial_shapes: list[tuple[int, int]]
    ) -> Tensor:
        """``attend(query, reference_points, project_value(memory), spatial_shapes)``; [N, Lq, C] -> [N, Lq, C].

        For few queries over a large memory (the object decoder: 300 queries, ~18k tokens) the fast CPU path
        samples the unprojected memory rows and applies ``value_proj`` to the sampled rows only
        (``fast_kernel.attend_rows``); the value projection is linear, so the result is the same up to rounding.
        """
        if self.fast_kernel is not None and not self.training and hasattr(self.fast_kernel, "attend_rows"):
            sampled = self.fast_kernel.attend_rows(self, query, reference_points, memory, spatial_shapes)
            if sampled is not None:
                return self.output_proj(self._output_dtype(sampled))
        return self.attend(query, reference_points, self.project_value(memory), spatial_shapes)

    def sampling_points(
        self, query: Tensor, reference_points: Tensor, spatial_shapes: list[tuple[int, int]]
    ) -> tuple[Tensor, Tensor]:
        """Sampling locations [N, Lq, M, L, P, 2] (normalised x, y) and softmaxed weights [N, Lq, M, L, P]."""
        n, lq, _ = query.shape
        offsets = self.sampling_offsets(query).view(n, lq, self.n_heads, self.n_levels, self.n_points, 2)
        weights = self.attention_weights(query).view(n, lq, self.n_heads, self.n_levels * self.n_points)
        weights = weights.softmax(-1).view(n, lq, self.n_heads, self.n_levels, self.n_points)
        if reference_points.shape[-1] == 2:
            normalizer = torch.tensor([[w, h] for h, w in spatial_shapes], dtype=query.dtype, device=query.device)
            locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        elif reference_points.shape[-1] == 4:
            locations = (
                reference_points[:, :, None, :, None, :2]
                + offsets / self.n_points * reference_points[:, :, None, :, None, 2:] * 0.5
            )
        else:
            raise ValueError(f"reference_points must end in 2 or 4 coordinates, got {reference_points.shape}")
        return locations, weights

    def _output_dtype(self, sampled: Tensor) -> Tensor:
        """Sampled values come back in the values' dtype: bf16 values (the bf16 decoder's value projection)
        under a float32 query stream go back to float32 for ``output_proj`` (autocast, if on, casts itself)."""
        if sampled.dtype != self.output_proj.weight.dtype and not torch.is_autocast_enabled(sampled.device.type):
            return sampled.to(self.output_proj.weight.dtype)
        return sampled
