"""The fast deformable-attention kernels equal the reference ``ms_deform_attn_core`` (grid_sample)."""

from __future__ import annotations

import pytest
import torch

from glee.modeling import ms_deform_attn_fast as fast
from glee.modeling.ms_deform_attn import MultiScaleDeformableAttention, ms_deform_attn_core

# (spatial shapes, batch, heads, head dim, queries, points): one-pixel levels, one-row / one-column levels,
# padded batches (N = 2), the Lite head layout (8 x 32) and head dims the C kernel does not specialise
CASES = [
    ([(5, 7), (3, 2), (1, 1)], 2, 2, 4, 6, 3),
    ([(1, 9), (6, 1), (2, 2), (1, 1)], 1, 3, 5, 17, 1),
    ([(12, 17), (6, 9), (3, 5), (2, 3)], 2, 8, 32, 40, 4),
]


def random_problem(shapes, n, m, d, lq, p, seed=0, spread=(-0.3, 1.3)):
    g = torch.Generator().manual_seed(seed)
    value = torch.randn(n, sum(h * w for h, w in shapes), m, d, generator=g)
    lo, hi = spread
    locations = torch.rand(n, lq, m, len(shapes), p, 2, generator=g) * (hi - lo) + lo
    weights = torch.rand(n, lq, m, len(shapes), p, generator=g).softmax(-1)
    return value, locations, weights


def kernels():
    out = [fast.ms_deform_attn_gather]
    if fast.cpu_kernel_available():
        out.append(fast.ms_deform_attn_cpu)
    return out


@pytest.mark.parametrize("case", CASES)
def test_fast_kernels_equal_reference_on_random_inputs(case):
    shapes, n, m, d, lq, p = case
    value, locations, weights = random_problem(shapes, n, m, d, lq, p)
    ref = ms_deform_attn_core(value, shapes, locations, weights)
    for kernel in kernels():
        out = kernel(value, shapes, locations, weights)
        assert out.shape == ref.shape and out.dtype == ref.dtype
        torch.testing.assert_close(out, ref, atol=2e-6, rtol=1e-5, msg=kernel.__name__)


def test_points_far_outside_on_the_border_and_on_pixel_centres():
    shapes = [(4, 6), (1, 1), (2, 3)]
    value, locations, weights = random_problem(shapes, 2, 2, 3, 9, 2, seed=1)
    # far outside, exactly on the map edges, on the one-pixel border band, on pixel centres
    special = torch.tensor([-5.0, 7.0, 0.0, 1.0, -1 / 12, 1 + 1 / 12, 0.5, 1 / 12, 1e-7, 1 - 1e-7])
    g = torch.Generator().manual_seed(2)
    locations = special[torch.randint(0, len(special), locations.shape, generator=g)]
    ref = ms_deform_attn_core(value, shapes, locations, weights)
    for kernel in kernels():
        torch.testing.assert_close(kernel(value, shapes, locations, weights), ref, atol=2e-6, rtol=1e-5)
    # a point entirely off the map contributes nothing
    off = torch.full_like(locations, 3.0)
    for kernel in kernels():
        assert kernel(value, shapes, off, weights).abs().max() == 0


def test_gather_chunking_and_gradients_match_reference():
    shapes, n, m, d, lq, p = CASES[0]
    value, locations, weights = random_problem(shapes, n, m, d, lq, p, seed=3)
    torch.testing.assert_close(
        fast.ms_deform_attn_gather(value, shapes, locations, weights, chunk=2),
        fast.ms_deform_attn_gather(value, shapes, locations, weights, chunk=1000), atol=1e-6, rtol=0,
    )
    grads = []
    for kernel in (ms_deform_attn_core, fast.ms_deform_attn_gather):
        v, loc, w = (t.clone().requires_grad_(True) for t in (value, locations, weights))
        kernel(v, shapes, loc, w).pow(2).sum().backward()
        grads.append((v.grad, loc.grad, w.grad))
    for ref, ours in zip(*grads):
        torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)


