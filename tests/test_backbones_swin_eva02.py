"""Swin (GLEE-Plus) and EVA02 (GLEE-Pro) backbones: official state-dict layout, shapes and numerics.

Full-size models are built on the ``meta`` device only (no weights materialised); numerics use tiny modules.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glee.config import Eva02Config, GleeConfig, SwinConfig
from glee.modeling.backbones import build_backbone
from glee.modeling.backbones.eva02 import (
    Eva02Attention,
    Eva02Backbone,
    Eva02Block,
    LayerNorm2d,
    RotaryEmbedding2d,
    resize_abs_pos_embed,
    rotate_half,
)
from glee.modeling.backbones.swin import (
    PatchMerging,
    SwinBackbone,
    SwinBlock,
    WindowAttention,
    relative_position_index,
    shifted_window_mask,
)

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "glee_official"


def _manifest(name: str) -> dict:
    path = REFERENCE / name
    if not path.exists():
        pytest.skip(f"official manifest {path} not available")
    return json.loads(path.read_text())


def _check_against_manifest(model: nn.Module, manifest: dict) -> None:
    """Keys (in order), shapes, dtypes, param/buffer kinds, aliases and the parameter count."""
    entries = [e for e in manifest["state_dict"] if e["key"].startswith("backbone.")]
    expected = [(e["key"].removeprefix("backbone."), tuple(e["shape"]), e["dtype"]) for e in entries]
    got = [(k, tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in model.state_dict().items()]
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    assert not missing and not extra, f"missing {missing[:5]} extra {extra[:5]}"
    assert got == expected  # same order too

    buffers = {n for n, _ in model.named_buffers(remove_duplicate=False)}
    for e in entries:
        key = e["key"].removeprefix("backbone.")
        assert (key in buffers) == (e["kind"] == "buffer"), key
        if "tied_to" in e:  # an alias: the owning modules must be the same object
            owner = key.rsplit(".", 1)[0]
            target = e["tied_to"].removeprefix("backbone.").rsplit(".", 1)[0]
            assert model.get_submodule(owner) is model.get_submodule(target), key

    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == manifest["parameters_by_top_module"]["backbone"]


def _assert_pyramid(
    out: dict[str, Tensor], model: nn.Module, hw: tuple[int, int], sizes: dict[str, tuple]
) -> None:
    assert list(out) == model.out_features
    for name, feat in out.items():
        assert feat.shape[:2] == (2, model.out_channels[name]), name
        assert tuple(feat.shape[2:]) == sizes[name], (name, hw)
        assert torch.isfinite(feat).all()


# ============================================================================================ Swin (Plus)
def test_swin_plus_state_dict_matches_official_manifest() -> None:
    with torch.device("meta"):
        model = SwinBackbone(GleeConfig.preset("plus").swin)
    _check_against_manifest(model, _manifest("manifest_plus.json"))
    assert model.out_features == ["res2", "res3", "res4", "res5"]
    assert model.out_channels == {"res2": 192, "res3": 384, "res4": 768, "res5": 1536}
    assert model.out_strides == {"res2": 4, "res3": 8, "res4": 16, "res5": 32}


@pytest.mark.parametrize("hw", [(96, 160), (100, 130)])
def test_swin_tiny_forward_shapes(hw: tuple[int, int]) -> None:
    torch.manual_seed(0)
    cfg = GleeConfig.preset("tiny_swin")
    model = build_backbone(cfg).eval()
    assert isinstance(model, SwinBackbone)
    with torch.no_grad():
        out = model(torch.randn(2, 3, *hw))
    # internal padding (patch size, window size, odd merges) gives ceil(input / stride) at every level
    sizes = {n: (math.ceil(hw[0] / s), math.ceil(hw[1] / s)) for n, s in model.out_strides.items()}
    _assert_pyramid(out, model, hw, sizes)
    assert model.out_strides == {"res2": 4, "res3": 8, "res4": 16, "res5": 32}
    assert model.out_channels == {f"res{i + 2}": cfg.swin.embed_dim * 2**i for i in range(4)}
    # each output is layer-normalised over channels (weights are 1/0 at init)
    res5 = out["res5"]
    assert torch.allclose(res5.mean(1), torch.zeros(()), atol=1e-4)


def test_swin_padding_does_not_leak_into_valid_region_of_res2_shape_only_input() -> None:
    """A map smaller than one window still works (padded + shifted windows), and APE variant runs."""
    cfg = SwinConfig(
        embed_dim=8,
        depths=[2, 2, 2, 2],
        num_heads=[1, 1, 2, 2],
        window_size=7,
        ape=True,
        pretrain_img_size=56,
    )
    model = SwinBackbone(cfg).eval()
    assert model.state_dict()["absolute_pos_embed"].shape == (1, 8, 14, 14)
    with torch.no_grad():
        out = model(torch.randn(2, 3, 20, 44))
    assert [tuple(v.shape[2:]) for v in out.values()] == [(5, 11), (3, 6), (2, 3), (1, 2)]


def test_patch_merging_concatenation_order_and_odd_padding() -> None:
    """Channels are [(0,0), (1,0), (0,1), (1,1)] (row, col) neighbours; odd maps get a zero row/column."""
    merge = PatchMerging(2)
    merge.norm, merge.reduction = nn.Identity(), nn.Identity()
    x = torch.arange(3 * 5 * 2, dtype=torch.float32).view(1, 3, 5, 2)
    out = merge(x)
    assert out.shape == (1, 2, 3, 8)
    assert torch.equal(out[0, 0, 1], torch.cat([x[0, 0, 2], x[0, 1, 2], x[0, 0, 3], x[0, 1, 3]]))
    assert torch.equal(out[0, 1, 2], torch.cat([x[0, 2, 4], torch.zeros(2), torch.zeros(2), torch.zeros(2)]))


def test_relative_position_index_matches_bruteforce() -> None:
    for ws in (3, 12):
        coords = [(y, x) for y in range(ws) for x in range(ws)]
        expected = torch.tensor(
            [
                [(yi - yj + ws - 1) * (2 * ws - 1) + (xi - xj + ws - 1) for (yj, xj) in coords]
                for (yi, xi) in coords
            ]
        )
        assert torch.equal(relative_position_index(ws), expected)
    assert relative_position_index(12).shape == (144, 144)
    assert int(relative_position_index(12).max()) == 529 - 1


def test_shifted_window_mask_matches_slice_construction() -> None:
    """Official construction: label 3x3 regions by slices of the padded map, partition, compare labels."""
    hp, wp, ws, shift = 8, 12, 4, 2
    img = torch.zeros(hp, wp)
    cnt = 0
    for h in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
        for w in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
            img[h, w] = cnt
            cnt += 1
    windows = img.view(hp // ws, ws, wp // ws, ws).permute(0, 2, 1, 3).reshape(-1, ws * ws)
    diff = windows[:, None, :] - windows[:, :, None]
    expected = torch.where(diff != 0, torch.tensor(-100.0), torch.tensor(0.0))
    got = shifted_window_mask(hp, wp, ws, shift, torch.device("cpu"))
    assert torch.equal(got, expected)


def _naive_swin_attention(block: SwinBlock, x: Tensor) -> Tensor:
    """Per-query loop over the padded, rolled map: keys = same window and same shift region; bias from the
    table by explicit (dy, dx).  Returns the attention branch (before the residual) on the valid [B, H, W, C].
    """
    attn: WindowAttention = block.attn
    ws, s = block.window_size, block.shift_size
    b, h, w, c = x.shape
    hp, wp = -(-h // ws) * ws, -(-w // ws) * ws
    y = torch.zeros(b, hp, wp, c)
    y[:, :h, :w] = block.norm1(x)
    heads, d = attn.num_heads, c // attn.num_heads
    qkv = attn.qkv(y).view(b, hp, wp, 3, heads, d)

    def region(p: int, n: int) -> int:  # region of a rolled coordinate (the mask only matters when shifted)
        return 0 if (s == 0 or p < n - ws) else (1 if p < n - s else 2)

    out = torch.zeros(b, hp, wp, heads, d)
    for qy in range(hp):
        for qx in range(wp):
            ry, rx = (qy - s) % hp, (qx - s) % wp  # position in the rolled map
            keys = []
            for ky in range(hp):
                for kx in range(wp):
                    sy, sx = (ky - s) % hp, (kx - s) % wp
                    same_window = (sy // ws, sx // ws) == (ry // ws, rx // ws)
                    same_region = (region(sy, hp), region(sx, wp)) == (region(ry, hp), region(rx, wp))
                    if same_window and same_region:
                        keys.append((ky, kx, sy, sx))
            logits = torch.zeros(b, heads, len(keys))
            for j, (ky, kx, sy, sx) in enumerate(keys):
                dy, dx = ry % ws - sy % ws, rx % ws - sx % ws
                bias = attn.relative_position_bias_table[(dy + ws - 1) * (2 * ws - 1) + (dx + ws - 1)]
                logits[:, :, j] = (qkv[:, qy, qx, 0] * qkv[:, ky, kx, 1]).sum(-1) * d**-0.5 + bias
            prob = logits.softmax(-1)  # [b, heads, K]
            vals = torch.stack([qkv[:, ky, kx, 2] for ky, kx, _, _ in keys], dim=2)  # [b, heads, K, d]
            out[:, qy, qx] = (prob[..., None] * vals).sum(2)
    return attn.proj(out.reshape(b, hp, wp, c))[:, :h, :w]


def _silence(linear: nn.Linear) -> None:
    """Zero a residual branch's last layer so that a block reduces to its attention branch."""
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)


