"""llm_bridge.pointer_fit: refit the query_pointer head on cached [SEG] states."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llm_bridge.data import BridgeCollator
from llm_bridge.data.reason_seg import ReasonSegDataset
from llm_bridge.model import QueryPointerProjection, ReasonSegModel
from llm_bridge.pointer_fit import collect_pointer_examples, fit_pointer_head, main, pick_accuracy
from llm_bridge.testing import tiny_bridge, tiny_llm_dir, write_lisa_fixture

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model():
    return tiny_bridge(tiny_llm_dir(), pooled_tokens_per_side=0, seg_head="query_pointer")


@pytest.fixture(scope="module")
def reason_seg(tmp_path_factory):
    return write_lisa_fixture(tmp_path_factory.mktemp("lisa_fit"), n_images=2) / "reason_seg/ReasonSeg"


def test_collected_examples_are_the_models_own_states_and_ious(model, reason_seg):
    dataset = ReasonSegDataset(reason_seg, explanatory=-1, instance_masks=True)
    examples = collect_pointer_examples(model, dataset, passes=1, seed=5, progress=False)
    answers = [len(dataset.sample_image(path, np.random.default_rng([5, 0, i])).conversations)
               for i, path in enumerate(dataset.images)]
    assert len(examples) == sum(answers) >= 2  # every answer of every image has [SEG]s
    # the first image's sample, recomputed by hand
    sample = dataset.sample_image(dataset.images[0], np.random.default_rng([5, 0, 0]))
    batch = BridgeCollator.for_model(model)([sample])
    with torch.no_grad():
        visual = model.encode_images(batch["pixel_values"])
        out = model(batch["input_ids"], batch["attention_mask"], visual=visual, image_index=batch["image_index"],
                    return_hidden=True)
        states = model.seg_states(out.hidden_states, model.prepare_inputs(batch["input_ids"],
                                                                           batch["attention_mask"], None, visual))
        ious = model.query_target_ious(visual, 0, batch["gt_masks"][0], batch["original_sizes"][0],
                                       batch["resized_sizes"][0])
    first = examples[0]
    n = first["states"].shape[0]
    torch.testing.assert_close(first["states"], states[0].float())
    torch.testing.assert_close(first["ious"], ious[:n])
    assert first["queries"].shape == (model.tower.num_queries, model.tower.hidden_size)
    assert first["evidence"].shape == (model.tower.num_queries, model.tower.evidence_dim)
    assert first["sets"].tolist() == [0] * n  # one answer's objects: an unordered set
    # several datasets: their images in turn, the first one's examples unchanged
    both = collect_pointer_examples(model, [dataset, dataset], passes=1, seed=5, progress=False)
    assert len(both) > len(examples)
    for got, want in zip(both, examples):
        torch.testing.assert_close(got["states"], want["states"])


def _evidence_examples(seed: int, count: int, hidden: int = 16, queries: int = 8, channels: int = 12,
                       evidence_dim: int = 6) -> list[dict]:
    """One question ("the query with the largest evidence feature 0") on new random images: a rule only the
    evidence keys can see (the query embeddings are noise)."""
    g = torch.Generator().manual_seed(seed)
    state = torch.ones(1, hidden)
    out = []
    for _ in range(count):
        evidence = torch.rand(queries, evidence_dim, generator=g)
        ious = torch.zeros(1, queries)
        ious[0, int(evidence[:, 0].argmax())] = 0.9
        out.append({"states": state, "queries": 0.1 * torch.randn(queries, channels, generator=g),
                    "evidence": evidence, "ious": ious, "sets": torch.tensor([-1])})
    return out


def test_fitting_with_evidence_learns_a_rule_that_generalises():
    torch.manual_seed(0)
    train, val = _evidence_examples(0, 200), _evidence_examples(1, 100)
    head = QueryPointerProjection(16, 12, key_dim=8, evidence_dim=6)
    before = pick_accuracy(head, val)
    history = fit_pointer_head(head, train, epochs=15, lr=1e-2, val_examples=val, log=lambda *a: None)
    assert before < 0.4 and history[-1]["val_pick_accuracy"] > 0.9
    assert history[-1]["loss"] < history[0]["loss"]
    with pytest.raises(ValueError, match="no cached"):
        fit_pointer_head(head, [])


def test_cli_writes_then_reads_the_cache_and_refits(model, reason_seg, tmp_path, capsys):
    model.save_pretrained(tmp_path / "bridge")
    data = ["--reason-seg-data", f"{reason_seg}|train", f"{reason_seg}|train", "--val-data", f"{reason_seg}|train"]
    first = ["--bridge", str(tmp_path / "bridge"), "--output-dir", str(tmp_path / "fit0"), *data,
             "--query-evidence", "--epochs", "1", "--cache", str(tmp_path / "written.pt")]
    assert main(first) == 0
    written = torch.load(tmp_path / "written.pt", weights_only=True)  # plain tensors: safe to load
    assert written and set(written[0]) == {"states", "queries", "evidence", "ious", "sets"}
    assert "val_pick_accuracy" in capsys.readouterr().out
    widened = ReasonSegModel.from_pretrained(tmp_path / "fit0")  # the trained head, widened by evidence keys
    assert widened.config.query_evidence and widened.seg_projection.evidence_key is not None
    # a random tiny GLEE covers no target, so fit on a cache of answers whose target queries are known
    tower = model.tower
    cache = _evidence_examples(0, 64, model.hidden_size, tower.num_queries, tower.hidden_size, tower.evidence_dim)
    torch.save(cache, tmp_path / "cache.pt")
    args = ["--bridge", str(tmp_path / "bridge"), "--output-dir", str(tmp_path / "fit"), "--reason-seg-data",
            f"{reason_seg}|train", "--query-evidence", "--fresh-head", "--epochs", "3", "--lr", "1e-2",
            "--cache", str(tmp_path / "cache.pt")]
    torch.save(cache[:16], tmp_path / "more.pt")
    assert main(args + ["--extra-cache", str(tmp_path / "more.pt")]) == 0
    printed = capsys.readouterr().out
    assert "64 cached answers read" in printed and "16 cached answers read" in printed
    fitted = ReasonSegModel.from_pretrained(tmp_path / "fit")
    head = fitted.seg_projection
    assert fitted.config.query_evidence and float(head.evidence_key.weight.detach().abs().sum()) > 0
    assert pick_accuracy(head, cache) > 0.5  # learnt from the cache (chance: 1/6)
    torch.save(_evidence_examples(0, 4), tmp_path / "other.pt")  # written for another bridge
    with pytest.raises(ValueError, match="another bridge"):
        main(args[:-1] + [str(tmp_path / "other.pt")])
    with pytest.raises(ValueError, match="another bridge"):
        main(args + ["--extra-cache", str(tmp_path / "other.pt")])
    with pytest.raises(FileNotFoundError, match="missing.pt does not exist"):
        main(args + ["--extra-cache", str(tmp_path / "missing.pt")])
    mlp = tiny_bridge(tiny_llm_dir(), pooled_tokens_per_side=0)
    mlp.save_pretrained(tmp_path / "mlp")
    with pytest.raises(ValueError, match="query_pointer"):
        main(["--bridge", str(tmp_path / "mlp"), "--output-dir", str(tmp_path / "x"), "--reason-seg-data",
              f"{reason_seg}|train"])