def test_c_kernel_bf16_values_and_auto_selection():
    if not fast.cpu_kernel_available():
        pytest.skip("no C compiler: the gather kernel is used instead")
    shapes, n, m, d, lq, p = CASES[2]
    value, locations, weights = random_problem(shapes, n, m, d, lq, p, seed=4)
    ref = ms_deform_attn_core(value.bfloat16().float(), shapes, locations, weights)
    out = fast.ms_deform_attn_cpu(value.bfloat16(), shapes, locations, weights)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=1e-2)  # output rounding to bf16 only
    # auto: C kernel without autograd, differentiable gather kernel when a gradient is needed
    torch.testing.assert_close(fast.ms_deform_attn_auto(value, shapes, locations, weights),
                               fast.ms_deform_attn_cpu(value, shapes, locations, weights), atol=0, rtol=0)
    v = value.clone().requires_grad_(True)
    out = fast.ms_deform_attn_auto(v, shapes, locations, weights)
    assert out.requires_grad
    out.sum().backward()
    assert v.grad is not None and v.grad.abs().sum() > 0


def test_c_kernel_builds_into_a_fresh_cache_folder(tmp_path, monkeypatch):
    import shutil

    if not (shutil.which("gcc") or shutil.which("cc") or shutil.which("clang")):
        pytest.skip("no C compiler")
    monkeypatch.setenv("GLEE_CACHE_DIR", str(tmp_path))
    path = fast.build_cpu_kernel()
    assert path.parent == tmp_path / "kernels" and path.exists()
    assert fast.build_cpu_kernel() == path  # cached: no rebuild
    assert list((tmp_path / "kernels").iterdir()) == [path]  # no temporary files left behind


def test_kernel_rejects_inconsistent_shapes():
    shapes, n, m, d, lq, p = CASES[0]
    value, locations, weights = random_problem(shapes, n, m, d, lq, p)
    with pytest.raises(ValueError, match="positions"):
        fast.ms_deform_attn_gather(value[:, :-1], shapes, locations, weights)
    if fast.cpu_kernel_available():
        with pytest.raises(ValueError, match="inconsistent shapes"):
            fast.ms_deform_attn_cpu(value, shapes[:2], locations, weights)


def test_module_with_fast_kernel_equals_reference_module():
    torch.manual_seed(0)
    attn = MultiScaleDeformableAttention(d_model=32, n_levels=3, n_heads=4, n_points=2).eval()
    torch.nn.init.normal_(attn.sampling_offsets.weight, std=0.5)  # spread the points, some off the map
    shapes = [(6, 5), (3, 3), (1, 2)]
    s = sum(h * w for h, w in shapes)
    query, value = torch.randn(2, 7, 32), torch.randn(2, s, 32)
    # per-image points, one point set shared by the batch (sliced from a longer one, as the encoder's chunks
    # are) and boxes
    shared = torch.rand(1, 10, 3, 2)[:, 2:9]
    for refs in (torch.rand(2, 7, 3, 2), shared, torch.rand(2, 7, 3, 4)):
        with torch.no_grad():
            ref = attn(query, refs, value, shapes)
            attn.fast_kernel = fast.ms_deform_attn_auto  # per instance, as GleeModel.set_inference_mode does
            out = attn(query, refs, value, shapes)
            attn.train()  # training always uses the reference kernel
            train_out = attn(query, refs, value, shapes)
            attn.eval()
            attn.fast_kernel = None
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(train_out, ref, atol=0, rtol=0)


@pytest.mark.skipif(not (torch.cuda.is_available() and fast._HAS_TRITON), reason="needs CUDA and triton")
def test_triton_kernel_equals_gather_on_gpu():  # pragma: no cover - no GPU where this was written
    shapes, n, m, d, lq, p = CASES[2]
    value, locations, weights = (t.cuda() for t in random_problem(shapes, n, m, d, lq, p, seed=5))
    torch.testing.assert_close(fast.ms_deform_attn_triton(value, shapes, locations, weights),
                               ms_deform_attn_core(value, shapes, locations, weights), atol=1e-5, rtol=1e-5)


