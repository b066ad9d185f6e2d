"""The ShapesWorld reasoning set (scripts/make_shapesworld_reasoning.py) and scripts/bench_bridge_reasoning.py.

A tiny ShapesWorld is written with ``train.data.shapesworld`` (the generator itself reads only the COCO files),
then the reasoning set; answers are re-derived here from the COCO category names, independently of the
generator's templates.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from llm_bridge.data import ReasonSegDataset
from llm_bridge.data.reason_seg import load_mask, rasterize

REPO = Path(__file__).resolve().parents[1]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is created
    spec.loader.exec_module(module)
    return module


gen = _script("make_shapesworld_reasoning")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from train.data.shapesworld import ShapesWorldConfig, write_dataset

    root = tmp_path_factory.mktemp("shapesworld")
    write_dataset(root, {"train": 12, "val": 4, "heldout": 4}, None, ShapesWorldConfig(seed=3))
    return root


@pytest.fixture(scope="module")
def reasoning(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("reasoning") / "a"
    assert gen.main(["--src", str(world), "--out", str(out), "--train", "20", "--val", "4", "--heldout", "4",
                     "--seed", "1"]) == 0
    return out


def _coco_objects(world: Path, split: str) -> dict[int, tuple[str, str, np.ndarray]]:
    """ann id -> (colour, shape, visible mask), straight from the COCO file."""
    from pycocotools import mask as mask_util

    coco = json.loads((world / "annotations" / f"instances_{split}.json").read_text())
    names = {c["id"]: c["name"].split() for c in coco["categories"]}
    out = {}
    for a in coco["annotations"]:
        rle = dict(a["segmentation"], counts=a["segmentation"]["counts"].encode())
        colour, shape = names[a["category_id"]]
        out[a["id"]] = (colour, shape, mask_util.decode(rle).astype(bool))
    return out


def _draw(kind: str, box: tuple[int, int, int, int], h: int = 80, w: int = 120) -> np.ndarray:
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    x0, y0, x1, y1 = box
    if kind in ("circle", "ring"):
        draw.ellipse(box, fill=1)
        if kind == "ring":
            draw.ellipse((x0 + 6, y0 + 6, x1 - 6, y1 - 6), fill=0)
    else:
        draw.rectangle(box, fill=1)
    return np.asarray(canvas).astype(bool)


def _scene(objects: list[tuple[str, str, np.ndarray]]):
    """A generator Scene built by hand from (colour, shape, mask)."""
    from pycocotools import mask as mask_util

    objs = []
    for k, (colour, shape, m) in enumerate(objects):
        ys, xs = np.nonzero(m)
        rle = mask_util.encode(np.asfortranarray(m.astype(np.uint8)))
        objs.append(gen.SceneObject(k + 1, colour, shape, int(m.sum()), float(xs.mean()), float(ys.mean()),
                                    (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)),
                                    {"size": list(rle["size"]), "counts": rle["counts"].decode()}))
    h, w = objects[0][2].shape
    return gen.Scene(1, "x.jpg", h, w, objs)


def test_reader_loads_the_set_and_masks_are_the_answer_objects(world, reasoning):
    items = sorted(reasoning.glob("*/*.json"))
    assert {p.parent.name for p in items} == {"train", "val", "heldout"}
    assert len(list((reasoning / "train").glob("*.json"))) == 20
    ds = ReasonSegDataset(reasoning, "train", explanatory=-1, samples_per_epoch=4)
    sample = ds[0]
    assert sample.masks.shape[0] == len(sample.conversations) >= 1
    assert set(np.unique(sample.masks)) <= {0, 1, 255}
    objects = {s: _coco_objects(world, s) for s in ("train", "val", "heldout")}
    checked = set()
    for path in items:
        anno = json.loads(path.read_text())
        scene = objects[anno["source"]["split"]]
        h, w = anno["imageHeight"], anno["imageWidth"]
        mask, texts, is_sentence = load_mask(path, h, w)
        assert texts and isinstance(is_sentence, bool) and anno["template"] in gen.TEMPLATES
        expected = np.zeros((h, w), np.uint8)
        for key, value in (("target_ann_ids", 1), ("ignore_ann_ids", 255)):
            for i in anno[key]:
                expected[scene[i][2]] = value
        assert np.array_equal(mask, expected), path.name  # polygons rasterise back to the exact union
        # independently re-derived answers for the attribute templates
        targets = {scene[i][:2] for i in anno["target_ann_ids"]}
        rule = {
            "rolls": lambda c, s: s in ("circle", "ring"),
            "thread": lambda c, s: s == "ring",
            "three_corners": lambda c, s: s == "triangle",
            "many_corners": lambda c, s: s in ("hexagon", "star", "cross"),
            "warm_colours": lambda c, s: c in ("red", "orange", "yellow"),
            "cool_colours": lambda c, s: c in ("blue", "green"),
        }.get(anno["template"])
        if rule is not None:
            assert all(rule(c, s) for c, s in targets)
            checked.add(anno["template"])
        if anno["template"] in ("colour_riddle", "shape_riddle"):
            kind, value = anno["answer"].split("=")
            assert {c if kind == "colour" else s for c, s in targets} == {value}
            checked.add(anno["template"])
        for text in texts:  # a question never names the answer's colour or shape
            for colour, shape in targets:
                assert colour not in text.split() and shape not in text.split(), (text, colour, shape)
    assert len(checked) >= 3


def test_answer_sets_are_complete_on_the_scene(world, reasoning):
    """Every object of the image that satisfies an attribute rule is in the target (not just some of them)."""
    coco = {s: json.loads((world / "annotations" / f"instances_{s}.json").read_text())
            for s in ("train", "val", "heldout")}
    for path in sorted(reasoning.glob("*/*.json")):
        anno = json.loads(path.read_text())
        if anno["template"] not in ("rolls", "thread", "three_corners", "warm_colours"):
            continue
        c = coco[anno["source"]["split"]]
        names = {k["id"]: k["name"].split() for k in c["categories"]}
        anns = [a for a in c["annotations"] if a["image_id"] == anno["source"]["image_id"]]
        want = {
            "rolls": lambda col, s: s in ("circle", "ring"),
            "thread": lambda col, s: s == "ring",
            "three_corners": lambda col, s: s == "triangle",
            "warm_colours": lambda col, s: col in ("red", "orange", "yellow"),
        }[anno["template"]]
        assert sorted(anno["target_ann_ids"]) == sorted(a["id"] for a in anns if want(*names[a["category_id"]]))
        if anno["template"] == "warm_colours":  # purple is neither warm nor cool for everyone: ignored
            assert sorted(anno["ignore_ann_ids"]) == sorted(a["id"] for a in anns
                                                            if names[a["category_id"]][0] == "purple")


def test_hand_built_scene_roll_down_a_slope():
    circle = _draw("circle", (5, 5, 35, 35))
    ring = _draw("ring", (45, 10, 85, 50))
    square = _draw("square", (90, 40, 115, 70))
    scene = _scene([("red", "circle", circle), ("blue", "ring", ring), ("green", "square", square)])
    q = gen.ask(scene, "rolls", seed=0, split="train")
    assert q is not None and sorted(q.targets) == [0, 1] and not q.ignore
    union = gen.union_mask(scene, q.targets)
    assert np.array_equal(union, circle | ring)
    shapes = [{"label": "target", "points": p} for p in gen.mask_to_polygons(union)]
    raster = rasterize(shapes, 80, 120)
    assert np.array_equal(raster == 1, circle | ring)
    assert raster[30, 65] == 0  # the ring's hole stays background although every polygon is filled
    assert gen.ask(scene, "thread", 0, "train").targets == [1]
    assert gen.ask(scene, "most_corners", 0, "train").targets == [2]  # the square, 4 corners vs 0
    same = gen.ask(scene, "same_colour_as", 0, "train")
    assert same is None  # no two objects share a colour


def test_ambiguous_superlatives_and_trivial_questions_are_skipped():
    a = _draw("square", (5, 5, 34, 34))
    b = _draw("square", (60, 5, 89, 34))  # same size as a
    c = _draw("square", (40, 50, 50, 60))
    tie = _scene([("red", "square", a), ("blue", "square", b), ("green", "square", c)])
    assert gen.ask(tie, "biggest", 0, "train") is None  # two equally big squares
    assert gen.ask(tie, "smallest", 0, "train").targets == [2]
    assert gen.ask(tie, "most_corners", 0, "train") is None  # all have 4 corners
    # the smallest square is only 1.2x smaller than the next one: no clear "smallest"
    near = _scene([("red", "square", _draw("square", (5, 5, 25, 25))),  # 21 x 21 px
                   ("blue", "square", _draw("square", (40, 5, 62, 27))),  # 23 x 23 px
                   ("green", "circle", _draw("circle", (70, 30, 115, 75)))])
    assert near.objects[1].area < gen.SIZE_RATIO * near.objects[0].area
    assert gen.ask(near, "smallest", 0, "train") is None
    assert gen.ask(near, "biggest", 0, "train").targets == [2]
    # left edges and centres 2 px apart: never "the leftmost object"
    left = _scene([("red", "square", _draw("square", (5, 5, 20, 20))),
                   ("blue", "square", _draw("square", (7, 40, 22, 55))),
                   ("green", "square", _draw("square", (80, 20, 95, 35)))])
    answers = {q.answer for seed in range(12) if (q := gen.ask(left, "extreme_position", seed, "train"))}
    assert answers and "position=left" not in answers and "position=right" in answers
    # every object rolls: "everything" is not a question
    all_round = _scene([("red", "circle", _draw("circle", (5, 5, 30, 30))),
                        ("blue", "ring", _draw("ring", (50, 5, 90, 45)))])
    assert gen.ask(all_round, "rolls", 0, "train") is None
    # two stars: "the shape with the most corners" has no single answer
    stars = _scene([("red", "star", a), ("blue", "star", b), ("green", "square", c)])
    assert gen.ask(stars, "most_corners", 0, "train") is None


def test_same_seed_same_files(world, reasoning, tmp_path):
    again = tmp_path / "b"
    other = tmp_path / "c"
    args = ["--src", str(world), "--train", "20", "--val", "4", "--heldout", "4"]
    assert gen.main([*args, "--out", str(again), "--seed", "1"]) == 0
    assert gen.main([*args, "--out", str(other), "--seed", "2"]) == 0
    files = sorted(p.relative_to(reasoning) for p in reasoning.rglob("*") if p.is_file() and p.name != "meta.json")
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file() and p.name != "meta.json")
    assert all((reasoning / f).read_bytes() == (again / f).read_bytes() for f in files)
    texts = [json.loads(p.read_text())["text"] for p in sorted(other.glob("*/*.json"))]
    assert texts != [json.loads(p.read_text())["text"] for p in sorted(reasoning.glob("*/*.json"))]
    with pytest.raises(FileExistsError, match="--overwrite"):
        gen.main([*args, "--out", str(again), "--seed", "1"])


def test_bench_script_end_to_end_on_a_tiny_bridge(reasoning, tmp_path, capsys):
    from llm_bridge.testing import single_thread, tiny_bridge, tiny_llm_dir

    bench = _script("bench_bridge_reasoning")
    tiny_bridge(tiny_llm_dir()).save_pretrained(tmp_path / "bridge")
    out = tmp_path / "report.json"
    with single_thread():
        assert bench.main([str(tmp_path / "bridge"), "--data", str(reasoning), "--split", "heldout", "--limit", "2",
                           "--threads", "1", "--max-new-tokens", "4", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "machine: " in table and "| ALL | 2 |" in table and "95% bootstrap interval" in table
    all_row = next(line for line in table.splitlines() if line.startswith("| ALL |"))
    assert all_row.count("[") == 4  # gIoU and cIoU of both modes carry their intervals
    report = json.loads(out.read_text())
    assert report["num_items"] == 2 and set(report["modes"]) == {"generate", "forced"}
    for mode in ("generate", "forced"):
        overall = report["modes"][mode]["overall"]
        assert 0.0 <= overall["gIoU"] <= 1.0 and 0.0 <= overall["cIoU"] <= 1.0
        assert overall["gIoU_ci95_low"] <= overall["gIoU"] <= overall["gIoU_ci95_high"]
        assert sum(v["n"] for v in report["modes"][mode]["per_template"].values()) == 2
    assert all(isinstance(r["answer"], str) and r["prompt"].endswith("Please output segmentation mask.")
               for r in report["items"])
    assert report["pointer_cover_ratio"] == 0.0
    # --cover-ratio: a query_pointer bridge decoded with its [SEG]s covering near-top objects; an mlp head refuses
    tiny_bridge(tiny_llm_dir(), seg_head="query_pointer").save_pretrained(tmp_path / "pointer")
    with single_thread():
        assert bench.main([str(tmp_path / "pointer"), "--data", str(reasoning), "--limit", "1", "--threads", "1",
                           "--max-new-tokens", "4", "--cover-ratio", "0.5", "--json", str(out)]) == 0
        assert bench.main([str(tmp_path / "bridge"), "--data", str(reasoning), "--limit", "1", "--threads", "1",
                           "--cover-ratio", "0.5"]) == 1
    assert json.loads(out.read_text())["pointer_cover_ratio"] == 0.5
    assert "pointer_cover_ratio needs seg_head='query_pointer'" in capsys.readouterr().err


def test_instance_masks_give_one_seg_and_one_mask_per_answer_object(world, reasoning):
    """group_id per answer object (left to right): one [SEG] + mask each; their union is the answer mask."""
    from llm_bridge.data.reason_seg import load_instance_masks

    objects = {s: _coco_objects(world, s) for s in ("train", "val", "heldout")}
    several = 0
    for path in sorted(reasoning.glob("*/*.json")):
        anno = json.loads(path.read_text())
        scene = objects[anno["source"]["split"]]
        h, w = anno["imageHeight"], anno["imageWidth"]
        inst = load_instance_masks(path, h, w)
        union, _, _ = load_mask(path, h, w)
        assert inst.shape[0] == len(anno["target_ann_ids"]), path.name
        assert np.array_equal((inst == 1).any(0), union == 1)
        assert all(np.array_equal(m == 255, union == 255) for m in inst)  # ignore regions in every mask
        # each mask is exactly one answer object, in left-to-right order
        target_masks = [scene[i][2] for i in anno["target_ann_ids"]]
        centres = []
        for m in inst:
            match = [k for k, t in enumerate(target_masks) if np.array_equal(m == 1, t)]
            assert len(match) == 1, path.name
            centres.append(np.nonzero(m == 1)[1].mean())
        assert centres == sorted(centres)
        several += inst.shape[0] > 1
    assert several >= 3

    ds = ReasonSegDataset(reasoning, "train", explanatory=-1, samples_per_epoch=40, instance_masks=True)
    seen_multi = False
    for i in range(40):
        sample = ds[i]
        h, w = sample.image.shape[:2]
        inst = load_instance_masks(Path(sample.image_path).with_suffix(".json"), h, w)
        answers = [c[1]["content"] for c in sample.conversations]
        assert all(a.count("[SEG]") == inst.shape[0] for a in answers)
        assert np.array_equal(sample.masks, np.concatenate([inst] * len(answers)))
        seen_multi |= inst.shape[0] > 1 and " and [SEG]" in answers[0]
    assert seen_multi
    # LISA's released files have no group_id: all target polygons stay one region (one [SEG], one mask)
    plain = json.loads(sorted(reasoning.glob("train/*.json"))[0].read_text())
    for s in plain["shapes"]:
        s["group_id"] = None
    lisa = Path(str(reasoning) + "_lisa") / "x.json"
    lisa.parent.mkdir(exist_ok=True)
    lisa.write_text(json.dumps(plain))
    h, w = plain["imageHeight"], plain["imageWidth"]
    one = load_instance_masks(lisa, h, w)
    union, _, _ = load_mask(lisa, h, w)
    assert one.shape[0] == 1 and np.array_equal(one[0] == 1, union == 1)


def test_seg_answer_counts():
    from llm_bridge.data.conversation import seg_answer

    rng = np.random.default_rng(0)
    assert [seg_answer(rng, n).count("[SEG]") for n in (1, 2, 5)] == [1, 2, 5]
    assert seg_answer(rng, 3).count(" and [SEG]") == 1
    with pytest.raises(ValueError, match="at least one"):
        seg_answer(rng, 0)


def test_instance_masks_of_one_answer_form_a_set_through_the_collator(reasoning):
    from llm_bridge.data import BridgeCollator
    from llm_bridge.testing import tiny_bridge, tiny_llm_dir

    ds = ReasonSegDataset(reasoning, "train", explanatory=-1, samples_per_epoch=40, instance_masks=True)
    sample = next(s for s in (ds[i] for i in range(40)) if len(s.conversations) >= 2 and len(s.masks) > 2)
    n = len(sample.masks) // len(sample.conversations)
    assert sample.mask_sets.tolist() == [c for c in range(len(sample.conversations)) for _ in range(n)]
    assert ReasonSegDataset(reasoning, "train", explanatory=-1, samples_per_epoch=4)[0].mask_sets.max() == -1
    model = tiny_bridge(tiny_llm_dir())
    batch = BridgeCollator.for_model(model)([sample])
    assert batch["gt_mask_sets"][0].tolist() == sample.mask_sets.tolist()
    assert batch["gt_masks"][0].shape[0] == len(sample.masks)


def test_named_answers_name_each_object_before_its_seg(world, reasoning):
    """target_names (group order) are the answer objects' COCO names; named answers put each before its [SEG]."""
    from llm_bridge.data.conversation import named_seg_answer
    from llm_bridge.data.reason_seg import load_instance_masks

    objects = {s: _coco_objects(world, s) for s in ("train", "val", "heldout")}
    for path in sorted(reasoning.glob("*/*.json")):
        anno = json.loads(path.read_text())
        scene = objects[anno["source"]["split"]]
        inst = load_instance_masks(path, anno["imageHeight"], anno["imageWidth"])
        for name, m in zip(anno["target_names"], inst, strict=True):
            colour, shape, _ = next(o for o in scene.values() if np.array_equal(o[2], m == 1))
            assert name == f"{colour} {shape}"
    ds = ReasonSegDataset(reasoning, "train", explanatory=-1, samples_per_epoch=30, instance_masks=True,
                          named_answers=True)
    for i in range(30):
        sample = ds[i]
        names = json.loads(Path(sample.image_path).with_suffix(".json").read_text())["target_names"]
        for conv in sample.conversations:
            answer = conv[1]["content"]
            assert answer.count("[SEG]") == len(names)
            at = 0
            for n in names:  # named in group order, each right before its [SEG] (names may repeat)
                at = answer.index(f"the {n} [SEG]", at) + 1
        assert (sample.mask_sets == -1).all()  # named objects keep their order: no matching
    rng = np.random.default_rng(0)
    assert named_seg_answer(rng, ["red circle"]).endswith("the red circle [SEG].")
    assert "the red circle [SEG] and the blue ring [SEG]." in named_seg_answer(rng, ["red circle", "blue ring"])
    with pytest.raises(ValueError, match="needs instance_masks"):
        ReasonSegDataset(reasoning, "train", named_answers=True)


