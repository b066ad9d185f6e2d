"""Training: plain PyTorch loop and DeepSpeed ZeRO-2 on CPU (train, save, resume, export), and the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from llm_bridge.data import BridgeCollator, HybridDataset, ReasonSegDataset, ReferSegDataset, build_sem_seg
from llm_bridge.lora import LoraSettings
from llm_bridge.model import ReasonSegModel
from llm_bridge.testing import tiny_bridge, tiny_llm_dir, write_lisa_fixture
from llm_bridge.train import CONFIG_DIR, BridgeTrainer, TrainConfig, main, read_prompt_categories, warmup_decay

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: one thread is faster, steadier





@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_lisa_fixture(tmp_path_factory.mktemp("lisa_train"), n_images=2)


def make_batches(model, root, n=3):
    mix = HybridDataset({
        "sem_seg": build_sem_seg(root, "ade20k", samples_per_epoch=8),
        "refer_seg": [ReferSegDataset(root / "refer_seg", "refcoco", samples_per_epoch=8)],
        "reason_seg": [ReasonSegDataset(root / "reason_seg/ReasonSeg", explanatory=-1, samples_per_epoch=8)],
    }, samples_per_epoch=8, seed=3)
    collate = BridgeCollator.for_model(model)
    return [collate([mix[i]]) for i in range(n)]


def trainer_for(tmp_path, deepspeed=None):
    torch.manual_seed(0)
    model = tiny_bridge(tiny_llm_dir())
    cfg = TrainConfig(output_dir=str(tmp_path), steps=3, grad_accum=1, lr=1e-3, warmup_steps=0, log_every=0,
                      save_every=0, deepspeed=deepspeed, precision="bf16" if deepspeed else "fp32",
                      lora=LoraSettings(dropout=0.0))  # no dropout: resumed and continuous runs must match
    return BridgeTrainer(model, cfg, micro_batch=1)


def test_warmup_decay_schedule():
    f = warmup_decay(total_steps=10, warmup_steps=4)
    assert [round(f(s), 3) for s in (0, 2, 4, 7, 10, 12)] == [0.0, 0.5, 1.0, 0.5, 0.0, 0.0]


def test_plain_pytorch_train_save_resume(tmp_path, data_root):
    run = trainer_for(tmp_path)
    batches = make_batches(run.model, data_root)
    losses = []
    for i, batch in enumerate(batches):
        record = run.train_step(batch)
        losses.append(record["loss"])
        if i == 1:
            run.save_checkpoint(tmp_path / "ckpt")
    assert run.step == 3 and all(torch.isfinite(torch.tensor(losses)))
    assert run.model.tower is None  # the frozen tower runs outside the optimised module
    resumed = trainer_for(tmp_path)
    assert resumed.load_checkpoint(tmp_path / "ckpt") == 2
    again = resumed.train_step(batches[2])["loss"]
    assert again == pytest.approx(losses[2], rel=1e-5, abs=1e-6)


def test_deepspeed_zero2_bf16_train_save_resume_export(tmp_path, data_root):
    pytest.importorskip("deepspeed")
    config = CONFIG_DIR / "ds_zero2_bf16.json"
    assert json.loads(config.read_text())["zero_optimization"]["stage"] == 2
    assert json.loads((CONFIG_DIR / "ds_zero3_bf16.json").read_text())["zero_optimization"]["stage"] == 3
    run = trainer_for(tmp_path, deepspeed=str(config))
    assert type(run.engine).__name__ == "DeepSpeedEngine" and run.engine.bfloat16_enabled()
    batches = make_batches(run.model, data_root)
    losses = []
    for i, batch in enumerate(batches):
        losses.append(run.train_step(batch)["loss"])
        if i == 1:
            run.save_checkpoint(tmp_path / "ds_ckpt")
    assert run.step == 3 and losses[0] != losses[2]
    assert (tmp_path / "ds_ckpt/step_2").is_dir()

    resumed = trainer_for(tmp_path, deepspeed=str(config))
    assert resumed.load_checkpoint(tmp_path / "ds_ckpt") == 2
    assert resumed.train_step(batches[2])["loss"] == pytest.approx(losses[2], rel=1e-4)

    with torch.no_grad():
        engine_out = resumed.engine(**resumed._inputs(batches[0]))
    folder = resumed.export(tmp_path / "export")
    exported = ReasonSegModel.from_pretrained(folder)
    with torch.no_grad():
        out = exported(**{k: batches[0][k] for k in ("input_ids", "attention_mask", "labels", "image_index",
                                                     "gt_masks", "original_sizes", "resized_sizes")},
                       pixel_values=batches[0]["pixel_values"])
    # the export holds the fp32 master weights; the engine computes in bf16
    assert float(out.loss) == pytest.approx(float(engine_out.loss), rel=0.05)


def test_train_cli_end_to_end(tmp_path, data_root, capsys):
    status = main([
        "--output-dir", str(tmp_path / "run"), "--llm", str(tiny_llm_dir()), "--glee", "tiny",
        "--image-size", "64", "--dataset-dir", str(data_root), "--dataset", "sem_seg||refer_seg||vqa||reason_seg",
        "--sem-seg-data", "ade20k", "--refer-seg-data", "refcoco", "--steps", "2", "--batch-size", "1",
        "--grad-accum", "1", "--warmup-steps", "0", "--precision", "fp32", "--workers", "0", "--log-every", "1",
    ])
    assert status == 0
    log = capsys.readouterr().out
    assert "p=0.562" in log and "step=2" in log  # LISA's 9/16 sem_seg share; two optimizer steps
    assert (tmp_path / "run/checkpoints/latest").read_text() == "step_2"
    bridge = ReasonSegModel.from_pretrained(tmp_path / "run/bridge")  # adapter form; merging: test_bridge_lora
    assert hasattr(bridge.language_model, "peft_config")


def test_train_cli_pointer_head_with_instance_masks(tmp_path, data_root, capsys):
    names = tmp_path / "instances.json"  # a COCO file: the tower's prompt is its category names
    names.write_text(json.dumps({"categories": [{"id": 1, "name": "red circle"}, {"id": 2, "name": "blue star"}]}))
    status = main([
        "--output-dir", str(tmp_path / "run"), "--llm", str(tiny_llm_dir()), "--glee", "tiny",
        "--image-size", "64", "--dataset-dir", str(data_root), "--dataset", "reason_seg", "--sample-rates", "1",
        "--reason-seg-instances", "--seg-head", "query_pointer", "--prompt-categories", str(names),
        "--explanatory", "-1", "--steps", "2",
        "--batch-size", "1", "--grad-accum", "1", "--warmup-steps", "0", "--precision", "fp32", "--workers", "0",
        "--log-every", "1",
    ])
    assert status == 0 and "step=2" in capsys.readouterr().out
    bridge = ReasonSegModel.from_pretrained(tmp_path / "run/bridge")
    assert bridge.config.seg_head == "query_pointer"
    assert type(bridge.seg_projection).__name__ == "QueryPointerProjection"
    assert bridge.config.prompt_categories == ["red circle", "blue star"]
    assert not bridge.config.query_evidence and bridge.seg_projection.evidence_key is None
    # a second stage that gives the trained bridge's head GLEE's query evidence and trains it
    status = main([
        "--output-dir", str(tmp_path / "run2"), "--resume-bridge", str(tmp_path / "run/bridge"), "--query-evidence",
        "--image-size", "64", "--dataset-dir", str(data_root), "--dataset", "reason_seg", "--sample-rates", "1",
        "--reason-seg-instances", "--explanatory", "-1", "--steps", "2", "--batch-size", "1", "--grad-accum", "1",
        "--warmup-steps", "0", "--precision", "fp32", "--workers", "0", "--lr", "1e-2",
    ])
    assert status == 0
    widened = ReasonSegModel.from_pretrained(tmp_path / "run2/bridge")
    assert widened.config.query_evidence and widened.config.prompt_categories == ["red circle", "blue star"]
    assert widened.seg_projection.evidence_key.in_features == 2 + 5
    assert float(widened.seg_projection.evidence_key.weight.abs().sum()) > 0  # trained from zero
    # a new bridge with the set-aware head on GLEE's evidence for single words: trained end to end
    common = ["--image-size", "64", "--dataset-dir", str(data_root), "--dataset", "reason_seg", "--sample-rates", "1",
              "--reason-seg-instances", "--explanatory", "-1", "--steps", "2", "--batch-size", "1", "--grad-accum",
              "1", "--warmup-steps", "0", "--precision", "fp32", "--workers", "0"]
    status = main(["--output-dir", str(tmp_path / "run3"), "--llm", str(tiny_llm_dir()), "--glee", "tiny",
                   "--seg-head", "query_pointer", "--prompt-categories", str(names), "--query-evidence",
                   "--pointer-context-layers", "1", "--evidence-categories", "red,blue,circle,star", *common])
    assert status == 0
    grouped = ReasonSegModel.from_pretrained(tmp_path / "run3/bridge")
    assert type(grouped.seg_projection).__name__ == "ObjectSetPointerProjection"
    assert grouped.config.evidence_categories == ["red", "blue", "circle", "star"] and grouped.tower.evidence_dim == 9
    with pytest.raises(SystemExit, match="pointer_fit"):
        main(["--output-dir", str(tmp_path / "run4"), "--resume-bridge", str(tmp_path / "run3/bridge"),
              "--pointer-context-layers", "1", *common])
    assert read_prompt_categories(" cat, dog ,") == ["cat", "dog"]
    (tmp_path / "names.txt").write_text("cat\n\ndog\n")
    assert read_prompt_categories(str(tmp_path / "names.txt")) == ["cat", "dog"]
    with pytest.raises(SystemExit, match="no class names"):
        read_prompt_categories(" , ")
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(SystemExit, match="not a COCO JSON"):
        read_prompt_categories(str(tmp_path / "bad.json"))
