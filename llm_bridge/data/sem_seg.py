"""Semantic and part segmentation through question templates (LISA's ``sem_seg`` family).

Label-map datasets (one PNG of class indices per image), in LISA's layout under ``<dataset_dir>``:

* ``ade20k``: ``ade20k/images/training/*.jpg`` + ``ade20k/annotations/training/*.png``; label 0 is ignored and
  the others shift down by one; class names from ``ade20k/ade20k_classes.json`` (LISA ships this file as
  ``utils/ade20k_classes.json``: a JSON list of 150 names).
* ``cocostuff``: ``cocostuff/train2017/*.jpg`` + ``*.png`` beside them (or under ``annotations``); class names
  from ``cocostuff/cocostuff_classes.txt`` (LISA's ``utils/cocostuff_classes.txt``: a header line, then
  ``<id>: <name>``); classes whose name contains "-" are ignored, as in LISA.
* ``mapillary``: ``mapillary/training/images/*.jpg`` + ``mapillary/training/v2.0/labels/*.png``, names from
  ``mapillary/config_v2.0.json`` (``labels[].readable``, lower-cased).

COCO-JSON part datasets (``paco_lvis``: ``vlpart/paco/annotations/paco_lvis_v1_train.json`` with images under
``coco/``; ``pascal_part``: ``vlpart/pascal_part/train.json`` with images under
``vlpart/pascal_part/VOCdevkit/VOC2010/JPEGImages``): category names ``obj:part`` are rendered "obj part" or
"the part of the obj" (50/50).

Each sample: up to 3 classes present in the image, one single-turn conversation per class with LISA's short
templates, one binary mask per class.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from llm_bridge.data.base import IGNORE_VALUE, RandomSampleDataset, SegSample, choose, read_image
from llm_bridge.data.conversation import ANSWER_LIST, SHORT_QUESTION_LIST, with_image

LABEL_MAP_DATASETS = ("ade20k", "cocostuff", "mapillary")
PART_DATASETS = ("paco_lvis", "pascal_part")


def read_class_names(path: str | Path) -> list[str]:
    """A JSON list of names, or text lines ``<id>: <name>`` (a header line without ':' is skipped)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"class-name file {path} does not exist (LISA ships it in its utils/ folder)")
    if path.suffix == ".json":
        names = json.loads(path.read_text())
        if not isinstance(names, list):
            raise ValueError(f"{path}: expected a JSON list of class names")
        return [str(n) for n in names]
    names = []
    for line in path.read_text().splitlines():
        if ":" in line:
            names.append(line.split(": ", 1)[-1].strip())
    return names


def _ade20k_remap(label: np.ndarray) -> np.ndarray:
    label = label.astype(np.int32)
    out = label - 1
    out[label == 0] = IGNORE_VALUE
    return out


class LabelMapDataset(RandomSampleDataset):
    """Images with per-pixel class-index PNGs; ``remap`` turns a raw label map into class ids / 255."""

    kind = "sem_seg"

    def __init__(
        self,
        name: str,
        images: list[Path],
        labels: list[Path],
        class_names: list[str],
        remap: Callable[[np.ndarray], np.ndarray] | None = None,
        ignored_classes: set[int] | None = None,
        num_per_sample: int = 3,
        samples_per_epoch: int = 1000,
        seed: int = 0,
    ) -> None:
        super().__init__(samples_per_epoch, seed)
        if len(images) != len(labels):
            raise ValueError(f"{name}: {len(images)} images but {len(labels)} label maps")
        if not images:
            raise FileNotFoundError(f"{name}: no images found")
        self.name = name
        self.images, self.labels = images, labels
        self.class_names = class_names
        self.remap = remap
        self.ignored = ignored_classes or set()
        self.num_per_sample = num_per_sample

    def describe(self) -> str:
        return f"{self.name}: {len(self.images)} images, {len(self.class_names)} classes"

    def sample(self, rng: np.random.Generator) -> SegSample:
        from PIL import Image

        for _ in range(20):  # LISA retries images whose label map holds no usable class
            i = int(rng.integers(len(self.images)))
            with Image.open(self.labels[i]) as lab:
                label = np.asarray(lab).astype(np.int32)
            if self.remap is not None:
                label = self.remap(label)
            for c in self.ignored:
                label[label == c] = IGNORE_VALUE
            present = [int(c) for c in np.unique(label) if c != IGNORE_VALUE and 0 <= c < len(self.class_names)]
            if present:
                break
        else:
            raise ValueError(f"{self.name}: 20 sampled label maps held no valid class; check the class list")
        image = read_image(self.images[i])
        if image.shape[:2] != label.shape:
            raise ValueError(f"{self.images[i]}: image {image.shape[:2]} and label {label.shape} sizes differ")
        classes = choose(rng, present, self.num_per_sample)
        conversations, masks = [], []
        for c in classes:
            question = with_image(str(rng.choice(SHORT_QUESTION_LIST)).format(class_name=self.class_names[c].lower()))
            conversations.append([{"role": "user", "content": question},
                                  {"role": "assistant", "content": str(rng.choice(ANSWER_LIST))}])
            masks.append((label == c).astype(np.uint8))
        return SegSample(image, conversations, np.stack(masks), f"{self.kind}:{self.name}", str(self.images[i]))