def test_attend_memory_samples_unprojected_rows_like_projecting_first():
    """Decoder path: sampling the raw memory rows and projecting the sampled ones equals projecting all tokens
    first (the projection is linear; off-map corners contribute neither the row nor the bias)."""
    torch.manual_seed(1)
    attn = MultiScaleDeformableAttention(d_model=32, n_levels=3, n_heads=4, n_points=2).eval()
    torch.nn.init.normal_(attn.sampling_offsets.weight, std=0.5)  # spread the points, some off the map
    torch.nn.init.normal_(attn.value_proj.bias)  # a bias that would show if it were counted for off-map corners
    shapes = [(6, 5), (3, 3), (1, 2)]
    s = sum(h * w for h, w in shapes)
    query, memory = torch.randn(2, 7, 32), torch.randn(2, s, 32)
    for refs in (torch.rand(2, 7, 3, 4) * 1.4 - 0.2, torch.rand(2, 7, 3, 2)):
        with torch.no_grad():
            ref = attn.attend(query, refs, attn.project_value(memory), shapes)
            attn.fast_kernel = fast.ms_deform_attn_auto
            out = attn.attend_memory(query, refs, memory, shapes)
            out_bf16 = attn.attend_memory(query, refs, memory.bfloat16(), shapes)
            attn.fast_kernel = None
            plain = attn.attend_memory(query, refs, memory, shapes)  # no fast kernel: project, then attend
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(plain, ref, atol=0, rtol=0)
        assert out_bf16.dtype == torch.float32
        torch.testing.assert_close(out_bf16, ref, atol=3e-2, rtol=3e-2)  # bf16 rounding of the memory only
    if fast.cpu_kernel_available():
        # points on random pixel centres: all their weight is on the map, so weight_sum counts the points
        size = torch.tensor([[w, h] for h, w in shapes], dtype=torch.float32).view(1, 1, 1, 3, 1, 2)
        loc = ((torch.rand(2, 7, 4, 3, 2, 2) * size).floor() + 0.5) / size
        sampled, weight_sum = fast.ms_deform_attn_rows_cpu(memory, shapes, loc, torch.ones(2, 7, 4, 3, 2))
        assert sampled.shape == (2, 4, 7, 32) and weight_sum.shape == (2, 4, 7)
        torch.testing.assert_close(weight_sum, torch.full_like(weight_sum, 6.0))
        with pytest.raises(ValueError, match="positions"):
            fast.ms_deform_attn_rows_cpu(memory[:, :-1], shapes, loc, torch.ones(2, 7, 4, 3, 2))


@pytest.mark.parametrize("spread", [(-0.3, 1.3), (0.05, 0.95)])
def test_vectorised_bf16_fused_kernel_equals_scalar_kernel(monkeypatch, spread):
    """The encoder's bf16 path (head dim 32) uses a vectorised kernel; it must equal the scalar one up to float32
    rounding, for points off the map, on one-pixel and one-row levels and for per-image references."""
    if not fast.cpu_kernel_available():
        pytest.skip("no C compiler: the gather kernel is used instead")
    torch.manual_seed(2)
    attn = MultiScaleDeformableAttention(d_model=256, n_levels=4, n_heads=8, n_points=4).eval()
    torch.nn.init.normal_(attn.sampling_offsets.weight, std=0.2)
    torch.nn.init.normal_(attn.attention_weights.weight, std=0.2)
    attn.fast_kernel = fast.ms_deform_attn_auto
    shapes = [(9, 13), (5, 7), (1, 4), (1, 1)]
    s = sum(h * w for h, w in shapes)
    lo, hi = spread
    query = torch.randn(2, 50, 256)
    value = torch.randn(2, s, 8, 32).bfloat16()
    refs = torch.rand(2, 50, 4, 2) * (hi - lo) + lo
    outs = {}
    with torch.no_grad():
        for flag in ("0", "1"):
            monkeypatch.setenv("GLEE_MSDA_VECTORISED", flag)
            outs[flag] = fast.attend_fused_cpu(attn, query, refs, value, shapes)
        expected = fast.attend_fused_cpu(attn, query, refs, value.float(), shapes)  # float32 kernel, same values
    assert outs["1"].dtype == torch.bfloat16
    torch.testing.assert_close(outs["1"].float(), outs["0"].float(), atol=1e-2, rtol=1e-2)  # one bf16 rounding
    torch.testing.assert_close(outs["1"].float(), expected, atol=1e-2, rtol=1e-2)

