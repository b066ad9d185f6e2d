"""Training end to end on a tiny model: overfitting two images, DeepSpeed ZeRO-2 save/resume, SIGKILL + resume,
the optimiser's parameter groups and schedule, and the bundled recipes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torchvision.ops import box_convert, box_iou

import glee  # noqa: F401  (torchvision shim first)
from glee.config import GleeConfig
from glee.modeling.glee_model import GleeModel
from train.config import CONFIG_DIR, TrainConfig
from train.data.shapesworld import ShapesWorldConfig, write_dataset
from train.engine import read_log
from train.optim import SolverConfig, lr_factor, lr_multiplier, param_groups
from train.trainer import train

REPO = Path(__file__).resolve().parents[1]
# overfit acceptance: the total weighted loss (all sets, DN included) must fall below this, from ~100 at step 0
OVERFIT_STEPS = 60
OVERFIT_LOSS = 15.0
OVERFIT_IOU = 0.7


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Two 64x64 ShapesWorld images with two objects each; the JSON lists only the classes that occur."""
    root = tmp_path_factory.mktemp("shapes")
    cfg = ShapesWorldConfig(seed=3, min_side=64, max_side=64, min_object=16, max_object=40, min_objects=2,
                            max_objects=2)
    paths = write_dataset(root, {"train": 2}, None, cfg)["train"]
    coco = json.loads(Path(paths["instances"]).read_text())
    used = {a["category_id"] for a in coco["annotations"]}
    coco["categories"] = [c for c in coco["categories"] if c["id"] in used]
    small = root / "small.json"
    small.write_text(json.dumps(coco))
    return {"json": str(small), "images": paths["image_root"]}


def tiny_recipe(data: dict[str, str], out: Path, **solver: object) -> dict:
    return {
        "model": {"preset": "tiny", "scratch_init": True,
                  "overrides": {"visual_prompt": False, "num_queries": 8, "dec_layers": 1, "enc_layers": 1,
                                "text": {"arch": "clip_frozen"}}},
        "data": {"root": "/", "datasets": [{"name": "shapes", "reader": "coco", "json": data["json"],
                                            "image_root": data["images"], "dataset_name": "shapes",
                                            "batch_size": 2}]},
        "augment": {"kind": "resize", "min_sizes": [64], "max_size": 64, "flip": False},
        "solver": {"max_iter": 6, "base_lr": 1e-3, "steps": [1000], "warmup_iters": 5, "weight_decay": 0.0,
                   "backbone_multiplier": 1.0, "checkpoint_period": 3, **solver},
        "loss": {"num_points": 256},
        "dn": {"dn_num": 10},
        "engine": {"backend": "plain"},
        "output_dir": str(out), "seed": 0, "threads": 1, "log_period": 1,
    }


