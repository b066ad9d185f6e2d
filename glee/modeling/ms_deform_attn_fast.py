"""Fast multi-scale deformable attention kernels (drop-in replacements for ``ms_deform_attn_core``).

Three kernels with the reference's contract ``(value, spatial_shapes, sampling_locations, attention_weights)``:

* ``ms_deform_attn_cpu`` -- a small C kernel (compiled with the system C compiler on first use, about 1 s,
  cached under ``~/.cache/glee/kernels`` or ``$GLEE_CACHE_DIR/kernels``; to build it at install time run
  ``python -c "from glee.modeling.ms_deform_attn_fast import build_cpu_kernel; build_cpu_kernel()"``).
  One pass per (image, query, head): bilinear corners, zero padding and the attention-weighted sum,
  float32 accumulation, float32 or bfloat16 values.  Forward only.
* ``ms_deform_attn_gather`` -- pure PyTorch ops, any device, differentiable: bilinear sampling as one fused
  gather + weighted sum.  Every sampling point contributes four corner rows of a per-head value table,
  weighted by ``attention weight x bilinear weight``, and ``F.embedding_bag(mode="sum", per_sample_weights=...)``
  sums the 4 * L * P rows of each (query, head) in one C++ pass (FBGEMM on CPU).  Each level is zero-padded by
  one pixel so that a point inside ``[-1, W) x [-1, H)`` (pixel units) has four in-table corners and the zero
  border reproduces ``grid_sample``'s ``padding_mode="zeros"``; points further out get weight 0.
* ``ms_deform_attn_triton`` -- CUDA, needs ``triton``.  It could not be run where it was written (no GPU), so
  ``ms_deform_attn_auto`` checks it against the gather kernel on first use and falls back on any mismatch.

``ms_deform_attn_auto`` picks the C kernel on CPU and Triton on CUDA when no gradient is needed, else the
gather kernel.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from glee.modeling.layers import fused_linear
from glee.modeling.ms_deform_attn import DeformKernel, ms_deform_attn_core

DEFAULT_CHUNK = 2048  # queries per gather chunk: 2048 * 8 heads * 64 corners * 8 B ~ 8 MB of indices/weights


def _check_positions(positions: int, spatial_shapes: list[tuple[int, int]], name: str) -> None:
    if positions != sum(h * w for h, w in spatial_shapes):
        raise ValueError(f"{name} has {positions} positions but spatial_shapes {spatial_shapes} cover "
                         f"{sum(h * w for h, w in spatial_shapes)}")


def padded_value_table(value: Tensor, spatial_shapes: list[tuple[int, int]]) -> Tensor:
    """[N, S, M, D] values -> [N, Sp, M, D] with every level zero-padded by one pixel on each side.

    ``Sp = sum((H_l + 2) * (W_l + 2))``.
    """
    n, s, m, d = value.shape
    _check_positions(s, spatial_shapes, "value")
    sizes = [(h + 2) * (w + 2) for h, w in spatial_shapes]
    table = value.new_zeros(n, sum(sizes), m, d)
    start = 0
    for v, (h, w), size in zip(value.split([h * w for h, w in spatial_shapes], 1), spatial_shapes, sizes):
        table[:, start : start + size].view(n, h + 2, w + 2, m, d)[:, 1:-1, 1:-1] = v.view(n, h, w, m, d)
        start += size
    return table


@functools.lru_cache(maxsize=64)
def _level_constants(
    spatial_shapes: tuple[tuple[int, int], ...], n: int, m: int, device: torch.device, index_dtype: torch.dtype
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-level half sizes [L, 1] (float, W/2 and H/2), corner offsets [L, 1, 4] and row bases [N, 1, M, L, 1]."""
    nl = len(spatial_shapes)
    half_w = torch.tensor([w / 2 for _, w in spatial_shapes], dtype=torch.float32, device=device).view(nl, 1)
    half_h = torch.tensor([h / 2 for h, _ in spatial_shapes], dtype=torch.float32, device=device).view(nl, 1)
    sizes = [(h + 2) * (w + 2) for h, w in spatial_shapes]
    sp = sum(sizes)
    starts = [sum(sizes[:i]) for i in range(nl)]
    # table row of (n, padded position p, head m) is (n * Sp + p) * M + m
    row_stride = torch.tensor([(w + 2) * m for _, w in spatial_shapes], dtype=index_dtype, device=device)
    corner = torch.stack([torch.zeros_like(row_stride), torch.full_like(row_stride, m), row_stride,
                          row_stride + m], -1).view(nl, 1, 4)
    base = (
        (torch.arange(n, dtype=index_dtype, device=device).view(n, 1, 1, 1, 1) * sp
         + torch.tensor(starts, dtype=index_dtype, device=device).view(1, 1, 1, nl, 1)) * m
        + torch.arange(m, dtype=index_dtype, device=device).view(1, 1, m, 1, 1)
    )
    return half_w, half_h, corner, base


def _corners(
    loc: Tensor, weights: Tensor, spatial_shapes: tuple[tuple[int, int], ...], m: int, index_dtype: torch.dtype,
    row_width: Tensor,
) -> tuple[Tensor, Tensor]:
    """Corner rows and weights of one query chunk.

    loc [N, q, M, L, P, 2] normalised (x, y); weights [N, q, M, L, P] -> (rows, w), both [N * q * M, L * P * 4].
    ``row_width`` [L, 1] holds ``W_l + 2`` in the index dtype.
    """
    n, q = loc.shape[:2]
    half_w, half_h, corner, base = _level_constants(spatial_shapes, n, m, loc.device, index_dtype)
    loc = loc.float()
    # grid_sample(align_corners=False) unnormalisation of the grid 2 * loc - 1, in pixel units
    g = 2 * loc - 1
    x = (g[..., 0] + 1) * half_w - 0.5
    y = (g[..., 1] + 1) * half_h - 0.5
    # inside [-1, W) x [-1, H) at least one corner is on the map; further out every corner is zero padding
    inside = (x >= -1) & (x < 2 * half_w) & (y >= -1) & (y < 2 * half_h)
    x0 = x.floor()
    y0 = y.floor()
    fx = x - x0
    fy = y - y0
    a = torch.where(inside, weights.float(), 0.0)
    # padded coordinates of the top-left corner: (y0 + 1, x0 + 1), clamped so outside points index a valid row
    px = torch.where(inside, x0 + 1, 0.0).to(index_dtype)
    py = torch.where(inside, y0 + 1, 0.0).to(index_dtype)
    top_left = base + (py * row_width + px) * m  # [N, q, M, L, P]
    rows = (top_left.unsqueeze(-1) + corner.view(1, 1, 1, *corner.shape[:1], 1, 4)).view(n * q * m, -1)
    ay1 = a * fy
    ay = torch.stack([a - ay1, ay1], -1)  # [..., 2] (top, bottom)
    bx = torch.stack([1 - fx, fx], -1)  # [..., 2] (left, right)
    w = (ay.unsqueeze(-1) * bx.unsqueeze(-2)).view(n * q * m, -1)  # corners ordered tl, tr, bl, br
    return rows, w


