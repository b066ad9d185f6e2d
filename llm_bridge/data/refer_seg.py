"""Referring segmentation (refCOCO, refCOCO+, refCOCOg, refCLEF) in the ``refer`` layout LISA reads.

``<root>/<dataset>/refs(<split_by>).p`` (the released pickle; a ``.json`` list with the same records is
accepted too) + ``<root>/<dataset>/instances.json`` (COCO-style images, annotations, categories); images in
``<root>/images/mscoco/images/train2014`` (refCOCO family) or ``<root>/images/saiapr_tc-12`` (refCLEF).
Split-by defaults as in LISA: ``umd`` for refcocog, ``unc`` otherwise.

The pickle is read with a restricted unpickler that only builds plain containers and numbers, so a crafted
file cannot run code.  Sampling: up to 3 sentences of one image's references, one single-turn conversation
each with LISA's short templates; the mask is the referred annotation (all its parts).
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from llm_bridge.data.base import RandomSampleDataset, SegSample, choose, read_image
from llm_bridge.data.conversation import ANSWER_LIST, SHORT_QUESTION_LIST, with_image

_SAFE_GLOBALS = {("builtins", name) for name in ("dict", "list", "tuple", "set", "str", "int", "float", "bool",
                                                  "bytes", "frozenset", "complex")}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _SAFE_GLOBALS or (module == "__builtin__" and ("builtins", name) in _SAFE_GLOBALS):
            import builtins

            return getattr(builtins, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a refs file (only plain data allowed)")


def load_refs(path: str | Path) -> list[dict]:
    """The reference records of a ``refs(<split>).p`` pickle or a ``.json`` list."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"refs file {path} does not exist")
    if path.suffix == ".json":
        refs = json.loads(path.read_text())
    else:
        with path.open("rb") as f:
            refs = _SafeUnpickler(f, encoding="latin1").load()
    if not isinstance(refs, list) or (refs and not {"ref_id", "ann_id", "image_id", "sentences"} <= set(refs[0])):
        raise ValueError(f"{path}: not a list of refer records (ref_id, ann_id, image_id, sentences, split)")
    return refs


def annotation_mask(ann: dict, height: int, width: int) -> np.ndarray:
    """[H, W] uint8 union of an annotation's polygons / RLE parts; empty segmentation -> zeros."""
    from pycocotools import mask as mask_utils

    seg = ann.get("segmentation")
    if not seg:
        return np.zeros((height, width), dtype=np.uint8)
    if isinstance(seg, list) and seg and isinstance(seg[0], list):
        rles = mask_utils.frPyObjects(seg, height, width)
    elif isinstance(seg, dict):
        rles = [seg]
        if isinstance(seg.get("counts"), list):
            rles = [mask_utils.frPyObjects(seg, height, width)]
    else:
        rles = seg
    rles = [dict(r, counts=r["counts"].encode()) if isinstance(r.get("counts"), str) else r for r in rles]
    m = mask_utils.decode(rles)
    if m.ndim == 3:
        m = m.sum(axis=2)
    return (m > 0).astype(np.uint8)


class ReferSegDataset(RandomSampleDataset):
    kind = "refer_seg"

    def __init__(
        self,
        root: str | Path,
        datasets: str | list[str] = "refclef||refcoco||refcoco+||refcocog",
        split: str = "train",
        num_per_sample: int = 3,
        image_dirs: dict[str, str | Path] | None = None,
        samples_per_epoch: int = 1000,
        seed: int = 0,
    ) -> None:
        """
        Args:
            root: LISA's ``<dataset_dir>/refer_seg``.
            datasets: names joined by ``||`` (or a list); each is chosen uniformly at sampling time.
            image_dirs: override the image folder per dataset name.
        """
        super().__init__(samples_per_epoch, seed)
        self.root = Path(root)
        names = datasets.split("||") if isinstance(datasets, str) else list(datasets)
        self.num_per_sample = num_per_sample
        self.data: dict[str, dict[str, Any]] = {}
        for name in names:
            split_by = "umd" if name == "refcocog" else "unc"
            folder = self.root / name
            refs_file = folder / f"refs({split_by}).p"
            if not refs_file.exists() and (folder / f"refs({split_by}).json").exists():
                refs_file = folder / f"refs({split_by}).json"
            refs = [r for r in load_refs(refs_file) if r.get("split") == split]
            instances_file = folder / "instances.json"
            if not instances_file.exists():
                raise FileNotFoundError(f"{instances_file} does not exist")
            instances = json.loads(instances_file.read_text())
            images = {img["id"]: img for img in instances["images"]}
            anns = {ann["id"]: ann for ann in instances["annotations"]}
            default_dir = self.root / ("images/saiapr_tc-12" if name == "refclef" else "images/mscoco/images/train2014")
            image_dir = Path((image_dirs or {}).get(name, default_dir))
            img2refs: dict[int, list[dict]] = {}
            for ref in refs:
                img2refs.setdefault(ref["image_id"], []).append(ref)
            if not img2refs:
                raise ValueError(f"{refs_file}: no references in split {split!r}")
            self.data[name] = {"images": images, "anns": anns, "img2refs": img2refs,
                               "image_ids": sorted(img2refs), "image_dir": image_dir}
        self.names = names

    def describe(self) -> str:
        return ", ".join(f"{n}: {len(d['image_ids'])} images" for n, d in self.data.items())

    def sample(self, rng: np.random.Generator) -> SegSample:
        name = self.names[int(rng.integers(len(self.names)))]
        data = self.data[name]
        image_id = data["image_ids"][int(rng.integers(len(data["image_ids"])))]
        info = data["images"][image_id]
        sents = [(s["sent"], ref["ann_id"]) for ref in data["img2refs"][image_id] for s in ref["sentences"]]
        chosen = choose(rng, sents, self.num_per_sample)
        path = data["image_dir"] / info["file_name"]
        image = read_image(path)
        h, w = image.shape[:2]
        conversations, masks = [], []
        for text, ann_id in chosen:
            question = with_image(str(rng.choice(SHORT_QUESTION_LIST)).format(class_name=text.strip().lower()))
            conversations.append([{"role": "user", "content": question},
                                  {"role": "assistant", "content": str(rng.choice(ANSWER_LIST))}])
            masks.append(annotation_mask(data["anns"][ann_id], h, w))
        return SegSample(image, conversations, np.stack(masks), f"{self.kind}:{name}", str(path))