def test_tiny_model_overfits_two_images(tiny_data: dict[str, str], tmp_path: Path) -> None:
    cfg = TrainConfig.from_dict(tiny_recipe(tiny_data, tmp_path / "run", max_iter=OVERFIT_STEPS,
                                            checkpoint_period=OVERFIT_STEPS))
    summary = train(cfg, progress=False)
    losses = [r["loss"] for r in read_log(tmp_path / "run" / "log.jsonl")]
    assert len(losses) == OVERFIT_STEPS
    print(f"overfit: loss {losses[0]:.2f} -> {min(losses[-5:]):.2f} (threshold {OVERFIT_LOSS})")
    assert min(losses[-5:]) < OVERFIT_LOSS and losses[0] > 4 * OVERFIT_LOSS
    # predictions recover the boxes: per object, the highest-scoring query of its class overlaps it
    model = GleeModel.from_pretrained(summary["export"]).set_inference_mode("reference")
    coco = json.loads(Path(tiny_data["json"]).read_text())
    names = [c["name"] for c in sorted(coco["categories"], key=lambda c: c["id"])]
    index = {c["id"]: i for i, c in enumerate(sorted(coco["categories"], key=lambda c: c["id"]))}
    mean, std = torch.tensor(model.cfg.pixel_mean).view(3, 1, 1), torch.tensor(model.cfg.pixel_std).view(3, 1, 1)
    ious = []
    for img in coco["images"]:
        pixels = torch.from_numpy(np.array(Image.open(Path(tiny_data["images"]) / img["file_name"])))
        x = (pixels.permute(2, 0, 1).float() - mean) / std
        with torch.no_grad():
            out = model(x[None], categories=names)
        boxes = box_convert(out.pred_boxes[0], "cxcywh", "xyxy") * 64
        for ann in (a for a in coco["annotations"] if a["image_id"] == img["id"]):
            q = int(out.pred_logits[0, :, index[ann["category_id"]]].argmax())
            gx, gy, gw, gh = ann["bbox"]
            ious.append(float(box_iou(boxes[q : q + 1], torch.tensor([[gx, gy, gx + gw, gy + gh]]))[0, 0]))
    print(f"overfit: box IoU of the top query per object {[round(i, 3) for i in ious]} (threshold {OVERFIT_IOU})")
    assert min(ious) > OVERFIT_IOU


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_deepspeed_zero2_save_resume_identical(tiny_data: dict[str, str], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("deepspeed")
    env = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(_free_port()), "DS_ACCELERATOR": "cpu"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    raw = tiny_recipe(tiny_data, tmp_path / "ds", max_iter=4, checkpoint_period=2)
    raw["engine"] = {"backend": "deepspeed", "zero_stage": 2, "precision": "fp32"}
    try:
        first = train(TrainConfig.from_dict(raw), progress=False)
        reference = {r["step"]: r for r in read_log(tmp_path / "ds" / "log.jsonl")}
        ckpt = tmp_path / "ds" / "checkpoints"
        assert (ckpt / "step_00000002" / "zero_pp_rank_0_mp_rank_00_optim_states.pt").exists()
        import shutil

        shutil.rmtree(ckpt / "step_00000004")  # resume from the middle: step 2
        second = train(TrainConfig.from_dict(raw), progress=False)
        resumed = {r["step"]: r for r in read_log(tmp_path / "ds" / "log.jsonl")}
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    assert first["start"] == 0 and second["start"] == 2
    print("zero-2 losses, uninterrupted:", [round(reference[s]["loss"], 6) for s in range(4)],
          "resumed at 2:", [round(resumed[s]["loss"], 6) for s in (2, 3)])
    for s in (2, 3):
        assert resumed[s]["loss"] == reference[s]["loss"]
        assert resumed[s]["terms"] == reference[s]["terms"]
    assert Path(second["export"], "model.safetensors").exists()


def test_plain_loop_sigkill_and_resume(tiny_data: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "kill"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(tiny_data, out, max_iter=8, checkpoint_period=3)))
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "train", "--config", str(recipe), "--no-progress"], cwd=REPO,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    log = out / "log.jsonl"
    deadline = time.time() + 600
    try:
        while time.time() < deadline:
            steps = [json.loads(x)["step"] for x in log.read_text().splitlines() if x.strip()] if log.exists() else []
            if steps and max(steps) >= 4:  # the checkpoint of step 3 is written; step 5 is running
                break
            if proc.poll() is not None:
                pytest.fail(f"training exited early: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.02)
        else:
            pytest.fail("training made no progress")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    killed = {r["step"]: r for r in read_log(log)}
    summary = train(TrainConfig.load(recipe), progress=False)
    resumed = {r["step"]: r for r in read_log(log)}
    overlap = sorted(s for s in killed if s >= summary["start"])
    print(f"sigkill: killed after step {max(killed)}, resumed at step {summary['start']}, compared steps {overlap}")
    assert summary["start"] in (3, 6) and overlap
    for s in overlap:
        assert resumed[s]["loss"] == killed[s]["loss"] and resumed[s]["terms"] == killed[s]["terms"]
    assert max(resumed) == 7 and not list((out / "checkpoints").glob("*.tmp"))


def test_param_groups_and_schedule() -> None:
    model = GleeModel(GleeConfig.preset("tiny"), with_teacher=True)
    cfg = SolverConfig(base_lr=1e-4, backbone_multiplier=0.1, text_encoder_multiplier=0.1, steps=[10, 20],
                       warmup_iters=5, warmup_factor=0.01)
    groups = param_groups(model, cfg)
    by_name = {n: g["lr"] for g in groups for n in g["names"]}
    assert by_name["backbone.stem.conv1.weight"] == pytest.approx(1e-5)
    assert by_name["text_encoder.text_model.final_layer_norm.weight"] == pytest.approx(1e-5)
    assert by_name["lang_projection"] == pytest.approx(1e-4) and by_name["predictor.category_embed"] == 1e-4
    assert not any(n.startswith("text_encoder_teacher.") for n in by_name)  # frozen teacher
    assert all(g["weight_decay"] == cfg.weight_decay for g in groups)
    assert lr_factor(0, cfg) == pytest.approx(0.01) and lr_factor(5, cfg) == 1.0
    assert lr_factor(10, cfg) == pytest.approx(0.1) and lr_factor(25, cfg) == pytest.approx(0.01)
    pro = SolverConfig(backbone_multiplier=1.0, lr_decay_rate=0.8, lr_decay_num_layers=24)
    assert lr_multiplier("backbone.net.blocks.23.attn.q_proj.weight", pro) == pytest.approx(0.8)
    assert lr_multiplier("backbone.net.patch_embed.proj.weight", pro) == pytest.approx(0.8**25)
    assert lr_multiplier("backbone.simfp_3.0.weight", pro) == 1.0


def test_bundled_recipes_reproduce_the_official_schedules() -> None:
    lite2 = TrainConfig.load(CONFIG_DIR / "lite_stage2.yaml")
    assert [d.ratio for d in lite2.datasets] == [1.5, 1.5, 1.5, 1.5, 1.5, 1.5, 2.5, 2.0, 0.2, 0.1, 0.05, 0.3, 0.3, 0.3]
    assert lite2.solver.steps == [300000, 380000] and lite2.solver.max_iter == 400000
    assert lite2.solver.text_encoder_multiplier == 0.1 and lite2.engine.backend == "deepspeed"
    assert lite2.model.glee_config().text.arch == "clip_teacher" and lite2.model.glee_config().visual_prompt
    pro1 = TrainConfig.load(CONFIG_DIR / "pro_stage1.yaml")
    assert [d.batch_size for d in pro1.datasets] == [1, 1] and pro1.augment.kind == "lsj"
    assert pro1.solver.lr_decay_rate == 0.8 and pro1.solver.weight_decay == 0.1
    assert pro1.model.glee_config().text.arch == "clip_frozen" and not pro1.model.glee_config().visual_prompt
    plus3 = TrainConfig.load(CONFIG_DIR / "plus_stage3.yaml", ["solver.max_iter=10"])
    assert plus3.solver.max_iter == 10 and plus3.model.preset == "plus" and len(plus3.datasets) == 15
    assert len(TrainConfig.load(CONFIG_DIR / "pro_stage3.yaml").datasets) == 16
    with pytest.raises(ValueError, match="unknown solver option"):
        TrainConfig.load(CONFIG_DIR / "lite_stage1.yaml", ["solver.lr=1"])


def test_nano_recipe_stages_chain_their_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bundled default model's four stages: each starts from the previous stage's exported model."""
    for name in ("SHAPESWORLD", "NANO_STAGE1", "NANO_STAGE2", "NANO_STAGE3"):
        monkeypatch.delenv(name, raising=False)
    names = ["shapesworld_nano", "shapesworld_nano_cont", "shapesworld_nano_stage3", "shapesworld_nano_stage4"]
    stages = [TrainConfig.load(CONFIG_DIR / f"{n}.yaml") for n in names]
    assert stages[0].model.weights is None and stages[0].model.scratch_init
    for previous, stage in zip(stages, stages[1:]):
        assert Path(stage.model.weights) == previous.output_dir / "model"
        assert stage.model.preset == "nano" and stage.datasets == previous.datasets
    assert [s.solver.max_iter for s in stages] == [700, 1100, 1000, 600]


def test_every_task_path_trains(monkeypatch: pytest.MonkeyPatch) -> None:
    """Category + visual prompt + distillation, grounding, a video clip (track loss), and batches whose objects
    were all cropped away: finite losses, and gradients where each path must send them."""
    import random

    from train.batching import BatchingConfig, DatasetMeta, collate
    from train.losses import LossConfig
    from train.module import GleeTrainModule

    torch.manual_seed(0)
    torch.set_num_threads(1)
    cfg = GleeConfig.preset("tiny").replace(num_queries=8, dec_layers=1, enc_layers=1)
    module = GleeTrainModule(GleeModel(cfg, with_teacher=True), LossConfig(num_points=64))
    h, w = 48, 64

    def inst(n: int, video: bool = False) -> dict:
        masks = torch.zeros(n, h, w, dtype=torch.bool)
        for k in range(n):
            masks[k, 4 + 12 * k : 14 + 12 * k, 6 + 10 * k : 30 + 10 * k] = True
        boxes = torch.tensor([[6 + 10 * k, 4 + 12 * k, 30 + 10 * k, 14 + 12 * k] for k in range(n)], dtype=torch.float)
        out = {"boxes": boxes.reshape(-1, 4), "classes": torch.arange(n) % 2, "masks": masks}
        if video:
            out["ids"] = torch.arange(n)
        return out

    img = torch.randint(0, 255, (3, h, w), dtype=torch.uint8)
    img2 = torch.randint(0, 255, (3, h, w), dtype=torch.uint8)
    bcfg = BatchingConfig(visual_prompt=True, visual_prompt_prob=1.0)
    cases = {
        "prompt+distill": collate(0, 0, [{"image": img, "instances": inst(2), "task": "coco", "expression": None}] * 2,
                                  DatasetMeta("c", ["red star", "blue ring"], True, False), bcfg, random.Random(1)),
        "grounding": collate(1, 0, [{"image": img, "instances": inst(1), "task": "grounding",
                                     "expression": "the red star left of the blue ring"}] * 2,
                             DatasetMeta("r", ["object"], True, False), bcfg, random.Random(2)),
        "video": collate(2, 0, [{"image": [img, img2], "instances": [inst(2, True), inst(2, True)], "task": "ytvis19",
                                 "expression": None}], DatasetMeta("v", ["red star", "blue ring"], True, True), bcfg,
                         random.Random(3)),
        "empty": collate(3, 0, [{"image": img, "instances": inst(0), "task": "coco", "expression": None}] * 2,
                         DatasetMeta("c", ["red star", "blue ring"], True, False), bcfg, random.Random(4)),
    }
    assert cases["prompt+distill"].visual_prompt_masks is not None and cases["empty"].visual_prompt_masks is None
    for name, batch in cases.items():
        module.zero_grad(set_to_none=True)
        total, terms = module(batch)
        assert torch.isfinite(total) and all(torch.isfinite(v) for v in terms.values()), name
        total.backward()
        model = module.model
        assert model.predictor.category_embed.grad is not None, name
        assert all(p.grad is None for p in model.text_encoder_teacher.parameters()), name
        if name == "prompt+distill":
            assert float(terms["loss_conf"].detach()) > 0 and float(terms["dist_loss"].detach()) >= 0
            assert model.sot_fuser.refine[0].weight.grad is not None
            assert model.text_encoder.text_model.final_layer_norm.weight.grad is not None
        if name == "video":
            assert float(terms["track_loss"].detach()) > 0
        if name == "grounding":
            assert float(terms["dist_loss"].detach()) == 0.0 and batch.vocabulary is None
        if name == "empty":
            assert float(terms["loss_bbox"].detach()) == 0.0 and float(terms["loss_ce_dn"].detach()) == 0.0


def test_finetune_command(tiny_data: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from train.cli import main

    out = tmp_path / "ft"
    rc = main(["finetune", "--json", tiny_data["json"], "--images", tiny_data["images"], "--output-dir", str(out),
               "--preset", "tiny", "--max-iter", "2", "--no-progress", "--set", "threads=1",
               "--set", "augment.min_sizes=[64]", "--set", "augment.max_size=64",
               "--set", "model.overrides={num_queries: 8, dec_layers: 1, enc_layers: 1}"])
    assert rc == 0 and "trained steps 0..2" in capsys.readouterr().out
    assert GleeModel.from_pretrained(out / "model").cfg.num_queries == 8
    assert [r["dataset"] for r in read_log(out / "log.jsonl")] == ["custom", "custom"]
    assert main(["recipes"]) == 0 and "lite_stage2.yaml" in capsys.readouterr().out
