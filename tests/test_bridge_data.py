"""LISA data formats, sampling ratios, conversation labels and batching."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from llm_bridge.data import (
    BridgeCollator,
    HybridDataset,
    RandomSampleDataset,
    ReasonSegDataset,
    ReferSegDataset,
    SegSample,
    VQADataset,
    build_sem_seg,
    parse_rates,
)
from llm_bridge.data.conversation import ANSWER_LIST, render, tokenize_conversation, with_image
from llm_bridge.data.reason_seg import rasterize
from llm_bridge.data.refer_seg import load_refs
from llm_bridge.testing import tiny_tokenizer, write_lisa_fixture

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: one thread is faster, steadier





@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_lisa_fixture(tmp_path_factory.mktemp("lisa"), n_images=3)


def seg_count(sample: SegSample) -> int:
    return sum(m["content"].count("[SEG]") for c in sample.conversations for m in c if m["role"] == "assistant")


def test_every_format_yields_aligned_samples(root):
    datasets = [
        ReasonSegDataset(root / "reason_seg/ReasonSeg", "train", explanatory=0.5, samples_per_epoch=30),
        ReferSegDataset(root / "refer_seg", "refcoco", samples_per_epoch=30),
        *build_sem_seg(root, "ade20k", samples_per_epoch=30),
        VQADataset(root / "llava_dataset/llava_instruct_150k.json", root / "coco/train2017", samples_per_epoch=30),
    ]
    for ds in datasets:
        for i in range(6):
            s = ds[i]
            assert s.image.dtype == np.uint8 and s.image.shape == (48, 64, 3)
            assert len(s.masks) == seg_count(s), (ds, s.conversations)
            assert s.conversations and all(c[0]["content"].startswith("<image>") for c in s.conversations)
            assert set(np.unique(s.masks)) <= {0, 1, 255}
        assert ds[3].conversations == ds[3].conversations  # seeded: an index always gives the same draw
    refer = datasets[1][0]
    assert all(c[1]["content"] in ANSWER_LIST for c in refer.conversations) and refer.masks.sum() > 0
    sem = datasets[2][0]  # ADE: label 1 -> class 0 "wall", label 3 -> class 2 "box"; 0 ignored
    assert any("box" in c[0]["content"] or "wall" in c[0]["content"] for c in sem.conversations)
    vqa = datasets[3][0]
    assert len(vqa.masks) == 0 and [m["role"] for m in vqa.conversations[0]] == ["user", "assistant"] * 2


def test_reason_seg_rasterization_and_explanatory_modes(root):
    shapes = [{"label": "target", "points": [[2, 2], [9, 2], [9, 9], [2, 9]]},
              {"label": "ignore", "points": [[0, 0], [3, 0], [3, 3], [0, 3]]},
              {"label": "flag", "points": [[10, 10], [12, 10], [12, 12]]}]
    mask = rasterize(shapes, 12, 14)
    assert mask[5, 5] == 1 and mask[1, 1] == 255 and mask[11, 11] == 0  # larger first, smaller wins, flag dropped
    ds = ReasonSegDataset(root / "reason_seg/ReasonSeg", "train", explanatory=0.5, samples_per_epoch=200)
    answers = [ds[i] for i in range(40) if ds[i].image_path.endswith("img000.jpg")]
    kinds = {("[SEG]" in s.conversations[0][1]["content"], "bright" in s.conversations[0][1]["content"])
             for s in answers}
    assert {(True, False), (True, True), (False, True)} <= kinds  # [SEG] / [SEG] + explanation / text only
    no_expl = ReasonSegDataset(root / "reason_seg/ReasonSeg", "train", explanatory=-1, samples_per_epoch=10)
    assert not no_expl.explanations and all(seg_count(no_expl[i]) > 0 for i in range(5))
    with pytest.raises(FileNotFoundError, match="split folder"):
        ReasonSegDataset(root / "reason_seg/ReasonSeg", "val")


def test_refs_pickle_loader_refuses_code(root, tmp_path):
    assert len(load_refs(root / "refer_seg/refcoco/refs(unc).p")) == 3

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    bad = tmp_path / "refs(unc).p"
    bad.write_bytes(pickle.dumps([Evil()]))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        load_refs(bad)


class _Constant(RandomSampleDataset):
    def __init__(self, kind: str):
        super().__init__(10)
        self.kind = kind

    def sample(self, rng):
        image = np.zeros((4, 4, 3), np.uint8)
        return SegSample(image, [[{"role": "user", "content": "<image>\nhi"}]], np.zeros((0, 4, 4), np.uint8),
                         self.kind)


def test_hybrid_mix_follows_lisa_rates():
    types = ("sem_seg", "refer_seg", "vqa", "reason_seg")
    mix = HybridDataset({k: [_Constant(k), _Constant(k)] for k in types}, samples_per_epoch=4000, seed=1)
    counts = {k: 0 for k in types}
    for i in range(4000):
        counts[mix[i].source] += 1
    for k, rate in zip(types, (9, 3, 3, 1)):
        assert abs(counts[k] / 4000 - rate / 16) < 0.025, counts
    assert parse_rates("sem_seg||vqa", "2,1") == {"sem_seg": 2.0, "vqa": 1.0}
    with pytest.raises(ValueError, match="2 dataset types but 3"):
        parse_rates("sem_seg||vqa", "1,2,3")
    with pytest.raises(ValueError, match="no such datasets"):
        HybridDataset({"vqa": [_Constant("vqa")]}, rates={"vqa": 1, "reason_seg": 1})


@pytest.mark.parametrize("template", ["chatml", "llava_v1"])
def test_labels_cover_only_the_answers(template):
    tok = tiny_tokenizer()
    tok.add_tokens(["[SEG]"])
    if template == "llava_v1":
        tok.chat_template = None
    messages = [{"role": "user", "content": with_image("Sure, segment the cat.")},
                {"role": "assistant", "content": "Sure, [SEG]."},
                {"role": "user", "content": "And the dog?"},
                {"role": "assistant", "content": "It is [SEG]."}]
    ids, labels = tokenize_conversation(tok, messages)
    supervised = tok.decode([i for i, lab in zip(ids, labels) if lab != -100])
    assert supervised.replace(" ", "") == "Sure,[SEG].<|im_end|>Itis[SEG].<|im_end|>"
    if template == "llava_v1":
        assert "USER: <image>" in render(tok, messages) and "ASSISTANT: Sure" in render(tok, messages)


def test_collator_batches_rows_per_image_and_keeps_masks_aligned(root):
    from llm_bridge.testing import tiny_bridge, tiny_llm_dir

    model = tiny_bridge(tiny_llm_dir())
    ds = ReferSegDataset(root / "refer_seg", "refcoco", samples_per_epoch=10)
    samples = [ds[0], ds[1]]
    batch = BridgeCollator.for_model(model)(samples)
    rows = [len(s.conversations) for s in samples]
    assert batch["image_index"].tolist() == [0] * rows[0] + [1] * rows[1]
    assert [len(m) for m in batch["gt_masks"]] == [len(s.masks) for s in samples]
    assert tuple(batch["pixel_values"].shape) == (2, 3, 64, 64)
    assert int((batch["input_ids"] == model.seg_token_id).sum()) == sum(len(s.masks) for s in samples)
    assert batch["resized_sizes"][0] == (48, 64)
    # truncation drops the masks of the [SEG] tokens it cuts
    long = SegSample(samples[0].image, [[{"role": "user", "content": with_image("hi " * 600)},
                                          {"role": "assistant", "content": "It is [SEG]."}]],
                     samples[0].masks[:1], "long")
    with pytest.warns(UserWarning, match="truncated"):
        cut = BridgeCollator.for_model(model)([long])
    assert len(cut["gt_masks"][0]) == 0 and cut["input_ids"].shape[1] <= model.max_context
    bad = SegSample(samples[0].image, samples[0].conversations, samples[0].masks[:0], "bad")
    with pytest.raises(ValueError, match="more \\[SEG\\] tokens than"):
        BridgeCollator.for_model(model)([bad])
    assert torch.is_tensor(batch["labels"])