def test_train_cli_with_named_answers(reasoning, tmp_path, capsys):
    from llm_bridge.testing import tiny_llm_dir
    from llm_bridge.train import main

    status = main([
        "--output-dir", str(tmp_path / "run"), "--llm", str(tiny_llm_dir()), "--glee", "tiny", "--image-size", "64",
        "--dataset", "reason_seg", "--sample-rates", "1", "--reason-seg-data", f"{reasoning}|train",
        "--reason-seg-named", "--seg-head", "query_pointer", "--explanatory", "-1", "--steps", "1",
        "--batch-size", "1", "--grad-accum", "1", "--warmup-steps", "0", "--precision", "fp32", "--workers", "0",
        "--log-every", "1",
    ])
    assert status == 0 and "step=1" in capsys.readouterr().out
    from llm_bridge.train import build_datasets, build_parser

    args = build_parser().parse_args(["--output-dir", str(tmp_path / "x"), "--dataset", "reason_seg",
                                      "--sample-rates", "1", "--reason-seg-data", f"{reasoning}|train",
                                      "--reason-seg-named", "--explanatory", "-1"])
    sample = build_datasets(args, 4)[0]
    names = json.loads(Path(sample.image_path).with_suffix(".json").read_text())["target_names"]
    assert all(f"the {names[0]} [SEG]" in c[1]["content"] for c in sample.conversations)
