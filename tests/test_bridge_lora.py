"""LoRA (peft) save -> load -> merge, and 4/8-bit loading (bitsandbytes on CPU) incl. QLoRA gradients."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from glee.modeling.glee_model import GleeModel
from llm_bridge.data.conversation import pad_batch, tokenize_conversation, with_image
from llm_bridge.lora import LoraSettings, apply_lora, count_parameters, trainable_parameters
from llm_bridge.model import ReasonSegModel, build_bridge
from llm_bridge.testing import tiny_bridge, tiny_llm_dir

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: one thread is faster, steadier

CONV = [{"role": "user", "content": with_image("Segment the cat and the dog.")},
        {"role": "assistant", "content": "The cat is [SEG] and the dog is [SEG]."}]





def inputs(model):
    ids, labels = tokenize_conversation(model.tokenizer, CONV)
    ids, mask, labels = pad_batch([ids], model.pad_token_id, labels=[labels])
    rng = np.random.default_rng(0)
    pixel_values, original, resized = model.preprocess_images([rng.integers(0, 255, (48, 80, 3), dtype=np.uint8)])
    gt = [torch.from_numpy((rng.random((2, 48, 80)) > 0.5).astype(np.uint8))]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "gt_masks": gt,
            "original_sizes": original, "resized_sizes": resized, "visual": model.encode_images(pixel_values)}


def evaluate(model, batch):
    with torch.no_grad():
        out = model(**batch, return_hidden=True)
    return out.hidden_states, out.pred_masks[0], out.loss


@pytest.mark.parametrize("tie", [False, True], ids=["untied_head", "tied_head"])
def test_lora_save_load_merge_identical(tmp_path, tie):
    model = tiny_bridge(tiny_llm_dir(tie=tie))
    apply_lora(model, LoraSettings(dropout=0.0))
    params = trainable_parameters(model)
    names = " ".join(params)
    assert "lora_A" in names and "q_proj" in names and "v_proj" in names and "k_proj" not in names
    assert "trainable_tokens_delta" in names and "mm_projector" in names and "seg_projection" in names
    assert ("lm_head.token_adapter" in names) is (not tie)  # an untied head trains its new rows too
    trainable, total = count_parameters(model)
    assert trainable < 0.2 * total
    batch = inputs(model)
    optimizer = torch.optim.AdamW(list(params.values()), lr=1e-2)
    model.train()
    for _ in range(2):  # move every trainable tensor away from its initial value
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    ref_hidden, ref_masks, ref_loss = evaluate(model, batch)

    model.save_pretrained(tmp_path / "adapter")
    manifest = json.loads((tmp_path / "adapter/bridge_config.json").read_text())
    assert manifest["language_model"] == "adapter"
    adapter_file = tmp_path / "adapter/adapter/adapter_model.safetensors"
    assert adapter_file.stat().st_size < 200_000  # LoRA + 2 token rows, not the full vocabulary matrices
    loaded = ReasonSegModel.from_pretrained(tmp_path / "adapter")
    hidden, masks, loss = evaluate(loaded, batch)
    assert torch.equal(hidden, ref_hidden) and torch.equal(masks, ref_masks) and torch.equal(loss, ref_loss)

    loaded.merge_lora()
    assert not hasattr(loaded.language_model, "peft_config")
    hidden, masks, loss = evaluate(loaded, batch)
    torch.testing.assert_close(hidden, ref_hidden, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(masks, ref_masks, atol=1e-4, rtol=1e-5)
    if tie:
        return  # the standalone round trip does not depend on tying; checked once below
    loaded.save_pretrained(tmp_path / "merged")
    assert json.loads((tmp_path / "merged/bridge_config.json").read_text())["language_model"] == "full"
    standalone = ReasonSegModel.from_pretrained(tmp_path / "merged")
    hidden2, masks2, loss2 = evaluate(standalone, batch)
    assert torch.equal(hidden2, hidden) and torch.equal(masks2, masks) and torch.equal(loss2, loss)


@pytest.mark.parametrize("quantization", ["4bit", "8bit"])
def test_quantized_loading_and_qlora_on_cpu(quantization):
    import bitsandbytes as bnb

    reference = tiny_bridge(tiny_llm_dir(hidden_size=128))
    model = build_bridge(reference.config, glee_model=reference._active_tower().glee, quantization=quantization)
    layer = model.base_model.model.layers[0].self_attn.q_proj
    assert isinstance(layer, bnb.nn.Linear4bit if quantization == "4bit" else bnb.nn.Linear8bitLt)
    model.mm_projector.load_state_dict(reference.mm_projector.state_dict())
    model.seg_projection.load_state_dict(reference.seg_projection.state_dict())
    batch = inputs(reference)
    _, _, ref_loss = evaluate(reference, batch)
    _, masks, loss = evaluate(model, batch)  # an eval pass first: bnb's CPU path may repack 4-bit weights here
    assert torch.isfinite(loss) and abs(float(loss - ref_loss)) < 0.5 * float(ref_loss)
    assert masks.shape == (2, 48, 80)
    out = model.generate(batch["input_ids"][:, :-6], visual=batch["visual"], max_new_tokens=3)
    assert out.lengths[0] >= 1

    apply_lora(model)  # QLoRA-style: LoRA on the quantised LM
    model.train()
    model(**batch).loss.backward()
    grads = {n: p.grad for n, p in trainable_parameters(model).items()}
    lora_b = [g for n, g in grads.items() if "lora_B" in n]
    assert lora_b and all(g is not None and g.abs().sum() > 0 for g in lora_b)
    projector = [g for n, g in grads.items() if n.startswith("mm_projector")]
    assert all(g is not None and g.abs().sum() > 0 for g in projector), "gradients must flow through the 4/8-bit LM"


def test_bridge_can_reference_a_packaged_glee_instead_of_copying_it(tmp_path, monkeypatch):
    package = tmp_path / "site" / "shipped_glee"
    (package / "assets").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    model = tiny_bridge(tiny_llm_dir(tie=True))
    apply_lora(model, LoraSettings(dropout=0.0))
    model.eval()
    model.tower.glee.save_pretrained(package / "assets" / "g")
    batch = inputs(model)
    _, ref_masks, _ = evaluate(model, batch)

    model.save_pretrained(tmp_path / "bridge", glee_reference="shipped_glee:assets/g")
    assert not (tmp_path / "bridge" / "glee").exists()
    manifest = json.loads((tmp_path / "bridge" / "bridge_config.json").read_text())
    assert manifest["glee_reference"]["source"] == "shipped_glee:assets/g"
    loaded = ReasonSegModel.from_pretrained(tmp_path / "bridge")
    torch.testing.assert_close(evaluate(loaded, batch)[1], ref_masks)

    weights = package / "assets" / "g" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")  # the packaged weights changed
    with pytest.raises(ValueError, match="different weights"):
        ReasonSegModel.from_pretrained(tmp_path / "bridge")
    with pytest.raises(ValueError, match="not those of"):  # the tower does not hold the referenced weights
        other = tiny_bridge(tiny_llm_dir(tie=True), seed=1)
        model.tower.glee.save_pretrained(package / "assets" / "g")
        other.save_pretrained(tmp_path / "other", glee_reference="shipped_glee:assets/g")
    with pytest.raises(ValueError, match="expected '<package>:<folder>'"):
        model.save_pretrained(tmp_path / "bad", glee_reference="assets/g")


def test_a_saved_bridge_can_continue_on_another_glee(tmp_path):
    model = tiny_bridge(tiny_llm_dir(tie=True))
    apply_lora(model, LoraSettings(dropout=0.0))
    model.eval().save_pretrained(tmp_path / "bridge")
    retrained = tiny_bridge(tiny_llm_dir(tie=True), seed=1).tower.glee  # same architecture, other weights
    retrained.save_pretrained(tmp_path / "retrained")
    loaded = ReasonSegModel.from_pretrained(tmp_path / "bridge", glee=tmp_path / "retrained")
    own = ReasonSegModel.from_pretrained(tmp_path / "bridge")
    for key, value in retrained.state_dict().items():
        assert torch.equal(loaded.tower.glee.state_dict()[key], value)
    changed = [k for k, v in own.tower.glee.state_dict().items() if not torch.equal(v, retrained.state_dict()[k])]
    assert changed  # the override really replaced the tower
    torch.testing.assert_close(loaded.mm_projector.state_dict(), own.mm_projector.state_dict())  # rest unchanged
    other_arch = GleeModel(dataclasses.replace(retrained.cfg, num_queries=retrained.cfg.num_queries + 1))
    with pytest.raises(ValueError, match="different architecture"):
        ReasonSegModel.from_pretrained(tmp_path / "bridge", glee=other_arch)