def ms_deform_attn_gather(
    value: Tensor,
    spatial_shapes: list[tuple[int, int]],
    sampling_locations: Tensor,
    attention_weights: Tensor,
    chunk: int = DEFAULT_CHUNK,
) -> Tensor:
    """Same contract as ``ms_deform_attn_core``; bilinear sampling as a fused ``embedding_bag`` gather.

    Args:
        value: [N, S, M, D] per-head values of all levels (any float dtype; the output has its dtype).
        spatial_shapes: (H_l, W_l) per level.
        sampling_locations: [N, Lq, M, L, P, 2] normalised (x, y).
        attention_weights: [N, Lq, M, L, P].
        chunk: queries per gather pass (memory / cache trade-off; any value gives the same result).
    Returns:
        [N, Lq, M * D].
    """
    n, _, m, d = value.shape
    lq, nl = sampling_locations.shape[1], sampling_locations.shape[3]
    if nl != len(spatial_shapes):
        raise ValueError(f"sampling_locations has {nl} levels but spatial_shapes has {len(spatial_shapes)}")
    shapes = tuple((int(h), int(w)) for h, w in spatial_shapes)
    table = padded_value_table(value, list(shapes))
    index_dtype = torch.int32 if table.shape[0] * table.shape[1] * m < 2**31 - 1 else torch.int64
    table = table.view(-1, d)
    row_width = torch.tensor([w + 2 for _, w in shapes], dtype=index_dtype, device=value.device).view(nl, 1)
    out = value.new_empty(n, lq, m * d)
    for i in range(0, lq, chunk):
        rows, w = _corners(sampling_locations[:, i : i + chunk], attention_weights[:, i : i + chunk], shapes, m,
                           index_dtype, row_width)
        sampled = F.embedding_bag(rows, table, per_sample_weights=w.to(table.dtype), mode="sum")
        out[:, i : i + chunk] = sampled.view(n, -1, m * d)
    return out


