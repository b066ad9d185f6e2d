"""The inference benchmark's FLOP count must see every matrix product of the fast path."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

from glee.modeling.layers import ConvNorm, FrozenBatchNorm2d, fused_linear


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


def test_fused_conv_add_relu_flops_are_counted_like_conv():
    bench = _bench_module()
    conv = ConvNorm(16, 32, 3, padding=1, norm=FrozenBatchNorm2d(32)).eval()
    x = torch.randn(1, 16, 12, 10).contiguous(memory_format=torch.channels_last)
    residual = torch.randn(1, 32, 12, 10).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        plain = bench.count_flops(lambda: conv(x))
        conv.fast_inference = True
        conv.add_relu(x, residual)  # first call probes oneDNN
        fused = bench.count_flops(lambda: conv.add_relu(x, residual))
    assert plain == 2 * 32 * 12 * 10 * 16 * 9 / 1e9
    assert fused == plain


def test_bench_runs_timing_then_memory_calls(tmp_path, capsys):
    """The whole benchmark on the tiny preset: fast equals reference, memory comes from its own calls."""
    import json

    bench = _bench_module()
    out = tmp_path / "bench.json"
    threads = torch.get_num_threads()
    try:
        assert bench.main(["--preset", "tiny", "--size", "64", "--repeats", "1", "--threads", "1",
                           "--no-teacher", "--no-flops", "--json", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    printed = capsys.readouterr().out
    assert printed.index("round 1/1") < printed.index("memory (separate calls")
    results = json.loads(out.read_text())
    for task in ("det", "grounding"):
        modes = results["tasks"][task]
        assert modes["fast"]["parity_excess"] <= 0
        assert len(modes["fast"]["repeat"]) == 2 and len(modes["fast"]["first"]) == 1
        assert len(modes["reference"]["memory_extra_mib"]) == 1
        assert len(modes["fast"]["memory_extra_mib"]) == 2  # first (text cache cleared) and repeated
        assert len(modes["fast_bf16"]["memory_extra_mib"]) == 1
        assert all(m >= 0 for m in modes["reference"]["memory_extra_mib"])
