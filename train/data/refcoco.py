"""RefCOCO-style referring data (the UNINEXT/SeqTR "cocofied" files GLEE trains on, and any file in that form).

A COCO-like JSON whose ``images`` entries each carry an ``expressions`` list (all phrases referring to the
same object) and whose single category is "object".  One image entry = one referred object; like the official
loader, only the last annotation of an entry is kept.  Records get ``task='grounding'``; at training time the
mapper picks one expression at random, cleans it, and swaps "left"/"right" when the image is flipped.
"""

from __future__ import annotations

import re
from pathlib import Path

from train.data.coco import load_coco_instances
from train.data.common import LoadedDataset

ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth")
_PUNCT = re.compile(r"([.,'!?\"()*#:;])")


def clean_expression(text: str) -> str:
    """Official ``clean_string``: lower-case, drop . , ' ! ? " ( ) * # : ;, turn - and / into spaces."""
    return _PUNCT.sub("", text.lower()).replace("-", " ").replace("/", " ")


def has_ordinal(expressions: list[str]) -> bool:
    """Expressions with an ordinal word ("second from left") disable cropping: the crop could change the answer."""
    return any(word in e.lower() for e in expressions for word in ORDINALS)


def flip_expression(text: str) -> str:
    return text.replace("left", "@").replace("right", "left").replace("@", "right")


def load_refcoco(
    json_path: str | Path, image_root: str | Path, dataset_name: str | None = None, *, name: str | None = None,
    masks: bool | None = None,
) -> LoadedDataset:
    """``dataset_name`` stays None for RefCOCO (records route to ``grounding`` by their expressions)."""
    ds = load_coco_instances(
        json_path, image_root, dataset_name, masks=masks, task="grounding", keep_expressions=True, name=name
    )
    for record in ds.records:
        if "expressions" not in record:
            ds.stats.add("image_without_expression", record["image_id"])
        record["annotations"] = record["annotations"][-1:]
    ds.records = [r for r in ds.records if "expressions" in r]
    ds.class_names = ["object"]
    for record in ds.records:
        for ann in record["annotations"]:
            ann["category_id"] = 0
    return LoadedDataset(ds.name, ds.records, ds.class_names, ds.has_masks, False, ds.stats, ds.source)