# ---------------------------------------------------------------------------------------------------- CPU (C kernel)
# One pass per (image, query, head): unnormalise each point as grid_sample does, skip corners off the map (zero
# padding), accumulate attention x bilinear weight x value row in float32.  Plain C (no torch headers), so it
# compiles in about a second with the system C compiler on first use and is cached; it is called through ctypes
# (which releases the GIL).  bf16 values are read and written as raw 16-bit patterns.
_C_SOURCE = r"""
#include <stdint.h>
#include <string.h>
#include <math.h>

static inline float bf16_to_f32(uint16_t v) { uint32_t u = ((uint32_t)v) << 16; float f; memcpy(&f, &u, 4); return f; }
static inline uint16_t f32_to_bf16(float f) {
  uint32_t u; memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}
#define ID(x) (x)
#define DEFINE_KERNEL(NAME, VT, LOAD, STORE)                                                                   \
static inline void NAME##_point(const VT* __restrict__ vbase, int64_t H, int64_t W, int64_t rowstep, int64_t D, \
                                float lx, float ly, float a, float* __restrict__ acc, float* ws) {             \
  const float x = (2.f * lx - 1.f + 1.f) * ((float)W * 0.5f) - 0.5f;                                          \
  const float y = (2.f * ly - 1.f + 1.f) * ((float)H * 0.5f) - 0.5f;                                          \
  if (!(x > -1.f && y > -1.f && x < (float)W && y < (float)H)) return;                                       \
  const float x0f = floorf(x), y0f = floorf(y);                                                              \
  const int64_t x0 = (int64_t)x0f, y0 = (int64_t)y0f;                                                        \
  const float fx = x - x0f, fy = y - y0f;                                                                    \
  const float w[4] = {(1.f - fx) * (1.f - fy) * a, fx * (1.f - fy) * a, (1.f - fx) * fy * a, fx * fy * a};      \
  for (int c = 0; c < 4; ++c) {                                                                              \
    const int64_t xc = x0 + (c & 1), yc = y0 + (c >> 1);                                                     \
    if (xc < 0 || xc >= W || yc < 0 || yc >= H) continue;                                                    \
    const VT* __restrict__ row = vbase + (yc * W + xc) * rowstep;                                            \
    const float wc = w[c];                                                                                   \
    if (ws) *ws += wc;  /* the summed on-map weight, when the caller wants it (NULL: a constant, inlined away) */ \
    for (int64_t d = 0; d < D; ++d) acc[d] += wc * LOAD(row[d]);                                             \
  }                                                                                                          \
}                                                                                                            \
void NAME(const VT* value, const float* loc, const float* attn, VT* out, const int64_t* shapes,              \
          const int64_t* starts, int64_t N, int64_t S, int64_t M, int64_t D, int64_t Q, int64_t L, int64_t P,  \
          int nthreads) {                                                                                    \
  _Pragma("omp parallel for num_threads(nthreads) schedule(guided)")                                         \
  for (int64_t nq = 0; nq < N * Q; ++nq) {                                                                   \
    float acc[256];                                                                                          \
    const int64_t n = nq / Q;                                                                                \
    for (int64_t m = 0; m < M; ++m) {                                                                        \
      for (int64_t d = 0; d < D; ++d) acc[d] = 0.f;                                                          \
      const int64_t pbase = (nq * M + m) * L * P;                                                            \
      for (int64_t l = 0; l < L; ++l) {                                                                      \
        const VT* vbase = value + ((n * S + starts[l]) * M + m) * D;                                         \
        for (int64_t p = 0; p < P; ++p) {                                                                    \
          const int64_t i = pbase + l * P + p;                                                               \
          if (D == 32) NAME##_point(vbase, shapes[2 * l], shapes[2 * l + 1], M * D, 32, loc[2 * i],            \
                                    loc[2 * i + 1], attn[i], acc, NULL);                                     \
          else NAME##_point(vbase, shapes[2 * l], shapes[2 * l + 1], M * D, D, loc[2 * i], loc[2 * i + 1],     \
                            attn[i], acc, NULL);                                                             \
        }                                                                                                    \
      }                                                                                                      \
      VT* o = out + (nq * M + m) * D;                                                                        \
      for (int64_t d = 0; d < D; ++d) o[d] = STORE(acc[d]);                                                  \
    }                                                                                                        \
  }                                                                                                          \
}
DEFINE_KERNEL(glee_msda_f32, float, ID, ID)
DEFINE_KERNEL(glee_msda_bf16, uint16_t, bf16_to_f32, f32_to_bf16)

/* Fused variant for (x, y) reference points: reads the raw projection row of each query -- sampling offsets
   [M, L, P, 2] then attention logits [M, L * P] -- and does the softmax and loc = ref + offset / (W, H) itself. */
#define DEFINE_FUSED(NAME, BASE, VT, STORE)                                                                    \
void NAME(const VT* value, const float* ref, int64_t ref_bstride, const float* proj, int64_t proj_stride,      \
          VT* out, const int64_t* shapes, const int64_t* starts, int64_t N, int64_t S, int64_t M, int64_t D,     \
          int64_t Q, int64_t L, int64_t P, int nthreads) {                                                     \
  _Pragma("omp parallel for num_threads(nthreads) schedule(guided)")                                         \
  for (int64_t nq = 0; nq < N * Q; ++nq) {                                                                   \
    float acc[256], w[64];                                                                                   \
    const int64_t n = nq / Q, q = nq % Q, LP = L * P;                                                        \
    const float* r = ref + n * ref_bstride + q * L * 2;                                                      \
    const float* offs = proj + nq * proj_stride;                                                             \
    const float* logits = offs + M * LP * 2;                                                                 \
    for (int64_t m = 0; m < M; ++m) {                                                                        \
      const float* lg = logits + m * LP;                                                                     \
      float mx = lg[0], sum = 0.f;                                                                           \
      for (int64_t k = 1; k < LP; ++k) mx = lg[k] > mx ? lg[k] : mx;                                         \
      for (int64_t k = 0; k < LP; ++k) { w[k] = expf(lg[k] - mx); sum += w[k]; }                             \
      for (int64_t k = 0; k < LP; ++k) w[k] = w[k] / sum;                                                    \
      for (int64_t d = 0; d < D; ++d) acc[d] = 0.f;                                                          \
      for (int64_t l = 0; l < L; ++l) {                                                                      \
        const int64_t H = shapes[2 * l], W = shapes[2 * l + 1];                                              \
        const VT* vbase = value + ((n * S + starts[l]) * M + m) * D;                                         \
        for (int64_t p = 0; p < P; ++p) {                                                                    \
          const int64_t i = (m * L + l) * P + p;                                                             \
          const float lx = r[2 * l] + offs[2 * i] / (float)W, ly = r[2 * l + 1] + offs[2 * i + 1] / (float)H;   \
          if (D == 32) BASE##_point(vbase, H, W, M * D, 32, lx, ly, w[l * P + p], acc, NULL);                 \
          else BASE##_point(vbase, H, W, M * D, D, lx, ly, w[l * P + p], acc, NULL);                          \
        }                                                                                                    \
      }                                                                                                      \
      VT* o = out + (nq * M + m) * D;                                                                        \
      for (int64_t d = 0; d < D; ++d) o[d] = STORE(acc[d]);                                                  \
    }                                                                                                        \
  }                                                                                                          \
}
DEFINE_FUSED(glee_msda_fused_f32, glee_msda_f32, float, ID)
DEFINE_FUSED(glee_msda_fused_bf16, glee_msda_bf16, uint16_t, f32_to_bf16)

/* bf16 values with D == 32 and L * P <= 64 (the encoder's layout), vectorised: per (query, head) the softmax (a
   polynomial exp, ~1e-7 relative error), the sampling points and their corner rows and weights are computed for
   all L * P points at once in SIMD-friendly loops (off-map corners get weight 0 and a clamped, valid row), then the
   4 * L * P rows are gathered branch-free into two 16-float register accumulators.  Same result as
   glee_msda_fused_bf16 up to float32 rounding, ~1.9x faster (encoder layer at 800 px, one thread). */
typedef float v16f __attribute__((vector_size(64)));
typedef uint32_t v16u __attribute__((vector_size(64)));
typedef uint16_t v16h __attribute__((vector_size(32)));

static inline v16f ld_bf16x16(const uint16_t* p) {
  v16h h; memcpy(&h, p, 32);
  v16u u = __builtin_convertvector(h, v16u) << 16;
  v16f f; memcpy(&f, &u, 64); return f;
}
void glee_msda_fused_bf16_d32(const uint16_t* value, const float* ref, int64_t ref_bstride, const float* proj,
                              int64_t proj_stride, uint16_t* out, const int64_t* shapes, const int64_t* starts,
                              int64_t N, int64_t S, int64_t M, int64_t D, int64_t Q, int64_t L, int64_t P,
                              int nthreads) {
  (void)D;  /* 32; M <= 16 and L * P <= 64 (checked by the caller) */
  const int LP = (int)(L * P);
  const int64_t rowstep = M * 32;
  #pragma omp parallel num_threads(nthreads)
  {
  /* per-point level constants, private to each thread (the vectoriser needs them local) */
  float Wk[64], Hk[64]; int32_t Wik[64], Hik[64], Sk[64];
  for (int k = 0; k < LP; ++k) {
    const int l = k / (int)P;
    Wk[k] = (float)shapes[2 * l + 1]; Hk[k] = (float)shapes[2 * l];
    Wik[k] = (int32_t)shapes[2 * l + 1]; Hik[k] = (int32_t)shapes[2 * l]; Sk[k] = (int32_t)starts[l];
  }
  #pragma omp for schedule(guided)
  for (int64_t nq = 0; nq < N * Q; ++nq) {
    float rx[64], ry[64], e[64], sc[64], w00[16][64], w01[16][64], w10[16][64], w11[16][64];
    int32_t i00[16][64], i01[16][64], i10[16][64], i11[16][64], eb[64];
    const int64_t n = nq / Q, q = nq % Q;
    const float* r = ref + n * ref_bstride + q * L * 2;
    for (int k = 0; k < LP; ++k) { const int l = k / (int)P; rx[k] = r[2 * l]; ry[k] = r[2 * l + 1]; }
    const float* offs = proj + nq * proj_stride;
    const float* logits = offs + M * LP * 2;
    /* pass 1, every head: softmax and points */
    for (int64_t m = 0; m < M; ++m) {
      const float* lg = logits + m * LP;
      const float* of = offs + m * LP * 2;
      float mx = lg[0];
      for (int k = 1; k < LP; ++k) mx = lg[k] > mx ? lg[k] : mx;
      for (int k = 0; k < LP; ++k) {
        float x = lg[k] - mx;
        x = x > -87.f ? x : -87.f;
        const float nf = floorf(x * 1.44269504f + 0.5f);
        const float t = x - nf * 0.693145751953125f - nf * 1.428606765330187e-06f;
        /* exp(x) = 2^nf * exp(t), |t| <= ln2 / 2: degree-6 Taylor polynomial times the exponent bits of 2^nf */
        e[k] = 1.f + t * (1.f + t * (0.5f + t * (0.16666667f + t * (0.041666668f + t * (0.008333334f
                                                                                          + t * 0.0013888889f)))));
        eb[k] = ((int32_t)nf + 127) << 23;
      }
      memcpy(sc, eb, sizeof(float) * LP);
      float sum = 0.f;
      for (int k = 0; k < LP; ++k) e[k] *= sc[k];
      for (int k = 0; k < LP; ++k) sum += e[k];
      const float inv = 1.f / sum;
      /* points: grid_sample's unnormalisation; off-map corners get weight 0 and a clamped (valid) row */
      for (int k = 0; k < LP; ++k) {
        const float W = Wk[k], H = Hk[k];
        const float lx = rx[k] + of[2 * k] / W, ly = ry[k] + of[2 * k + 1] / H;
        float x = (2.f * lx - 1.f + 1.f) * (W * 0.5f) - 0.5f;
        float y = (2.f * ly - 1.f + 1.f) * (H * 0.5f) - 0.5f;
        const int inside = (x > -1.f) & (y > -1.f) & (x < W) & (y < H);
        const float a = inside ? e[k] * inv : 0.f;
        x = x > -2.f ? x : -2.f; x = x < W + 1.f ? x : W + 1.f;
        y = y > -2.f ? y : -2.f; y = y < H + 1.f ? y : H + 1.f;
        const float x0f = floorf(x), y0f = floorf(y);
        const float fx = x - x0f, fy = y - y0f;
        const int32_t x0 = (int32_t)x0f, y0 = (int32_t)y0f, Wi = Wik[k], Hi = Hik[k];
        const float vx0 = x0 >= 0 ? 1.f : 0.f, vx1 = x0 + 1 < Wi ? 1.f : 0.f;
        const float vy0 = y0 >= 0 ? 1.f : 0.f, vy1 = y0 + 1 < Hi ? 1.f : 0.f;
        int32_t cx0 = x0 < 0 ? 0 : x0; cx0 = cx0 > Wi - 1 ? Wi - 1 : cx0;
        int32_t cx1 = x0 + 1 < 0 ? 0 : x0 + 1; cx1 = cx1 > Wi - 1 ? Wi - 1 : cx1;
        int32_t cy0 = y0 < 0 ? 0 : y0; cy0 = cy0 > Hi - 1 ? Hi - 1 : cy0;
        int32_t cy1 = y0 + 1 < 0 ? 0 : y0 + 1; cy1 = cy1 > Hi - 1 ? Hi - 1 : cy1;
        w00[m][k] = (1.f - fx) * (1.f - fy) * a * (vx0 * vy0);
        w01[m][k] = fx * (1.f - fy) * a * (vx1 * vy0);
        w10[m][k] = (1.f - fx) * fy * a * (vx0 * vy1);
        w11[m][k] = fx * fy * a * (vx1 * vy1);
        i00[m][k] = Sk[k] + cy0 * Wi + cx0; i01[m][k] = Sk[k] + cy0 * Wi + cx1;
        i10[m][k] = Sk[k] + cy1 * Wi + cx0; i11[m][k] = Sk[k] + cy1 * Wi + cx1;
      }
    }
    /* pass 2, every head: gather 4 corner rows per point into two accumulator pairs, prefetching the next
       head's rows (cache-latency bound otherwise) */
    for (int64_t m = 0; m < M; ++m) {
      if (m + 1 < M) {
        const uint16_t* vn = value + (n * S * M + m + 1) * 32;
        for (int k = 0; k < LP; ++k) {
          __builtin_prefetch(vn + (int64_t)i00[m + 1][k] * rowstep);
          __builtin_prefetch(vn + (int64_t)i01[m + 1][k] * rowstep);
          __builtin_prefetch(vn + (int64_t)i10[m + 1][k] * rowstep);
          __builtin_prefetch(vn + (int64_t)i11[m + 1][k] * rowstep);
        }
      }
      const uint16_t* vb = value + (n * S * M + m) * 32;
      v16f a0 = {0}, a1 = {0}, b0 = {0}, b1 = {0};
      for (int k = 0; k < LP; ++k) {
        const uint16_t* r00 = vb + (int64_t)i00[m][k] * rowstep;
        const uint16_t* r01 = vb + (int64_t)i01[m][k] * rowstep;
        const uint16_t* r10 = vb + (int64_t)i10[m][k] * rowstep;
        const uint16_t* r11 = vb + (int64_t)i11[m][k] * rowstep;
        a0 += w00[m][k] * ld_bf16x16(r00) + w01[m][k] * ld_bf16x16(r01);
        a1 += w00[m][k] * ld_bf16x16(r00 + 16) + w01[m][k] * ld_bf16x16(r01 + 16);
        b0 += w10[m][k] * ld_bf16x16(r10) + w11[m][k] * ld_bf16x16(r11);
        b1 += w10[m][k] * ld_bf16x16(r10 + 16) + w11[m][k] * ld_bf16x16(r11 + 16);
      }
      a0 += b0; a1 += b1;
      uint16_t* o = out + (nq * M + m) * 32;
      for (int d = 0; d < 16; ++d) { o[d] = f32_to_bf16(a0[d]); o[16 + d] = f32_to_bf16(a1[d]); }
    }
  }
  }
}

/* Sampling of UNPROJECTED rows, for few queries over a large memory (the object decoder): every head samples the
   full C-wide memory row [N, S, C] at its own points; out [N, M, Q, C] holds the weighted sums (float32) and wsum
   [N, M, Q] the summed weight of the on-map corners, so that value_proj can be applied afterwards per head
   (sum_k w_k (W r_k + b) = W (sum_k w_k r_k) + b sum_k w_k; off-map corners are zero padding, not b). */
#define DEFINE_ROWS(NAME, BASE, VT)                                                                            \
void NAME(const VT* table, const float* loc, const float* attn, float* out, float* wsum, const int64_t* shapes,  \
          const int64_t* starts, int64_t N, int64_t S, int64_t M, int64_t C, int64_t Q, int64_t L, int64_t P,  \
          int nthreads) {                                                                                    \
  _Pragma("omp parallel for num_threads(nthreads) schedule(guided)")                                         \
  for (int64_t it = 0; it < N * M * Q; ++it) {                                                               \
    float acc[256], ws = 0.f;                                                                                \
    const int64_t n = it / (M * Q), m = (it / Q) % M, q = it % Q;                                            \
    const int64_t pbase = ((n * Q + q) * M + m) * L * P;                                                     \
    for (int64_t d = 0; d < C; ++d) acc[d] = 0.f;                                                            \
    for (int64_t l = 0; l < L; ++l) {                                                                        \
      const VT* vbase = table + (n * S + starts[l]) * C;                                                     \
      for (int64_t p = 0; p < P; ++p) {                                                                      \
        const int64_t i = pbase + l * P + p;                                                                 \
        if (C == 256) BASE##_point(vbase, shapes[2 * l], shapes[2 * l + 1], 256, 256, loc[2 * i],              \
                                   loc[2 * i + 1], attn[i], acc, &ws);                                       \
        else BASE##_point(vbase, shapes[2 * l], shapes[2 * l + 1], C, C, loc[2 * i], loc[2 * i + 1], attn[i],  \
                          acc, &ws);                                                                         \
      }                                                                                                      \
    }                                                                                                        \
    memcpy(out + it * C, acc, (size_t)C * sizeof(float));                                                    \
    wsum[it] = ws;                                                                                           \
  }                                                                                                          \
}
DEFINE_ROWS(glee_msda_rows_f32, glee_msda_f32, float)
DEFINE_ROWS(glee_msda_rows_bf16, glee_msda_bf16, uint16_t)
"""
_C_MAX_HEAD_DIM = 256  # the kernel's per-head accumulator size


