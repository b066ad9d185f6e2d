"""ReasonSeg (LISA's reasoning-segmentation benchmark) in its released layout.

``<root>/<split>/<name>.jpg`` + ``<name>.json`` with ``text`` (instructions), ``is_sentence`` and ``shapes``
(labelme polygons labelled ``target`` or ``ignore``; ``flag`` shapes are dropped), and optionally
``<root>/explanatory/train.json`` (a list of ``{"image", "query", "outputs"}``).  Polygons are rasterised
largest first, so a smaller shape drawn later wins; ignore regions get 255.

Sampling follows LISA: up to 3 instructions of one image, one single-turn conversation each, sentence-style
instructions with the long templates and phrases with the short ones.  For images with an explanation, with
probability ``explanatory`` the answer is the explanation only (no [SEG], no mask); otherwise half of the
time the plain [SEG] answer and half the time [SEG] followed by the explanation.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from llm_bridge.data.base import IGNORE_VALUE, RandomSampleDataset, SegSample, choose, read_image
from llm_bridge.data.conversation import (
    EXPLANATORY_QUESTION_LIST,
    IMAGE_PLACEHOLDER,
    LONG_QUESTION_LIST,
    SHORT_QUESTION_LIST,
    named_seg_answer,
    seg_answer,
    with_image,
)


def read_annotation(path: str | Path) -> dict:
    """A ReasonSeg JSON (some files are cp1252-encoded, as LISA notes)."""
    raw = Path(path).read_bytes()
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return json.loads(raw.decode("cp1252"))


def rasterize(shapes: list[dict], height: int, width: int) -> np.ndarray:
    """[H, W] uint8: 1 target, 255 ignore, 0 background; largest polygon first."""
    from PIL import Image, ImageDraw

    valid = [s for s in shapes if str(s.get("label", "")).lower() != "flag" and len(s.get("points", [])) >= 2]

    def area(shape: dict) -> int:
        canvas = Image.new("L", (width, height), 0)
        ImageDraw.Draw(canvas).polygon([tuple(map(float, p)) for p in shape["points"]], fill=1, outline=1)
        return int(np.asarray(canvas).sum())

    order = sorted(valid, key=area, reverse=True)
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for shape in order:
        value = IGNORE_VALUE if "ignore" in str(shape["label"]).lower() else 1
        draw.polygon([tuple(map(float, p)) for p in shape["points"]], fill=value, outline=value)
    return np.asarray(canvas, dtype=np.uint8)


def instructions(anno: dict, source: str | Path) -> tuple[list[str], bool]:
    """(instructions, is_sentence) of a parsed ReasonSeg annotation; clear errors for anything else."""
    for key in ("shapes", "text", "is_sentence"):
        if key not in anno:
            raise ValueError(f"{source}: not a ReasonSeg annotation (no {key!r} field)")
    texts = anno["text"] if isinstance(anno["text"], list) else [anno["text"]]
    texts = [t for t in texts if isinstance(t, str) and t.strip()]
    if not texts:
        raise ValueError(f"{source}: no instruction text")
    return texts, bool(anno["is_sentence"])


def load_mask(json_path: str | Path, height: int, width: int) -> tuple[np.ndarray, list[str], bool]:
    """(mask [H, W], instructions, is_sentence) of one ReasonSeg annotation."""
    anno = read_annotation(json_path)
    texts, is_sentence = instructions(anno, json_path)
    return rasterize(anno["shapes"], height, width), texts, is_sentence


def instance_masks(shapes: list[dict], height: int, width: int) -> np.ndarray:
    """[G, H, W] uint8: one mask per answer object (target polygons grouped by their labelme ``group_id``).

    Target polygons without a ``group_id`` form one group together (ReasonSeg's released files: the target is
    one region); ignore regions are 255 in every mask; the other groups' pixels are background.
    """
    targets = [s for s in shapes if str(s.get("label", "")).lower() == "target"]
    others = [s for s in shapes if s not in targets]
    ids = sorted({s.get("group_id") for s in targets}, key=lambda g: (g is None, g if g is not None else 0))
    if not ids:
        return np.zeros((1, height, width), dtype=np.uint8)  # no target: one empty mask, as ``load_mask``
    return np.stack([rasterize([s for s in targets if s.get("group_id") == g] + others, height, width)
                     for g in ids])


def load_instance_masks(json_path: str | Path, height: int, width: int) -> np.ndarray:
    """:func:`instance_masks` of one ReasonSeg annotation file."""
    return instance_masks(read_annotation(json_path).get("shapes", []), height, width)


class ReasonSegDataset(RandomSampleDataset):
    kind = "reason_seg"

    def __init__(
        self,
        root: str | Path,
        splits: str | list[str] = "train",
        num_per_sample: int = 3,
        explanatory: float = 0.1,
        explanatory_file: str | Path | None = None,
        samples_per_epoch: int = 1000,
        seed: int = 0,
        instance_masks: bool = False,
        named_answers: bool = False,
    ) -> None:
        """
        Args:
            root: the ``ReasonSeg`` folder (LISA: ``<dataset_dir>/reason_seg/ReasonSeg``).
            splits: "train", "val", "train_val" or a list.
            explanatory: probability of an explanation-only answer; -1 disables explanations (LISA's switch).
            explanatory_file: default ``<root>/explanatory/train.json`` when present.
            instance_masks: one [SEG] and one mask per answer object (target polygons grouped by labelme
                ``group_id``, see :func:`load_instance_masks`) instead of LISA's single union mask.
            named_answers: with ``instance_masks``, the answer names each object before its [SEG] ("They are the
                red circle [SEG] and the blue ring [SEG].") from the annotation's ``target_names`` (group order), so
                the text loss supervises what the answer is; the masks then follow the [SEG] order.
        """
        if named_answers and not instance_masks:
            raise ValueError("named_answers needs instance_masks=True (one name and one [SEG] per object)")
        super().__init__(samples_per_epoch, seed)
        self.root = Path(root)
        split_list = splits.split("_") if isinstance(splits, str) else list(splits)
        self.images: list[Path] = []
        for split in split_list:
            folder = self.root / split
            if not folder.is_dir():
                raise FileNotFoundError(f"ReasonSeg split folder {folder} does not exist")
            self.images += sorted(p for p in folder.glob("*.jpg") if p.with_suffix(".json").exists())
        if not self.images:
            raise FileNotFoundError(f"no ReasonSeg image/json pairs under {self.root} for splits {split_list}")
        self.num_per_sample = num_per_sample
        self.instance_masks = bool(instance_masks)
        self.named_answers = bool(named_answers)
        self.explanatory = explanatory
        self.explanations: dict[str, str] = {}
        if explanatory != -1:
            path = Path(explanatory_file) if explanatory_file else self.root / "explanatory" / "train.json"
            if path.exists():
                for item in json.loads(path.read_text()):
                    self.explanations[item["image"]] = item["outputs"]
            elif explanatory_file:
                raise FileNotFoundError(f"explanatory file {path} does not exist")

    def describe(self) -> str:
        return f"{len(self.images)} images, {len(self.explanations)} explanations"

    def sample(self, rng: np.random.Generator) -> SegSample:
        return self.sample_image(self.images[int(rng.integers(len(self.images)))], rng)

    def sample_image(self, path: Path, rng: np.random.Generator) -> SegSample:
        """The sample of one image: its question(s) asked ``num_per_sample`` ways, with answers and masks."""
        image = read_image(path)
        h, w = image.shape[:2]
        json_path = path.with_suffix(".json")
        anno = read_annotation(json_path)
        texts, is_sentence = instructions(anno, json_path)
        names: list[str] | None = None
        if self.instance_masks:
            targets = instance_masks(anno["shapes"], h, w)
            if self.named_answers:
                names = [str(n) for n in anno.get("target_names", [])]
                if len(names) != len(targets):
                    raise ValueError(f"{json_path}: {len(names)} target_names for {len(targets)} "
                                     "answer objects; named answers need one name per group_id")
        else:
            mask = rasterize(anno["shapes"], h, w)
            targets = (mask == 1).astype(np.uint8)[None]
            targets[0][mask == IGNORE_VALUE] = IGNORE_VALUE  # LISA trains these as background; we leave them out
        chosen = choose(rng, texts, self.num_per_sample)
        explanation = self.explanations.get(path.name)
        mode = 0  # 0: [SEG] answer, 1: [SEG] + explanation, 2: explanation only
        if explanation is not None:
            mode = 2 if rng.random() < self.explanatory else int(rng.integers(2))
        conversations, masks, sets = [], [], []
        for text in chosen:
            if is_sentence:
                question = with_image(str(rng.choice(LONG_QUESTION_LIST)).format(sent=text))
            else:
                question = with_image(str(rng.choice(SHORT_QUESTION_LIST)).format(class_name=text.lower()))
            answer = named_seg_answer(rng, names) if names is not None else seg_answer(rng, len(targets))
            if mode == 1:
                question = f"{IMAGE_PLACEHOLDER} {text} {rng.choice(EXPLANATORY_QUESTION_LIST)}"
                answer = f"{answer} {explanation}"
            elif mode == 2:
                question = f"{IMAGE_PLACEHOLDER} {text}"
                answer = str(explanation)
            if "[SEG]" in answer:
                masks.append(targets)
                # one answer's objects are a set: the [SEG]s may name them in any order
                unordered = self.instance_masks and names is None  # named objects keep their [SEG]'s order
                sets.append(np.full(len(targets), len(sets) if unordered else -1, dtype=np.int64))
            conversations.append([{"role": "user", "content": question}, {"role": "assistant", "content": answer}])
        stacked = np.concatenate(masks) if masks else np.zeros((0, h, w), dtype=np.uint8)
        return SegSample(image, conversations, stacked, self.kind, str(path), {"is_sentence": is_sentence},
                         np.concatenate(sets) if sets else np.zeros(0, dtype=np.int64))
