"""Data pipeline: readers and bad data, routing, category padding, sampler, augmentations, ShapesWorld."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import glee  # noqa: F401  (torchvision shim first)
from train.batching import BatchingConfig, DatasetMeta, build_vocabulary, collate
from train.data.coco import load_coco_instances
from train.data.common import DatasetFormatError, SkipStats
from train.data.loader import BatchSource, DatasetSpec
from train.data.refcoco import clean_expression, load_refcoco
from train.data.routing import dn_table, route_task
from train.data.sampler import MultiDatasetSampler
from train.data.shapesworld import ShapesWorld, ShapesWorldConfig, object_mask, write_dataset
from train.data.transforms import AugmentConfig, apply_boxes, apply_masks, boxes_from_masks, sample_ops
from train.data.ytvis import load_ytvis, sample_clip


def _square_rle(h: int, w: int, box: tuple[int, int, int, int]) -> dict:
    from pycocotools import mask as mask_util

    m = np.zeros((h, w), dtype=np.uint8)
    x1, y1, x2, y2 = box
    m[y1:y2, x1:x2] = 1
    rle = mask_util.encode(np.asfortranarray(m))
    return {"size": [h, w], "counts": rle["counts"].decode("ascii")}


def _bad_coco(tmp_path: Path) -> Path:
    images = [
        {"id": 1, "file_name": "a.jpg", "height": 40, "width": 60},
        {"id": 2, "file_name": "b.jpg", "height": 40, "width": 60},  # only bad annotations -> empty
        {"id": 3, "file_name": "c.jpg"},  # missing height/width
        {"id": 4, "file_name": "d.jpg", "height": 40, "width": 60},  # no annotations at all
    ]
    anns = [
        {"id": 1, "image_id": 1, "category_id": 7, "bbox": [10, 10, 20, 10], "iscrowd": 0,
         "segmentation": [[10, 10, 30, 10, 30, 20, 10, 20]]},
        {"id": 2, "image_id": 1, "category_id": 3, "bbox": [50, 30, 30, 30], "iscrowd": 0,  # partly outside
         "segmentation": _square_rle(40, 60, (50, 30, 60, 40))},
        {"id": 3, "image_id": 2, "category_id": 3, "bbox": [100, 100, 5, 5]},  # entirely outside
        {"id": 4, "image_id": 2, "category_id": 99, "bbox": [1, 1, 5, 5]},  # unknown category
        {"id": 5, "image_id": 2, "bbox": [1, 1, 5, 5]},  # missing category_id
        {"id": 6, "image_id": 2, "category_id": 3, "bbox": [1, 1, 0, 5]},  # empty box
        {"id": 7, "image_id": 2, "category_id": 3, "bbox": [1, 1, 5, 5], "iscrowd": 1},  # crowd
        {"id": 8, "image_id": 42, "category_id": 3, "bbox": [1, 1, 5, 5]},  # unknown image
        {"id": 9, "image_id": 2, "category_id": 3, "bbox": ["x", 1, 5, 5]},  # malformed box
    ]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"images": images, "annotations": anns,
                                "categories": [{"id": 7, "name": "cat"}, {"id": 3, "name": "dog"}]}))
    Image.fromarray(np.full((40, 60, 3), 90, dtype=np.uint8)).save(tmp_path / "a.jpg")
    return path


def test_coco_reader_counts_bad_data(tmp_path: Path) -> None:
    ds = load_coco_instances(_bad_coco(tmp_path), tmp_path, "custom")
    assert [r["image_id"] for r in ds.records] == [1]
    assert ds.class_names == ["dog", "cat"]  # contiguous ids in sorted json-id order
    anns = ds.records[0]["annotations"]
    assert [a["category_id"] for a in anns] == [1, 0]
    assert anns[1]["bbox"] == [50.0, 30.0, 60.0, 40.0]  # clipped to the image
    assert ds.has_masks
    expected = {"bbox_clipped_to_image": 1, "bbox_outside_image": 1, "unknown_category_id": 1,
                "annotation_missing_fields": 1, "empty_bbox": 1, "crowd_region": 1, "annotation_unknown_image": 1,
                "malformed_bbox": 1, "image_missing_fields": 1, "image_without_annotations": 2}
    assert ds.stats.as_dict() == expected
    with pytest.raises(DatasetFormatError, match="category_id 99"):
        load_coco_instances(_bad_coco(tmp_path), tmp_path, "custom", strict_categories=True)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"images": [], "categories": []}, "missing field"),
        ({"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}, {"id": 1, "name": "b"}]},
         "duplicate category"),
        ({"images": [{"id": 1, "file_name": "a", "height": 2, "width": 2}], "annotations": [],
          "categories": [{"id": 1, "name": "a"}]}, "no usable images"),
        ("{not json", "not valid JSON"),
    ],
)
def test_coco_reader_clear_errors(tmp_path: Path, content: object, message: str) -> None:
    path = tmp_path / "x.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(DatasetFormatError, match=message):
        load_coco_instances(path, tmp_path, "custom")
    with pytest.raises(DatasetFormatError, match="not found"):
        load_coco_instances(tmp_path / "missing.json", tmp_path, "custom")


def test_unreadable_images_are_replaced_not_fatal(tmp_path: Path) -> None:
    """A missing and a corrupt image file mid-epoch: counted, replaced by usable samples, never a crash."""
    rng = np.random.default_rng(0)
    images, anns = [], []
    for i in range(4):
        name = f"{i}.jpg"
        images.append({"id": i + 1, "file_name": name, "height": 32, "width": 48})
        anns.append({"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [4, 4, 10, 10]})
        if i == 0:
            continue  # missing file
        if i == 1:
            (tmp_path / name).write_bytes(b"not a jpeg")
            continue
        Image.fromarray(rng.integers(0, 255, (32, 48, 3), dtype=np.uint8)).save(tmp_path / name)
    (tmp_path / "d.json").write_text(json.dumps({"images": images, "annotations": anns,
                                                 "categories": [{"id": 1, "name": "thing"}]}))
    spec = DatasetSpec.from_dict({"name": "d", "reader": "coco", "json": "d.json", "image_root": ".",
                                  "dataset_name": "things", "batch_size": 2}, tmp_path)
    from train.data.loader import load_dataset

    source = BatchSource([load_dataset(spec)], [spec], AugmentConfig(kind="resize", min_sizes=[32], max_size=64),
                         BatchingConfig(), seed=0)
    skipped: Counter = Counter()
    for step in range(6):
        batch = source[step]
        assert batch.images.shape == (2, 3, 32, 64) and batch.vocabulary == ["thing"]
        skipped.update(batch.skipped)
    assert skipped["unreadable_sample"] >= 1 and skipped["sample_replaced"] == skipped["unreadable_sample"]


def test_refcoco_reader_and_expression_rules(tmp_path: Path) -> None:
    images = [{"id": 1, "file_name": "a.jpg", "height": 40, "width": 60, "expressions": ["The Man, on the LEFT!"]},
              {"id": 2, "file_name": "a.jpg", "height": 40, "width": 60, "expressions": []}]
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 10, 10]},
            {"id": 2, "image_id": 2, "category_id": 1, "bbox": [1, 1, 10, 10]}]
    (tmp_path / "r.json").write_text(json.dumps({"images": images, "annotations": anns,
                                                 "categories": [{"id": 1, "name": "object"}]}))
    ds = load_refcoco(tmp_path / "r.json", tmp_path)
    assert len(ds) == 1 and ds.stats.as_dict() == {"image_without_expression": 1}
    assert route_task(ds.records[0]) == "grounding" and ds.class_names == ["object"]
    assert clean_expression("The Man, on the LEFT!") == "the man on the left"
    Image.fromarray(np.zeros((40, 60, 3), dtype=np.uint8)).save(tmp_path / "a.jpg")
    from train.data.mapper import SampleMapper

    mapper = SampleMapper(AugmentConfig(kind="multiscale", min_sizes=[40], max_size=100, crop_prob=0.0))
    flips = {}
    for seed in range(12):
        s = mapper(ds.records[0], "grounding", False, random.Random(seed), SkipStats())
        flipped = bool(s["instances"]["boxes"][0, 0] > 30)
        flips[flipped] = s["expression"]
    assert flips == {False: "the man on the left", True: "the man on the right"}


def test_routing_rules() -> None:
    assert route_task({"dataset_name": "obj365v2"}) == "obj365"
    assert route_task({"dataset_name": "rvos-refytb"}) == "rvos"
    assert route_task({"dataset_name": "UVO_image"}) == "sa1b"
    assert route_task({"dataset_name": "coco"}) == "coco"
    assert route_task({"expressions": ["x"]}) == "grounding"
    assert route_task({"task": "vg"}) == "vg"
    assert route_task({"not_exhaustive_category_ids": []}) == "lvis"
    with pytest.raises(ValueError, match="dataset_name"):
        route_task({})
    assert dn_table("lvis", 100) == ("lvis", 100) and dn_table("my_set", 12) == ("coco", 12)
    assert dn_table("my_set", 150) == ("vg", 150)


def test_category_padding_to_100() -> None:
    names = [f"class{i}" for i in range(300)]
    meta = DatasetMeta("lvis", names, False, False)
    targets = [{"labels": torch.tensor([250, 7, 7])}, {"labels": torch.tensor([42])}]
    originals = [[names[int(c)] for c in t["labels"]] for t in targets]
    vocab, out = build_vocabulary(targets, meta, "lvis", BatchingConfig(), random.Random(0), SkipStats())
    assert len(vocab) == 100 and len(set(vocab)) == 100
    assert vocab[:3] == ["class7", "class42", "class250"]  # positives first
    assert [[vocab[int(c)] for c in t["labels"]] for t in out] == originals
    # a dataset with a small list keeps it whole
    vocab, _ = build_vocabulary([{"labels": torch.tensor([1])}], DatasetMeta("c", names[:5], False, False), "coco",
                                BatchingConfig(), random.Random(0), SkipStats())
    assert vocab == names[:5]


def test_multi_dataset_sampler_ratios_batch_sizes_and_determinism() -> None:
    groups = [[0] * 30 + [1] * 10, [0] * 7]
    sampler = MultiDatasetSampler(groups, ratios=[3.0, 1.0], batch_sizes=[2, 3], seed=5)
    counts = Counter()
    seen = Counter()
    for step in range(2000):
        d, idx = sampler.batch(step)
        counts[d] += 1
        assert len(idx) == (2 if d == 0 else 3)
        assert len({groups[d][i] for i in idx}) == 1  # one aspect group per batch
        if d == 1:
            seen.update(idx)
    assert abs(counts[0] / 2000 - 0.75) < 0.04
    assert max(seen.values()) - min(seen.values()) <= 1  # passes over the dataset are permutations
    fresh = MultiDatasetSampler(groups, ratios=[3.0, 1.0], batch_sizes=[2, 3], seed=5)
    assert [fresh.batch(s) for s in (1999, 17, 5000)] == [sampler.batch(s) for s in (1999, 17, 5000)]
    other_rank = MultiDatasetSampler(groups, ratios=[3.0, 1.0], batch_sizes=[2, 3], seed=5, rank=1)
    assert [other_rank.batch(s) for s in range(20)] != [sampler.batch(s) for s in range(20)]
    with pytest.raises(ValueError, match="positive"):
        MultiDatasetSampler(groups, ratios=[0.0, 1.0], batch_sizes=[2, 3])


@pytest.mark.parametrize("kind", ["multiscale", "lsj"])
def test_augmentations_keep_boxes_and_masks_aligned(kind: str) -> None:
    cfg = AugmentConfig(kind=kind, min_sizes=[48, 64], max_size=120, crop_pre_sizes=[60], crop_size=(30, 50),
                        image_size=96, crop_prob=1.0)
    masks = np.zeros((2, 50, 80), dtype=bool)
    masks[0, 10:30, 5:25] = True
    masks[1, 20:45, 50:78] = True
    boxes = boxes_from_masks(masks)
    for seed in range(20):
        ops = sample_ops(50, 80, cfg, random.Random(seed))
        new_masks = apply_masks(masks, ops)
        new_boxes = apply_boxes(boxes, ops, (50, 80))
        from_masks = boxes_from_masks(new_masks)
        for b, m, bm in zip(new_boxes, new_masks, from_masks):
            if m.any():
                assert np.abs(b - bm).max() <= 2.5  # nearest-neighbour mask resize vs exact box maths
        if kind == "lsj":
            assert new_masks.shape[1:] == (96, 96)
        else:
            assert min(new_masks.shape[1:]) in (48, 64) or max(new_masks.shape[1:]) == 120


def test_ytvis_reader_and_clip_sampling(tmp_path: Path) -> None:
    videos = [{"id": 1, "file_names": [f"v/{i}.jpg" for i in range(6)], "height": 30, "width": 40},
              {"id": 2, "file_names": ["w/0.jpg"], "height": 30, "width": 40}]
    anns = [
        {"id": 1, "video_id": 1, "category_id": 5, "bboxes": [None, None, [1, 1, 5, 5], [2, 2, 5, 5], None, None],
         "segmentations": [None] * 6},
        {"id": 2, "video_id": 1, "category_id": 5, "bboxes": [[1, 1, 5, 5]] * 5, "segmentations": [None] * 5},
        {"id": 3, "video_id": 2, "category_id": 5, "bboxes": [None], "segmentations": [None]},
    ]
    (tmp_path / "v.json").write_text(json.dumps({"videos": videos, "annotations": anns,
                                                 "categories": [{"id": 5, "name": "fish"}]}))
    ds = load_ytvis(tmp_path / "v.json", tmp_path, "ytvis19")
    assert len(ds) == 1 and ds.is_video and not ds.has_masks
    assert ds.stats.as_dict() == {"annotation_length_mismatch": 1, "instance_absent_in_all_frames": 1,
                                  "video_without_annotations": 1}
    for seed in range(30):
        frames = sample_clip(ds.records[0], 2, 2, random.Random(seed))
        assert len(frames) == 2 and abs(frames[0] - frames[1]) <= 2
        assert frames[0] in (2, 3) or all(f not in (2, 3) for f in frames)


def test_shapesworld_is_deterministic_and_respects_its_rules(tmp_path: Path) -> None:
    cfg = ShapesWorldConfig(seed=1)
    world = ShapesWorld(cfg)
    held = set(cfg.heldout)
    for i in range(6):
        scene = world.image("train", i)
        assert 320 <= scene["height"] <= 512 and 320 <= scene["width"] <= 512
        assert 3 <= len(scene["objects"]) <= 10
        for obj, vis in zip(scene["objects"], scene["masks"]):
            assert (obj.color, obj.shape) not in held and 12 <= obj.size <= 160
            assert vis.sum() >= 0.5 * object_mask(obj, scene["height"], scene["width"]).sum()  # occlusion <= 50%
        for t, exprs in scene["expressions"]:
            target = scene["objects"][t]
            assert all(target.name in e for e in exprs)
    again = ShapesWorld(cfg).image("train", 3)
    assert np.array_equal(again["image"], world.image("train", 3)["image"])
    assert any((o.color, o.shape) in held for o in world.image("heldout", 0)["objects"])
    clip = world.video("val", 0)
    assert clip["masks"].shape[0] == cfg.video_frames and len(clip["objects"]) >= 3
    small = ShapesWorldConfig(seed=2, min_side=64, max_side=80, max_object=40, video_frames=3)
    paths = write_dataset(tmp_path / "sw", {"train": 2, "heldout": 1}, {"train": 1}, small)
    coco = json.loads(Path(paths["train"]["instances"]).read_text())
    assert len(coco["categories"]) == 56 and len(coco["images"]) == 2
    ds = load_coco_instances(paths["train"]["instances"], paths["train"]["image_root"], "shapesworld")
    assert ds.has_masks and ds.stats.total() == 0
    assert len(load_coco_instances(paths["heldout"]["instances"], paths["heldout"]["image_root"],
                                   "shapesworld").class_names) == 64
    refs = load_refcoco(paths["train"]["refs"], paths["train"]["image_root"])
    assert all(r["expressions"] for r in refs.records)
    vids = load_ytvis(paths["train"]["videos"], paths["train"]["video_root"], "shapesworld_video")
    assert vids.is_video and vids.has_masks and len(vids.records[0]["file_names"]) == 3


def test_collate_video_and_visual_prompts() -> None:
    h, w = 40, 56

    def inst(n: int, ids: list[int]) -> dict:
        masks = torch.zeros(n, h, w, dtype=torch.bool)
        for k in range(n):
            masks[k, 5 + 10 * k : 12 + 10 * k, 5:20] = True
        return {"boxes": torch.from_numpy(boxes_from_masks(masks.numpy())), "classes": torch.arange(n),
                "masks": masks, "ids": torch.tensor(ids)}

    img = torch.zeros(3, h, w, dtype=torch.uint8)
    sample = {"image": [img, img], "instances": [inst(2, [0, 1]), inst(1, [1])], "task": "ytvis19",
              "expression": None}
    batch = collate(3, 0, [sample, sample], DatasetMeta("v", ["a", "b", "c"], True, True), BatchingConfig(),
                    random.Random(0))
    assert batch.images.shape == (4, 3, 64, 64) and batch.clip_length == 2
    assert batch.targets[1]["inst_id"].tolist() == [1] and batch.targets[0]["masks"].shape == (2, 64, 64)
    assert torch.allclose(batch.targets[0]["boxes"][0], torch.tensor([12.5 / 64, 8.5 / 64, 15 / 64, 7 / 64]))
    assert batch.dn_task == "ytvis19" and batch.dn_classes == 40
    image_sample = {"image": img, "instances": inst(2, [0, 1]), "task": "coco", "expression": None}
    modes = Counter()
    for seed in range(40):
        b = collate(0, 0, [image_sample], DatasetMeta("c", ["a", "b"], True, False), BatchingConfig(
            visual_prompt=True, visual_prompt_prob=1.0), random.Random(seed))
        assert b.visual_prompt_masks is not None and len(b.targets[0]["labels"]) == 1
        prompt = b.visual_prompt_masks[0]
        target_mask = b.targets[0]["masks"][0]
        assert (prompt & target_mask).any()
        modes[b.visual_prompt_type] += 1
    assert set(modes) == {"mask", "box", "point"} and modes["mask"] > modes["point"] > modes["box"]


def test_lvis_and_visual_genome_readers(tmp_path: Path) -> None:
    cats = [{"id": i, "name": f"thing{i}"} for i in range(1, 151)]
    lvis = {"images": [{"id": 5, "coco_url": "http://images.cocodataset.org/train2017/000000000005.jpg",
                        "height": 20, "width": 30, "not_exhaustive_category_ids": [3], "neg_category_ids": [4, 999]}],
            "annotations": [{"id": 1, "image_id": 5, "category_id": 3, "bbox": [1, 1, 5, 5],
                             "segmentation": [[1, 1, 6, 1, 6, 6, 1, 6]]}], "categories": cats}
    (tmp_path / "lvis.json").write_text(json.dumps(lvis))
    ds = load_coco_instances(tmp_path / "lvis.json", tmp_path / "coco", None)
    rec = ds.records[0]
    assert rec["file_name"].endswith("coco/train2017/000000000005.jpg") and route_task(rec) == "lvis"
    assert rec["not_exhaustive_category_ids"] == [2] and rec["neg_category_ids"] == [3]
    vg = {"images": [{"id": 1, "file_name": "v.jpg", "height": 20, "width": 30}],
          "annotations": [{"id": i, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "object_name": n}
                          for i, n in enumerate(["red car", "tall tree", ""])], "categories": [{"id": 1, "name": "o"}]}
    (tmp_path / "vg.json").write_text(json.dumps(vg))
    spec = DatasetSpec.from_dict({"name": "vg", "reader": "vg", "json": "vg.json", "image_root": "."}, tmp_path)
    from train.data.loader import dataset_meta, load_dataset

    vds = load_dataset(spec)
    assert vds.stats.as_dict() == {"annotation_without_description": 1} and route_task(vds.records[0]) == "vg"
    meta = dataset_meta(spec, vds)
    meta.description_pool = meta.description_pool + [f"negative {i}" for i in range(300)]
    targets = [{"labels": torch.zeros(2, dtype=torch.long), "descriptions": ["tall tree", "red car"]}]
    vocab, out = build_vocabulary(targets, meta, "vg", BatchingConfig(), random.Random(0), SkipStats())
    assert len(vocab) == 200 and [vocab[int(c)] for c in out[0]["labels"]] == ["tall tree", "red car"]