class PartDataset(RandomSampleDataset):
    """COCO-JSON (part) instance annotations asked about by class name (PACO-LVIS, PASCAL-Part)."""

    kind = "sem_seg"

    def __init__(self, name: str, annotation_file: str | Path, image_root: str | Path, num_per_sample: int = 3,
                 samples_per_epoch: int = 1000, seed: int = 0) -> None:
        from pycocotools.coco import COCO

        super().__init__(samples_per_epoch, seed)
        if not Path(annotation_file).exists():
            raise FileNotFoundError(f"{name}: annotation file {annotation_file} does not exist")
        self.name = name
        self.coco = COCO(str(annotation_file))
        self.image_root = Path(image_root)
        self.num_per_sample = num_per_sample
        self.class_names: dict[int, str | tuple[str, str]] = {}
        for cat in self.coco.loadCats(self.coco.getCatIds()):
            parts = cat["name"].strip().split(":")
            clean = [p.split("_(")[0] for p in parts]
            self.class_names[cat["id"]] = clean[0] if len(clean) == 1 else (clean[0], clean[1])
        self.image_ids = [i for i in self.coco.getImgIds() if self.coco.getAnnIds(imgIds=i)]

    def describe(self) -> str:
        return f"{self.name}: {len(self.image_ids)} images"

    def sample(self, rng: np.random.Generator) -> SegSample:
        from llm_bridge.data.refer_seg import annotation_mask

        image_id = self.image_ids[int(rng.integers(len(self.image_ids)))]
        info = self.coco.loadImgs([image_id])[0]
        anns = self.coco.loadAnns(self.coco.getAnnIds(imgIds=image_id))
        chosen = choose(rng, anns, self.num_per_sample)
        path = self.image_root / info["file_name"]
        image = read_image(path)
        h, w = image.shape[:2]
        conversations, masks = [], []
        for ann in chosen:
            cls = self.class_names[ann["category_id"]]
            if isinstance(cls, tuple):
                obj, part = cls
                name = f"{obj} {part}" if rng.random() < 0.5 else f"the {part} of the {obj}"
            else:
                name = cls
            question = with_image(str(rng.choice(SHORT_QUESTION_LIST)).format(class_name=name.lower()))
            conversations.append([{"role": "user", "content": question},
                                  {"role": "assistant", "content": str(rng.choice(ANSWER_LIST))}])
            masks.append(annotation_mask(ann, h, w))
        return SegSample(image, conversations, np.stack(masks), f"{self.kind}:{self.name}", str(path))


def _find_class_file(folder: Path, stem: str) -> Path:
    for suffix in (".json", ".txt"):
        if (folder / f"{stem}{suffix}").exists():
            return folder / f"{stem}{suffix}"
    raise FileNotFoundError(f"class names for {stem.split('_classes')[0]} not found: put LISA's "
                            f"utils/{stem}.json|txt into {folder}")


def build_sem_seg(dataset_dir: str | Path, names: str | list[str] = "ade20k||cocostuff||pascal_part||paco_lvis",
                  num_per_sample: int = 3, samples_per_epoch: int = 1000, seed: int = 0) -> list[RandomSampleDataset]:
    """LISA's ``--sem_seg_data`` list -> datasets (one per name, sampled uniformly by the hybrid mix)."""
    root = Path(dataset_dir)
    out: list[RandomSampleDataset] = []
    kw = {"num_per_sample": num_per_sample, "samples_per_epoch": samples_per_epoch, "seed": seed}
    for name in names.split("||") if isinstance(names, str) else names:
        if name == "ade20k":
            images = sorted((root / "ade20k/images/training").glob("*.jpg"))
            labels = [root / "ade20k/annotations/training" / (p.stem + ".png") for p in images]
            classes = read_class_names(_find_class_file(root / "ade20k", "ade20k_classes"))
            out.append(LabelMapDataset(name, images, labels, classes, remap=_ade20k_remap, **kw))
        elif name == "cocostuff":
            images = sorted((root / "cocostuff/train2017").glob("*.jpg"))
            labels = []
            for p in images:
                beside = p.with_suffix(".png")
                labels.append(beside if beside.exists() else root / "cocostuff/annotations/train2017" / beside.name)
            classes = read_class_names(_find_class_file(root / "cocostuff", "cocostuff_classes"))
            ignored = {i for i, c in enumerate(classes) if "-" in c}
            out.append(LabelMapDataset(name, images, labels, classes, ignored_classes=ignored, **kw))
        elif name == "mapillary":
            base = root / "mapillary"
            labels = sorted((base / "training/v2.0/labels").glob("*.png"))
            images = [base / "training/images" / (p.stem + ".jpg") for p in labels]
            config = json.loads((base / "config_v2.0.json").read_text())
            classes = [lab["readable"].lower() for lab in config["labels"]]
            out.append(LabelMapDataset(name, images, labels, classes, **kw))
        elif name == "paco_lvis":
            out.append(PartDataset(name, root / "vlpart/paco/annotations/paco_lvis_v1_train.json", root / "coco", **kw))
        elif name == "pascal_part":
            out.append(PartDataset(name, root / "vlpart/pascal_part/train.json",
                                   root / "vlpart/pascal_part/VOCdevkit/VOC2010/JPEGImages", **kw))
        else:
            raise ValueError(f"unknown sem_seg dataset {name!r}; known: {LABEL_MAP_DATASETS + PART_DATASETS}")
    return out
