"""Deformable attention against a naive per-point bilinear reference."""

from __future__ import annotations

import math

import torch

from glee.modeling.ms_deform_attn import MultiScaleDeformableAttention, ms_deform_attn_core


def naive_core(value, shapes, locations, weights):
    """Loop over every query, head, level and point; bilinear with zero padding, pixel centres at +0.5."""
    n, _, m, d = value.shape
    _, lq, _, n_levels, n_points, _ = locations.shape
    out = torch.zeros(n, lq, m, d, dtype=torch.float64)
    starts = [0]
    for h, w in shapes:
        starts.append(starts[-1] + h * w)
    for b in range(n):
        for q in range(lq):
            for head in range(m):
                for lvl, (h, w) in enumerate(shapes):
                    fmap = value[b, starts[lvl] : starts[lvl + 1], head].double().view(h, w, d)
                    for p in range(n_points):
                        x = locations[b, q, head, lvl, p, 0].item() * w - 0.5
                        y = locations[b, q, head, lvl, p, 1].item() * h - 0.5
                        x0, y0 = math.floor(x), math.floor(y)
                        acc = torch.zeros(d, dtype=torch.float64)
                        for yy, xx, wt in ((y0, x0, (1 - (y - y0)) * (1 - (x - x0))),
                                           (y0, x0 + 1, (1 - (y - y0)) * (x - x0)),
                                           (y0 + 1, x0, (y - y0) * (1 - (x - x0))),
                                           (y0 + 1, x0 + 1, (y - y0) * (x - x0))):
                            if 0 <= yy < h and 0 <= xx < w:
                                acc += wt * fmap[yy, xx]
                        out[b, q, head] += weights[b, q, head, lvl, p].item() * acc
    return out.view(n, lq, m * d)


def test_core_matches_naive_including_outside_points_and_one_pixel_levels():
    g = torch.Generator().manual_seed(0)
    shapes = [(5, 7), (3, 2), (1, 1)]
    n, m, d, lq, p = 2, 2, 4, 6, 3
    value = torch.randn(n, sum(h * w for h, w in shapes), m, d, generator=g)
    locations = torch.rand(n, lq, m, len(shapes), p, 2, generator=g) * 1.6 - 0.3  # some outside [0, 1]
    weights = torch.rand(n, lq, m, len(shapes), p, generator=g)
    weights = weights / weights.sum((-1, -2), keepdim=True)
    ours = ms_deform_attn_core(value, shapes, locations, weights)
    ref = naive_core(value, shapes, locations, weights)
    assert torch.allclose(ours.double(), ref, atol=1e-5)


def test_module_box_references_scale_offsets_by_box_size():
    torch.manual_seed(0)
    attn = MultiScaleDeformableAttention(d_model=16, n_levels=2, n_heads=2, n_points=2)
    shapes = [(4, 4), (2, 2)]
    value = torch.randn(1, 20, 16)
    query = torch.randn(1, 3, 16)
    # a zero-size box collapses every sampling point onto the centre, whatever the offsets
    centre = torch.tensor([0.4, 0.6])
    boxes = torch.cat([centre, torch.zeros(2)]).expand(1, 3, 2, 4)
    points = centre.expand(1, 3, 2, 2)
    torch.nn.init.normal_(attn.sampling_offsets.weight)
    box_out = attn(query, boxes, value, shapes)
    attn.sampling_offsets.weight.data.zero_()
    attn.sampling_offsets.bias.data.zero_()
    point_out = attn(query, points, value, shapes)
    assert torch.allclose(box_out, point_out, atol=1e-6)