def _cache_dir() -> Path:
    root = os.environ.get("GLEE_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "glee"
    )
    return Path(root) / "kernels"


def _cpu_signature() -> str:
    """CPU identity for the -march=native build (a cache shared between different CPUs must not mix builds)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            lines = [ln for ln in f if ln.startswith(("model name", "flags"))][:2]
        return "".join(lines)
    except OSError:
        return platform.processor() or platform.machine()


def build_cpu_kernel(force: bool = False, verbose: bool = False) -> Path:
    """Compile the C kernel (about 1 s) into the cache folder and return the shared library's path.

    Raises ``RuntimeError`` when no C compiler is found or compilation fails.  Safe under concurrent callers:
    the library is written to a temporary name and renamed into place.
    """
    compiler = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc") or shutil.which("clang")
    if compiler is None:
        raise RuntimeError("no C compiler (gcc/cc/clang) found; the fast CPU deformable-attention kernel needs one "
                           "(the pure-PyTorch gather kernel is used instead)")
    # no errno / FP-trap semantics (the kernels use neither) lets the compiler vectorise floorf and the comparisons
    fp = ["-fno-math-errno", "-fno-trapping-math"]
    attempts = [["-O3", "-march=native", *fp, "-fopenmp"], ["-O3", *fp, "-fopenmp"], ["-O3", *fp]]
    key = hashlib.sha256((_C_SOURCE + _cpu_signature() + compiler + repr(attempts)).encode()).hexdigest()[:16]
    folder = _cache_dir()
    target = folder / f"glee_msda_{key}.so"
    if target.exists() and not force:
        return target
    folder.mkdir(parents=True, exist_ok=True)
    errors = []
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        src = Path(tmp) / "glee_msda.c"
        src.write_text(_C_SOURCE)
        out = Path(tmp) / target.name
        for flags in attempts:
            cmd = [compiler, *flags, "-shared", "-fPIC", "-o", str(out), str(src), "-lm"]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode == 0:
                if verbose:
                    print(" ".join(cmd))
                os.replace(out, target)
                return target
            errors.append(f"{' '.join(cmd)}:\n{res.stderr[-2000:]}")
    raise RuntimeError("could not compile the CPU deformable-attention kernel:\n" + "\n".join(errors))


@functools.lru_cache(maxsize=1)
def _cpu_library() -> ctypes.CDLL | None:
    """The compiled kernel, building it on first use; None (with one warning) when that is impossible."""
    if os.environ.get("GLEE_MSDA_C_KERNEL", "1") == "0":
        return None
    try:
        lib = ctypes.CDLL(str(build_cpu_kernel()))
    except (RuntimeError, OSError) as err:
        warnings.warn(f"{err}; falling back to ms_deform_attn_gather", stacklevel=3)
        return None
    ptr, i64 = ctypes.c_void_p, ctypes.c_int64
    for fn in (lib.glee_msda_f32, lib.glee_msda_bf16):
        fn.argtypes = [ptr] * 6 + [i64] * 7 + [ctypes.c_int]
        fn.restype = None
    for fn in (lib.glee_msda_fused_f32, lib.glee_msda_fused_bf16, lib.glee_msda_fused_bf16_d32):
        fn.argtypes = [ptr, ptr, i64, ptr, i64, ptr, ptr, ptr] + [i64] * 7 + [ctypes.c_int]
        fn.restype = None
    for fn in (lib.glee_msda_rows_f32, lib.glee_msda_rows_bf16):
        fn.argtypes = [ptr] * 7 + [i64] * 7 + [ctypes.c_int]
        fn.restype = None
    return lib


def _kernel_table(table: Tensor) -> Tensor:
    """``table`` as the C kernels read it: contiguous float32 or bfloat16 (other dtypes through float32)."""
    if table.dtype not in (torch.float32, torch.bfloat16):
        table = table.float()
    return table.contiguous()


def _level_tables(spatial_shapes: list[tuple[int, int]]) -> tuple[Tensor, Tensor]:
    """The C kernels' int64 level tables: (H, W) of each level, flattened, and each level's first position."""
    shapes = torch.tensor([int(v) for hw in spatial_shapes for v in hw], dtype=torch.int64)
    starts = torch.tensor([0] + [int(h) * int(w) for h, w in spatial_shapes][:-1], dtype=torch.int64).cumsum(0)
    return shapes, starts


def _sampling_inputs(sampling_locations: Tensor, attention_weights: Tensor) -> tuple[Tensor, Tensor]:
    """Locations and weights as the C kernels read them: detached contiguous float32."""
    return (sampling_locations.detach().to(torch.float32).contiguous(),
            attention_weights.detach().to(torch.float32).contiguous())


def cpu_kernel_available() -> bool:
    """True when the C kernel is (or can be) built and loaded on this machine."""
    return _cpu_library() is not None


def ms_deform_attn_cpu(
    value: Tensor, spatial_shapes: list[tuple[int, int]], sampling_locations: Tensor, attention_weights: Tensor
) -> Tensor:
    """C kernel on CPU tensors, same contract as ``ms_deform_attn_core``; forward only (no autograd).

    float32 and bfloat16 values are computed natively (float32 accumulation); other dtypes go through float32.
    """
    lib = _cpu_library()
    if lib is None:
        raise RuntimeError("the CPU deformable-attention C kernel is unavailable; use ms_deform_attn_gather")
    if value.device.type != "cpu":
        raise ValueError(f"ms_deform_attn_cpu needs CPU tensors, got {value.device}")
    n, s, m, d = value.shape
    _, lq, m2, nl, npts, two = sampling_locations.shape
    if (m2, two) != (m, 2) or nl != len(spatial_shapes) or attention_weights.shape != sampling_locations.shape[:-1]:
        raise ValueError(f"inconsistent shapes: value {tuple(value.shape)}, locations "
                         f"{tuple(sampling_locations.shape)}, weights {tuple(attention_weights.shape)}, "
                         f"{len(spatial_shapes)} levels")
    _check_positions(s, spatial_shapes, "value")
    if d > _C_MAX_HEAD_DIM:
        return ms_deform_attn_gather(value, spatial_shapes, sampling_locations, attention_weights)
    out_dtype = value.dtype
    value = _kernel_table(value)
    loc, attn = _sampling_inputs(sampling_locations, attention_weights)
    shapes, starts = _level_tables(spatial_shapes)
    out = value.new_empty(n, lq, m * d)
    fn = lib.glee_msda_f32 if value.dtype == torch.float32 else lib.glee_msda_bf16
    fn(value.data_ptr(), loc.data_ptr(), attn.data_ptr(), out.data_ptr(), shapes.data_ptr(), starts.data_ptr(),
       n, s, m, d, lq, nl, npts, torch.get_num_threads())
    return out.to(out_dtype)


def ms_deform_attn_rows_cpu(
    memory: Tensor, spatial_shapes: list[tuple[int, int]], sampling_locations: Tensor, attention_weights: Tensor
) -> tuple[Tensor, Tensor]:
    """Deformable sampling of the unprojected memory: each head samples whole C-wide rows (C kernel, forward only).

    ``ms_deform_attn_core(value_proj(memory))`` equals ``value_proj`` applied per head to ``sampled`` with the bias
    scaled by ``weight_sum`` (see ``project_sampled_rows``): for a few hundred queries over ~18k memory tokens
    that replaces the projection of every token by one of the Q * M sampled rows.

    Args:
        memory: [N, S, C] float32 or bfloat16 (C <= 256).
        sampling_locations: [N, Lq, M, L, P, 2] normalised (x, y); attention_weights: [N, Lq, M, L, P].
    Returns:
        sampled [N, M, Lq, C] float32 (attention x bilinear weighted row sums) and weight_sum [N, M, Lq] float32
        (the summed weight of the on-map corners).
    """
    lib = _cpu_library()
    if lib is None:
        raise RuntimeError("the CPU deformable-attention C kernel is unavailable")
    if memory.device.type != "cpu" or memory.dim() != 3:
        raise ValueError(f"memory must be a CPU tensor [N, S, C], got {tuple(memory.shape)} on {memory.device}")
    n, s, c = memory.shape
    _, lq, m, nl, npts, two = sampling_locations.shape
    if (two != 2 or nl != len(spatial_shapes) or attention_weights.shape != sampling_locations.shape[:-1]
            or sampling_locations.shape[0] != n or c > _C_MAX_HEAD_DIM):
        raise ValueError(f"inconsistent shapes: memory {tuple(memory.shape)}, locations "
                         f"{tuple(sampling_locations.shape)}, weights {tuple(attention_weights.shape)}, "
                         f"{len(spatial_shapes)} levels (C at most {_C_MAX_HEAD_DIM})")
    _check_positions(s, spatial_shapes, "memory")
    memory = _kernel_table(memory)
    loc, attn = _sampling_inputs(sampling_locations, attention_weights)
    shapes, starts = _level_tables(spatial_shapes)
    sampled = torch.empty(n, m, lq, c, dtype=torch.float32)
    weight_sum = torch.empty(n, m, lq, dtype=torch.float32)
    fn = lib.glee_msda_rows_f32 if memory.dtype == torch.float32 else lib.glee_msda_rows_bf16
    fn(memory.data_ptr(), loc.data_ptr(), attn.data_ptr(), sampled.data_ptr(), weight_sum.data_ptr(),
       shapes.data_ptr(), starts.data_ptr(), n, s, m, c, lq, nl, npts, torch.get_num_threads())
    return sampled, weight_sum


def project_sampled_rows(sampled: Tensor, weight_sum: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """Per-head ``value_proj`` of sampled memory rows: [N, M, Lq, C], [N, M, Lq] -> [N, Lq, M * D] (float32).

    Head ``m`` owns rows ``m * D .. (m + 1) * D`` of the [M * D, C] weight; its bias counts once per unit of
    on-map sampling weight.
    """
    n, m, lq, c = sampled.shape
    w = weight.detach().float().view(1, m, -1, c)  # [1, M, D, C]
    out = torch.matmul(sampled, w.transpose(-1, -2))  # [N, M, Lq, D]
    if bias is not None:
        out = out + weight_sum.unsqueeze(-1) * bias.detach().float().view(1, m, 1, -1)
    return out.permute(0, 2, 1, 3).reshape(n, lq, -1)


def attend_rows_cpu(
    module: torch.nn.Module, query: Tensor, reference_points: Tensor, memory: Tensor,
    spatial_shapes: list[tuple[int, int]],
) -> Tensor | None:
    """``MultiScaleDeformableAttention.attend(query, refs, project_value(memory))`` up to ``output_proj``, sampling
    the unprojected memory rows (``ms_deform_attn_rows_cpu``) and projecting the Q * M sampled rows instead of
    all S memory tokens.  Returns None where it does not apply (non-CPU tensors, autograd, no C kernel, C > 256).
    """
    if (query.device.type != "cpu" or memory.shape[-1] > _C_MAX_HEAD_DIM or _cpu_library() is None
            or (torch.is_grad_enabled() and (query.requires_grad or memory.requires_grad
                                             or module.value_proj.weight.requires_grad))):
        return None
    locations, weights = module.sampling_points(query, reference_points, spatial_shapes)
    sampled, weight_sum = ms_deform_attn_rows_cpu(memory, spatial_shapes, locations, weights)
    return project_sampled_rows(sampled, weight_sum, module.value_proj.weight, module.value_proj.bias)


def _vectorised_bf16_kernel() -> bool:
    """Whether the fused bf16 path uses the vectorised D = 32 kernel (default; ``GLEE_MSDA_VECTORISED=0``: the
    scalar one, e.g. to compare)."""
    return os.environ.get("GLEE_MSDA_VECTORISED", "1") != "0"


def _fused_projection(module: torch.nn.Module) -> tuple[Tensor, Tensor]:
    """``sampling_offsets`` and ``attention_weights`` stacked into one linear layer (cached per weights)."""
    tensors = (module.sampling_offsets.weight, module.sampling_offsets.bias, module.attention_weights.weight,
               module.attention_weights.bias)
    key = tuple((t.data_ptr(), t._version, t.dtype) for t in tensors)
    cached = module.__dict__.get("_fused_projection_cache")
    if cached is None or cached[0] != key:
        with torch.no_grad():
            cached = (key, torch.cat([tensors[0], tensors[2]]), torch.cat([tensors[1], tensors[3]]))
        module.__dict__["_fused_projection_cache"] = cached
    return cached[1], cached[2]


def attend_fused_cpu(
    module: torch.nn.Module, query: Tensor, reference_points: Tensor, value: Tensor,
    spatial_shapes: list[tuple[int, int]],
) -> Tensor | None:
    """``MultiScaleDeformableAttention.attend`` up to ``output_proj``, with the softmax and the sampling locations
    computed inside the C kernel.  Returns None where it does not apply (box references, non-CPU tensors,
    autograd, no C kernel), and the caller then takes the generic path.

    One linear layer gives offsets and attention logits together; per (image, query, head) the kernel applies
    the softmax over L * P, ``loc = ref + offset / (W_l, H_l)`` (the reference's float32 ops), and samples.
    """
    m, nl, npts = module.n_heads, module.n_levels, module.n_points
    if (reference_points.shape[-1] != 2 or query.device.type != "cpu" or value.shape[-1] > _C_MAX_HEAD_DIM
            or nl * npts > 64 or len(spatial_shapes) != nl):
        return None
    if torch.is_grad_enabled() and (query.requires_grad or value.requires_grad or reference_points.requires_grad
                                    or module.sampling_offsets.weight.requires_grad):
        return None
    lib = _cpu_library()
    if lib is None:
        return None
    n, lq, _ = query.shape
    s = value.shape[1]
    if s != sum(h * w for h, w in spatial_shapes) or reference_points.shape[-2] != nl:
        raise ValueError(f"inconsistent shapes: value {tuple(value.shape)}, references "
                         f"{tuple(reference_points.shape)}, spatial_shapes {spatial_shapes}")
    weight, bias = _fused_projection(module)
    proj = fused_linear(query, weight.to(query.dtype), bias.to(query.dtype)).float().contiguous()
    ref = reference_points.detach().float()
    if ref.shape[0] == 1 and n > 1:
        ref = ref.expand(n, -1, -1, -1)
    if tuple(ref.stride()[1:]) != (nl * 2, 2, 1):
        ref = ref.contiguous()
    ref_bstride = ref.stride(0) if n > 1 else 0
    out_dtype = value.dtype
    value = _kernel_table(value)
    d = value.shape[-1]
    shapes, starts = _level_tables(spatial_shapes)
    out = value.new_empty(n, lq, m * d)
    if value.dtype == torch.float32:
        fn = lib.glee_msda_fused_f32
    else:
        vectorised = d == 32 and m <= 16 and _vectorised_bf16_kernel()  # its per-head arrays hold 16 heads
        fn = lib.glee_msda_fused_bf16_d32 if vectorised else lib.glee_msda_fused_bf16
    fn(value.data_ptr(), ref.data_ptr(), ref_bstride, proj.data_ptr(), proj.shape[-1], out.data_ptr(),
       shapes.data_ptr(), starts.data_ptr(), n, s, m, d, lq, nl, npts, torch.get_num_threads())
    return out.to(out_dtype)


# ---------------------------------------------------------------------------------------------------- GPU (Triton)
try:  # pragma: no cover - exercised only where triton and a GPU exist
    import triton
    import triton.language as tl

    _HAS_TRITON = True
except ImportError:  # the CPU build of torch ships without triton
    _HAS_TRITON = False

if _HAS_TRITON:  # pragma: no cover

    @triton.jit
    def _msda_fwd_kernel(
        table_ptr, loc_ptr, w_ptr, out_ptr, meta_ptr,
        Lq, Sp,
        M: tl.constexpr, D: tl.constexpr, L: tl.constexpr, P: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        # one program per (n, q, m); meta holds per level (H, W, padded start)
        pid = tl.program_id(0)
        m = pid % M
        nq = pid // M
        n = (nq // Lq).to(tl.int64)
        offs_d = tl.arange(0, BLOCK_D)
        dmask = offs_d < D
        acc = tl.zeros([BLOCK_D], dtype=tl.float32)
        for lvl in tl.static_range(L):
            h = tl.load(meta_ptr + 3 * lvl).to(tl.float32)
            w = tl.load(meta_ptr + 3 * lvl + 1).to(tl.float32)
            start = tl.load(meta_ptr + 3 * lvl + 2)
            wi = w.to(tl.int32) + 2
            for p in tl.static_range(P):
                base_lp = (pid * L + lvl) * P + p
                lx = tl.load(loc_ptr + 2 * base_lp).to(tl.float32)
                ly = tl.load(loc_ptr + 2 * base_lp + 1).to(tl.float32)
                a = tl.load(w_ptr + base_lp).to(tl.float32)
                x = (2 * lx - 1 + 1) * (w / 2) - 0.5
                y = (2 * ly - 1 + 1) * (h / 2) - 0.5
                inside = (x >= -1) & (x < w) & (y >= -1) & (y < h)
                x0 = tl.floor(x)
                y0 = tl.floor(y)
                fx = x - x0
                fy = y - y0
                a = tl.where(inside, a, 0.0)
                px = tl.where(inside, x0 + 1, 0.0).to(tl.int32)
                py = tl.where(inside, y0 + 1, 0.0).to(tl.int32)
                row = ((n * Sp + start + py * wi + px) * M + m).to(tl.int64)
                v00 = tl.load(table_ptr + row * D + offs_d, mask=dmask, other=0.0).to(tl.float32)
                v01 = tl.load(table_ptr + (row + M) * D + offs_d, mask=dmask, other=0.0).to(tl.float32)
                v10 = tl.load(table_ptr + (row + wi * M) * D + offs_d, mask=dmask, other=0.0).to(tl.float32)
                v11 = tl.load(table_ptr + (row + wi * M + M) * D + offs_d, mask=dmask, other=0.0).to(tl.float32)
                acc += a * ((1 - fy) * ((1 - fx) * v00 + fx * v01) + fy * ((1 - fx) * v10 + fx * v11))
        tl.store(out_ptr + pid * D + offs_d, acc.to(out_ptr.dtype.element_ty), mask=dmask)


def ms_deform_attn_triton(
    value: Tensor, spatial_shapes: list[tuple[int, int]], sampling_locations: Tensor, attention_weights: Tensor
) -> Tensor:
    """CUDA kernel, same contract as ``ms_deform_attn_core`` (forward only; no autograd)."""
    if not _HAS_TRITON or not value.is_cuda:
        raise RuntimeError("ms_deform_attn_triton needs triton and CUDA tensors; use ms_deform_attn_gather")
    n, _, m, d = value.shape
    lq, nl, npts = sampling_locations.shape[1], sampling_locations.shape[3], sampling_locations.shape[4]
    table = padded_value_table(value, spatial_shapes).contiguous()
    sizes = [(h + 2) * (w + 2) for h, w in spatial_shapes]
    meta = torch.tensor(
        [[h, w, sum(sizes[:i])] for i, (h, w) in enumerate(spatial_shapes)], dtype=torch.int32, device=value.device
    )
    out = value.new_empty(n, lq, m, d)
    grid = (n * lq * m,)
    _msda_fwd_kernel[grid](
        table, sampling_locations.contiguous(), attention_weights.contiguous(), out, meta, lq, table.shape[1],
        M=m, D=d, L=nl, P=npts, BLOCK_D=triton.next_power_of_2(d),
    )
    return out.view(n, lq, m * d)


_TRITON_STATUS: dict[str, bool] = {}


def _triton_usable(device: torch.device) -> bool:
    """Run the Triton kernel once on a small random problem and compare it with the gather kernel."""
    key = str(device)
    if key not in _TRITON_STATUS:
        ok = False
        if _HAS_TRITON and device.type == "cuda":
            try:
                gen = torch.Generator(device="cpu").manual_seed(0)
                shapes = [(7, 9), (4, 5), (1, 1)]
                s = sum(h * w for h, w in shapes)
                value = torch.randn(2, s, 4, 16, generator=gen).to(device)
                loc = (torch.rand(2, 11, 4, 3, 2, 2, generator=gen) * 1.4 - 0.2).to(device)
                wts = torch.rand(2, 11, 4, 3, 2, generator=gen).to(device)
                ref = ms_deform_attn_gather(value, shapes, loc, wts)
                ok = torch.allclose(ms_deform_attn_triton(value, shapes, loc, wts), ref, atol=1e-4, rtol=1e-4)
            except Exception as err:  # noqa: BLE001 - any failure means "do not use it"
                warnings.warn(f"Triton deformable-attention kernel unusable ({err}); using the gather kernel",
                              stacklevel=2)
        _TRITON_STATUS[key] = ok
    return _TRITON_STATUS[key]


def ms_deform_attn_auto(
    value: Tensor, spatial_shapes: list[tuple[int, int]], sampling_locations: Tensor, attention_weights: Tensor
) -> Tensor:
    """Fastest usable kernel for the tensors' device: C (CPU) or Triton (CUDA) without autograd, else gather."""
    needs_grad = torch.is_grad_enabled() and (
        value.requires_grad or sampling_locations.requires_grad or attention_weights.requires_grad
    )
    if not needs_grad:
        if value.device.type == "cpu" and cpu_kernel_available():
            return ms_deform_attn_cpu(value, spatial_shapes, sampling_locations, attention_weights)
        if value.is_cuda and _triton_usable(value.device):
            return ms_deform_attn_triton(value, spatial_shapes, sampling_locations, attention_weights)
    return ms_deform_attn_gather(value, spatial_shapes, sampling_locations, attention_weights)


# MultiScaleDeformableAttention.attend tries ``fast_kernel.attend`` first (None = not applicable)
ms_deform_attn_auto.attend = attend_fused_cpu  # type: ignore[attr-defined]
# MultiScaleDeformableAttention.attend_memory tries ``fast_kernel.attend_rows`` first (None = not applicable)
ms_deform_attn_auto.attend_rows = attend_rows_cpu  # type: ignore[attr-defined]

KERNELS: dict[str, DeformKernel] = {
    "reference": ms_deform_attn_core,
    "gather": ms_deform_attn_gather,
    "cpu": ms_deform_attn_cpu,
    "triton": ms_deform_attn_triton,
    "auto": ms_deform_attn_auto,
}