@pytest.mark.parametrize("shift", [0, 2])
def test_swin_block_matches_naive_per_pair_attention(shift: int) -> None:
    torch.manual_seed(0)
    block = SwinBlock(
        dim=8, num_heads=2, window_size=4, shift_size=shift, mlp_ratio=2.0, qkv_bias=True, drop_path=0.0
    ).eval()
    nn.init.normal_(block.attn.relative_position_bias_table, std=1.0)  # make indexing errors visible
    x = torch.randn(2, 6, 7, 8)  # padded to 8x8: two windows per axis, padding tokens included
    mask = shifted_window_mask(8, 8, 4, 2, x.device) if shift else None
    _silence(block.mlp.fc2)  # block(x) - x is then the attention branch alone
    with torch.no_grad():
        attn_branch = block(x, mask) - x
        naive = _naive_swin_attention(block, x)
    assert torch.allclose(attn_branch, naive, atol=1e-5), (attn_branch - naive).abs().max()


def test_swin_window_attention_bias_table_against_naive_loop() -> None:
    """Single window, no padding/shift: logits = q.k * scale + table[index(i, j), head] for every pair."""
    torch.manual_seed(1)
    attn = WindowAttention(dim=6, window_size=3, num_heads=2)
    nn.init.normal_(attn.relative_position_bias_table)
    x = torch.randn(1, 9, 6)
    q, k, v = attn.qkv(x).view(1, 9, 3, 2, 3).unbind(2)
    out = torch.zeros(1, 9, 2, 3)
    for head in range(2):
        for i in range(9):
            logits = torch.stack(
                [
                    (q[0, i, head] * k[0, j, head]).sum() / math.sqrt(3)
                    + attn.relative_position_bias_table[(i // 3 - j // 3 + 2) * 5 + (i % 3 - j % 3 + 2), head]
                    for j in range(9)
                ]
            )
            out[0, i, head] = logits.softmax(0) @ v[0, :, head]
    with torch.no_grad():
        assert torch.allclose(attn(x), attn.proj(out.reshape(1, 9, 6)), atol=1e-5)


# ============================================================================================ EVA02 (Pro)
def test_eva02_pro_state_dict_matches_official_manifest() -> None:
    with torch.device("meta"):
        model = Eva02Backbone(GleeConfig.preset("pro").eva02)
    _check_against_manifest(model, _manifest("manifest_pro.json"))
    sd = model.state_dict()
    assert sd["net.rope_win.freqs_cos"].shape == (256, 64)
    assert sd["net.rope_glb.freqs_cos"].shape == (96 * 96, 64)
    assert sd["net.blocks.0.mlp.w1.weight"].shape == (2730, 1024)
    assert model.out_features == ["p3", "p4", "p5", "p6"]
    assert model.out_channels == dict.fromkeys(["p3", "p4", "p5", "p6"], 256)
    assert model.out_strides == {"p3": 8, "p4": 16, "p5": 32, "p6": 64}
    windowed = set(GleeConfig.preset("pro").eva02.window_block_indexes)
    for i, blk in enumerate(model.net.blocks):
        assert blk.window_size == (16 if i in windowed else 0)
        assert blk.attn.rope is (model.net.rope_win if i in windowed else model.net.rope_glb)


def test_eva02_rope_aliases_share_storage() -> None:
    model = Eva02Backbone(GleeConfig.preset("tiny_eva02").eva02)
    sd = model.state_dict()
    for i in range(len(model.net.blocks)):
        src = "rope_win" if i in (0, 2) else "rope_glb"
        for name in ("freqs_cos", "freqs_sin"):
            assert sd[f"net.blocks.{i}.attn.rope.{name}"].data_ptr() == sd[f"net.{src}.{name}"].data_ptr()


@pytest.mark.parametrize(
    ("hw", "sizes"),
    [
        ((128, 128), {"p3": (16, 16), "p4": (8, 8), "p5": (4, 4), "p6": (2, 2)}),
        ((96, 160), {"p3": (12, 20), "p4": (6, 10), "p5": (3, 5), "p6": (2, 3)}),  # p6 = ceil(p5 / 2)
        ((100, 130), {"p3": (12, 16), "p4": (6, 8), "p5": (3, 4), "p6": (2, 2)}),  # the patch conv floors
    ],
)
def test_eva02_tiny_forward_shapes(hw: tuple[int, int], sizes: dict[str, tuple]) -> None:
    torch.manual_seed(0)
    model = build_backbone(GleeConfig.preset("tiny_eva02")).eval()
    assert isinstance(model, Eva02Backbone)
    with torch.no_grad():
        out = model(torch.randn(2, 3, *hw))
    _assert_pyramid(out, model, hw, sizes)
    assert torch.equal(out["p6"], out["p5"][..., ::2, ::2])  # LastLevelMaxPool: kernel 1, stride 2


def test_rope_table_values_follow_the_official_formula() -> None:
    rope = RotaryEmbedding2d(axis_dim=32, grid=16)
    assert rope.freqs_cos.shape == (256, 64)
    freqs = [1.0 / 10000 ** (2 * i / 32) for i in range(16)]
    for y, x in [(0, 0), (3, 11), (15, 15)]:
        row = y * 16 + x  # y-major rows
        for ch in (0, 1, 7, 31):
            assert math.isclose(rope.freqs_cos[row, ch].item(), math.cos(y * freqs[ch // 2]), abs_tol=1e-5)
            assert math.isclose(
                rope.freqs_sin[row, 32 + ch].item(), math.sin(x * freqs[ch // 2]), abs_tol=1e-5
            )
    # the global table of a 1536 model spans the same 0..16 positions on a finer 96-step grid
    glb = RotaryEmbedding2d(axis_dim=32, grid=96)
    assert glb.freqs_cos.shape == (9216, 64)
    assert math.isclose(glb.freqs_cos[6 * 96, 0].item(), math.cos(6 * 16 / 96), abs_tol=1e-6)


def test_rope_preserves_norms_and_depends_on_relative_offsets_only() -> None:
    torch.manual_seed(0)
    rope = RotaryEmbedding2d(axis_dim=8, grid=6, pretrain_grid=6)  # integer positions 0..5
    q = torch.randn(16).expand(1, 1, 36, 16)
    k = torch.randn(16).expand(1, 1, 36, 16)
    rq, rk = rope(q), rope(k)
    assert torch.allclose(rq.norm(dim=-1), q.norm(dim=-1), atol=1e-5)
    # each channel pair (2i, 2i+1) rotates as one complex number
    assert torch.allclose(rq.view(36, 8, 2).norm(dim=-1), q.view(36, 8, 2).norm(dim=-1), atol=1e-5)
    dots = (rq[0, 0] @ rk[0, 0].T).view(6, 6, 6, 6)  # [qy, qx, ky, kx]
    assert torch.allclose(dots[1, 2, 3, 1], dots[2, 4, 4, 3], atol=1e-4)  # same (dy, dx) = (-2, 1)
    assert not torch.allclose(dots[1, 2, 3, 1], dots[1, 2, 1, 3], atol=1e-3)
    assert torch.equal(rotate_half(torch.tensor([1.0, 2.0, 3.0, 4.0])), torch.tensor([-2.0, 1.0, -4.0, 3.0]))


def _tiny_eva(image_size: int, window_size: int = 4, windowed: tuple[int, ...] = (0,)) -> Eva02Config:
    return Eva02Config(
        image_size=image_size,
        embed_dim=32,
        depth=2,
        num_heads=2,
        window_size=window_size,
        window_block_indexes=list(windowed),
        out_channels=8,
        drop_path_rate=0.0,
    )


def test_eva02_window_covering_the_map_equals_global_attention() -> None:
    torch.manual_seed(0)
    rope = RotaryEmbedding2d(axis_dim=8, grid=8)
    windowed = Eva02Block(32, 2, 85, window_size=8, rope=rope, drop_path=0.0).eval()
    global_ = Eva02Block(32, 2, 85, window_size=0, rope=rope, drop_path=0.0).eval()
    for p in windowed.attn.parameters():
        nn.init.normal_(p, std=0.2)  # non-zero q/v biases too
    global_.load_state_dict(windowed.state_dict())
    x = torch.randn(2, 8, 8, 32)
    with torch.no_grad():
        assert torch.allclose(windowed(x), global_(x), atol=1e-5)


def test_eva02_windows_are_independent_global_attentions() -> None:
    """A 2x2 grid of 4x4 windows equals global attention run on each 4x4 crop separately.  The 6x7 map is
    zero-padded to 8x8 after norm1 and the padding tokens are ordinary (unmasked) keys, as officially.
    """
    torch.manual_seed(0)
    rope = RotaryEmbedding2d(axis_dim=8, grid=4)
    attn = Eva02Attention(32, 2, rope)
    nn.init.normal_(attn.q_bias)
    nn.init.normal_(attn.v_bias)
    block = Eva02Block(32, 2, 85, window_size=4, rope=rope, drop_path=0.0).eval()
    block.attn = attn
    _silence(block.mlp.w3)
    x = torch.randn(1, 6, 7, 32)
    with torch.no_grad():
        y = F.pad(block.norm1(x), (0, 0, 0, 1, 0, 2))  # [1, 8, 8, 32], zeros at the bottom/right
        expected = torch.zeros_like(y)
        for wy in (0, 4):
            for wx in (0, 4):
                expected[:, wy : wy + 4, wx : wx + 4] = attn(y[:, wy : wy + 4, wx : wx + 4])
        expected = expected[:, :6, :7]
        got = block(x) - x
    assert torch.allclose(got, expected, atol=1e-5)


def _load_except_rope(dst: nn.Module, src: nn.Module) -> None:
    state = {k: v for k, v in src.state_dict().items() if ".freqs_" not in k}
    missing, unexpected = dst.load_state_dict(state, strict=False)
    assert not unexpected and all(".freqs_" in k for k in missing)


def test_eva02_template_crop_uses_truncated_global_rope_table() -> None:
    """256x256 input (16x16 tokens) on a 512 model (32x32 table): the first 256 rows are used (official
    quirk), not a table re-built for a 16x16 grid.
    """
    torch.manual_seed(0)
    model = Eva02Backbone(_tiny_eva(512, windowed=(0,))).eval()
    assert model.net.rope_glb.freqs_cos.shape[0] == 1024
    for name in ("q_proj", "k_proj"):  # sharper attention, so that positions matter
        nn.init.normal_(getattr(model.net.blocks[1].attn, name).weight, std=0.5)
    image = torch.randn(1, 3, 256, 256)

    explicit = Eva02Backbone(_tiny_eva(512, windowed=(0,))).eval()
    _load_except_rope(explicit, model)
    explicit.net.rope_glb.freqs_cos = model.net.rope_glb.freqs_cos[:256].clone()  # exactly N rows: no slicing
    explicit.net.rope_glb.freqs_sin = model.net.rope_glb.freqs_sin[:256].clone()

    rebuilt = Eva02Backbone(_tiny_eva(256, windowed=(0,))).eval()  # a proper 16x16 table
    _load_except_rope(rebuilt, model)

    seen: list[int] = []
    hook = model.net.rope_glb.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[-2]))
    with torch.no_grad():
        out, ref, other = model(image), explicit(image), rebuilt(image)
    hook.remove()
    assert seen == [256, 256]  # q and k of the one global block, 256 tokens < 1024 rows
    for name in out:
        assert torch.equal(out[name], ref[name]), name
    assert not torch.allclose(out["p4"], other["p4"], atol=1e-3)

    with pytest.raises(ValueError, match="RoPE table"):
        model(torch.randn(1, 3, 528, 512))  # 33x32 tokens exceed the table: the official code fails too


def test_eva02_tiny_preset_runs_the_visual_prompt_template_size() -> None:
    cfg = GleeConfig.preset("tiny_eva02")
    model = Eva02Backbone(cfg.eva02).eval()
    tokens = (cfg.visual_template_size // cfg.eva02.patch_size) ** 2
    assert model.net.rope_glb.freqs_cos.shape[0] >= tokens
    with torch.no_grad():
        out = model(torch.randn(1, 3, cfg.visual_template_size, cfg.visual_template_size))
    assert out["p4"].shape[-2:] == (16, 16)


def test_eva02_abs_pos_embed_resize() -> None:
    torch.manual_seed(0)
    pos = torch.randn(1, 1 + 14 * 14, 8)
    grid = pos[:, 1:].reshape(1, 14, 14, 8)
    assert torch.equal(resize_abs_pos_embed(pos, (14, 14)), grid)  # same grid: no interpolation
    up = resize_abs_pos_embed(pos, (6, 10))
    expected = F.interpolate(grid.permute(0, 3, 1, 2), size=(6, 10), mode="bicubic", align_corners=False)
    assert torch.allclose(up, expected.permute(0, 2, 3, 1))
    assert not torch.allclose(
        up,
        F.interpolate(grid.permute(0, 3, 1, 2), size=(6, 10), mode="bicubic", align_corners=True).permute(
            0, 2, 3, 1
        ),
        atol=1e-3,
    )
    # the cls slot never reaches the features
    model = Eva02Backbone(_tiny_eva(128)).eval()
    image = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        before = model(image)["p4"]
        model.net.pos_embed[:, 0] += 10.0
        assert torch.equal(model(image)["p4"], before)
        model.net.pos_embed[:, 1] += 10.0
        assert not torch.equal(model(image)["p4"], before)


def test_channel_first_layer_norm_matches_layer_norm_over_channels() -> None:
    torch.manual_seed(0)
    norm = LayerNorm2d(6)
    nn.init.normal_(norm.weight)
    nn.init.normal_(norm.bias)
    x = torch.randn(2, 6, 5, 7) * 3 + 1
    expected = F.layer_norm(x.permute(0, 2, 3, 1), (6,), norm.weight, norm.bias, eps=1e-6).permute(0, 3, 1, 2)
    assert torch.allclose(norm(x), expected, atol=1e-5)
    assert norm.eps == 1e-6


def test_eva02_is_deterministic_in_eval_and_drop_path_is_training_only() -> None:
    torch.manual_seed(0)
    cfg = _tiny_eva(128)
    cfg.drop_path_rate = 0.5
    model = Eva02Backbone(cfg).eval()
    image = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a, b = model(image)["p3"], model(image)["p3"]
        assert torch.equal(a, b)
        model.train()
        torch.manual_seed(1)
        c = model(image)["p3"]
    assert not torch.equal(a, c)
