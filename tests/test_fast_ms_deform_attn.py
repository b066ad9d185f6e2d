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
