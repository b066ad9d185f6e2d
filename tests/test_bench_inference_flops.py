"""The inference benchmark's FLOP count must see every matrix product of the fast path."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

from glee.modeling.layers import fused_linear


def _bench_module():
    path = Path(__file__).resolve().parents[1] / "scripts" / "bench_inference.py"
    spec = importlib.util.spec_from_file_location("bench_inference", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_fused_linear_flops_are_counted_like_linear():
    bench = _bench_module()
    x, w, b = torch.randn(2, 50, 256), torch.randn(384, 256), torch.randn(384)
    with torch.no_grad():
        fused_linear(x, w, b)  # first call probes oneDNN (its own small products are not part of the count)
        fused = bench.count_flops(lambda: fused_linear(x, w, b, relu=True))
        plain = bench.count_flops(lambda: torch.nn.functional.linear(x, w, b))
    assert plain == 2 * 100 * 256 * 384 / 1e9
    assert fused == plain
