"""Build a ShapesWorld REASONING-segmentation set in ReasonSeg's released layout.

    python scripts/make_shapesworld_reasoning.py --src datasets/shapesworld --out datasets/shapesworld_reasoning \\
        --train 3000 --val 100 --heldout 100 [--seed 0]

Input: a ShapesWorld folder written by ``scripts/make_shapesworld.py``, read only through its standard files
(``annotations/instances_<split>.json``: COCO, RLE masks, category names "<colour> <shape>"; and the images).
Output, per split (train <- instances_train, val <- instances_val, heldout <- instances_heldout, whose scenes
hold colour-shape compositions never seen in training)::

    <out>/<split>/<name>.jpg    a copy of the ShapesWorld image
    <out>/<split>/<name>.json   {"text": [...], "is_sentence": bool, "shapes": [labelme polygons], ...}

exactly what LISA's ReasonSeg loader (and ``llm_bridge.data.reason_seg``) reads.  Polygons are labelled
``target`` or ``ignore``; the target is the union of the objects that answer the question, each object traced
into hole-free polygons through boundary-pixel centres, so filling them (with their outline, as LISA's cv2
reader and ours do) gives back the mask pixel for pixel.  Each answer object's polygons share a labelme
``group_id`` (0, 1, ... left to right), which ``ReasonSegDataset(instance_masks=True)`` turns into one
``[SEG]`` and one mask per object; ``target_names`` ("white star", ...) says what each group is, so an answer
can name each object before its ``[SEG]`` (``named_answers=True``).  Extra fields: ``template`` (question type,
for per-type results), ``answer`` (what the question resolves to, e.g. ``"shape=ring"``), ``source`` and the object ids.

Phrases (``is_sentence`` false) carry no leading article, like ReasonSeg's ("food that tastes spicy"), since
LISA's templates wrap them as "Can you segment the {phrase} in this image?".

Every question needs reasoning: it never names a target's colour or shape (this is checked), only a property
(corners, roll, colour of grass, size, position, colour/shape shared with another object ...).  Answers are
computed from the scene; a question is emitted only when its answer is non-empty, leaves at least one object
out, and -- for superlatives ("the biggest ...") -- is unique by a clear margin.  Regions whose membership is
a matter of opinion are ``ignore`` (purple in warm/cool colour questions; the reference object itself in "the
shapes with the same colour as the star").  The output is a pure function of the input and the arguments.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black")
SHAPES = ("circle", "square", "triangle", "star", "ring", "diamond", "hexagon", "cross")
SPLITS = ("train", "val", "heldout")

# Corners = vertices of the outline, reflex ones included (a 5-point star has 10, a plus-shaped cross 12).
CORNERS = {"triangle": 3, "square": 4, "diamond": 4, "hexagon": 6, "star": 10, "cross": 12, "circle": 0, "ring": 0}
ROUND = ("circle", "ring")  # no straight edges: they roll
WARM = ("red", "orange", "yellow")
COOL = ("blue", "green")
AMBIGUOUS_TEMPERATURE = ("purple",)  # warm or cool depending on whom you ask: ignored in those questions
SIZE_RATIO = 1.3  # "the biggest/smallest": area of the winner vs the runner-up
POSITION_MARGIN = 0.04  # "the leftmost ...": centroid lead over the runner-up, as a share of the image side
MIN_MARGIN_PX = 12.0

# Things of a colour / shapes of things.  The riddle never contains the colour or shape word.
COLOUR_RIDDLES = {
    "blue": ["the sky on a clear day", "a cloudless summer sky", "a pair of jeans"],
    "green": ["fresh grass", "a lime", "a frog"],
    "yellow": ["a ripe banana", "a lemon", "an egg yolk"],
    "white": ["fresh snow", "a glass of milk", "a cloud"],
    "black": ["coal", "soot", "a crow"],
    "red": ["a ripe tomato", "a fire engine", "a strawberry"],
    "purple": ["an aubergine", "lavender flowers", "a plum"],
    "orange": ["a pumpkin", "a carrot", "a basketball"],
}
SHAPE_RIDDLES = {
    "circle": ["a full moon", "a coin lying flat", "a solid disc"],
    "square": ["the face of a die", "a sticky note", "a chessboard field"],
    "triangle": ["a slice of pizza", "a yield road sign", "a pyramid seen from the side"],
    "star": ["the topper of a Christmas tree", "what twinkles in the night sky", "a sea creature with five arms"],
    "ring": ["a doughnut", "a life buoy", "a bagel"],
    "diamond": ["a playing-card suit", "a kite", "a rhombus"],
    "hexagon": ["a honeycomb cell", "the nut on a bolt", "a cell of a beehive"],
    "cross": ["a plus sign", "the symbol for addition", "the emblem on a first-aid kit"],
}
DIRECTIONS = {  # name -> (axis: 0 x / 1 y, sign: -1 smallest first), phrases, sentences
    "left": (0, -1, ["leftmost object", "object furthest to the left", "shape on the far left"],
             ["Which object is furthest to the left?", "Which shape lies further left than all the others?"]),
    "right": (0, 1, ["rightmost object", "object furthest to the right", "shape on the far right"],
              ["Which object is furthest to the right?", "Which shape lies further right than all the others?"]),
    "top": (1, -1, ["topmost object", "highest object in the picture", "shape nearest the top"],
            ["Which object is highest up in the picture?", "Which shape sits above all the others?"]),
    "bottom": (1, 1, ["bottommost object", "lowest object in the picture", "shape nearest the bottom"],
               ["Which object is lowest down in the picture?", "Which shape sits below all the others?"]),
}


# ---------------------------------------------------------------------------------------------------------------
# scenes from COCO
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class SceneObject:
    ann_id: int
    colour: str
    shape: str
    area: int  # visible pixels
    cx: float  # centroid of the visible mask
    cy: float
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 (exclusive) of the visible mask
    rle: dict


@dataclass
class Scene:
    image_id: int
    file_name: str
    height: int
    width: int
    objects: list[SceneObject]


@dataclass
class Question:
    """A question about one scene: target / ignore object indices and paraphrases in both styles."""

    template: str
    answer: str
    targets: list[int]
    sentences: list[str]
    phrases: list[str]
    ignore: list[int] = field(default_factory=list)


def parse_category(name: str, where: str) -> tuple[str, str]:
    parts = str(name).split()
    if len(parts) != 2 or parts[0] not in COLOURS or parts[1] not in SHAPES:
        raise ValueError(f"{where}: category {name!r} is not a ShapesWorld '<colour> <shape>' name (colours "
                         f"{COLOURS}, shapes {SHAPES}); pass a folder written by scripts/make_shapesworld.py")
    return parts[0], parts[1]


def load_split(src: Path, split: str) -> list[dict[str, Any]]:
    """Image records with their annotations (masks still RLE), in COCO image order."""
    path = src / "annotations" / f"instances_{split}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; --src must be a ShapesWorld folder written by "
                                "scripts/make_shapesworld.py (with that split)")
    coco = json.loads(path.read_text())
    for key in ("images", "annotations", "categories"):
        if key not in coco:
            raise ValueError(f"{path}: not a COCO instances file (no {key!r})")
    cats = {c["id"]: parse_category(c["name"], str(path)) for c in coco["categories"]}
    by_image: dict[int, list[dict]] = {im["id"]: [] for im in coco["images"]}
    for ann in coco["annotations"]:
        if ann["category_id"] not in cats:
            raise ValueError(f"{path}: annotation {ann['id']} has unknown category_id {ann['category_id']}")
        if not isinstance(ann.get("segmentation"), dict):
            raise ValueError(f"{path}: annotation {ann['id']} has no RLE segmentation (ShapesWorld writes RLE)")
        by_image.setdefault(ann["image_id"], []).append(ann)
    return [{"image": im, "annotations": sorted(by_image[im["id"]], key=lambda a: a["id"]), "categories": cats}
            for im in coco["images"]]


def build_scene(record: dict[str, Any]) -> Scene:
    from pycocotools import mask as mask_util

    im = record["image"]
    objects = []
    for ann in record["annotations"]:
        rle = dict(ann["segmentation"])
        if isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode("ascii")
        m = mask_util.decode(rle).astype(bool)
        if not m.any():
            continue
        ys, xs = np.nonzero(m)
        colour, shape = record["categories"][ann["category_id"]]
        objects.append(SceneObject(int(ann["id"]), colour, shape, int(m.sum()), float(xs.mean()), float(ys.mean()),
                                   (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)),
                                   ann["segmentation"]))
    return Scene(int(im["id"]), str(im["file_name"]), int(im["height"]), int(im["width"]), objects)


# ---------------------------------------------------------------------------------------------------------------
# templates: scene -> Question or None
# ---------------------------------------------------------------------------------------------------------------
def _where(scene: Scene, pred: Callable[[SceneObject], bool]) -> list[int]:
    return [i for i, o in enumerate(scene.objects) if pred(o)]


def _unique_extreme(values: list[float], ratio: float | None = None, margin: float | None = None) -> int | None:
    """Index of the unique maximum, if it beats the runner-up by ``ratio`` (x) or ``margin`` (+)."""
    if len(values) < 2:
        return None
    order = np.argsort(values)[::-1]
    best, second = values[order[0]], values[order[1]]
    if ratio is not None and not best >= ratio * second:
        return None
    if margin is not None and not best >= second + margin:
        return None
    if best == second:
        return None
    return int(order[0])


def t_rolls(scene: Scene, rng: np.random.Generator) -> Question | None:
    return Question("rolls", "shape=circle|ring", _where(scene, lambda o: o.shape in ROUND), [
        "Which shapes could roll down a slope?",
        "If the picture were tilted, which objects would roll away like wheels?",
        "Which shapes are drawn only with curved edges and no corners at all?",
    ], [
        "shapes that could roll down a slope",
        "shapes with curved edges",
        "shapes without any corners",
    ])


def t_thread(scene: Scene, rng: np.random.Generator) -> Question | None:
    return Question("thread", "shape=ring", _where(scene, lambda o: o.shape == "ring"), [
        "Which object could you thread a string through?",
        "What could you slide onto a rope, because it has a hole in the middle?",
        "Which shape has an empty hole at its centre?",
    ], [
        "object you could thread a string through",
        "shape with a hole in the middle",
        "object you could hang on a hook through its centre",
    ])


def t_three_corners(scene: Scene, rng: np.random.Generator) -> Question | None:
    return Question("three_corners", "corners=3", _where(scene, lambda o: CORNERS[o.shape] == 3), [
        "Which shape has exactly three corners?",
        "Which objects are bounded by exactly three straight sides?",
        "If you counted corners, which shape would give you three?",
    ], [
        "shape with exactly three corners",
        "shapes with three straight sides",
        "objects that have three corners and no more",
    ])


def t_many_corners(scene: Scene, rng: np.random.Generator) -> Question | None:
    return Question("many_corners", "corners>4", _where(scene, lambda o: CORNERS[o.shape] > 4), [
        "Which shapes have more corners than a square?",
        "Which objects have more than four corners, counting the inner ones too?",
    ], [
        "shapes with more than four corners",
        "shapes with more corners than a square",
        "shapes whose outline has more than four corners",
    ])


def t_most_corners(scene: Scene, rng: np.random.Generator) -> Question | None:
    counts = [float(CORNERS[o.shape]) for o in scene.objects]
    best = _unique_extreme(counts, margin=1.0)
    if best is None or counts[best] == 0:
        return None
    return Question("most_corners", f"corners={int(counts[best])}", [best], [
        "Which shape has the most corners?",
        "If you counted the corners of every shape, which one would have the most?",
        "Which object's outline has more corners than any other?",
    ], [
        "shape with the most corners",
        "object with the largest number of corners",
    ])


def t_fewest_corners(scene: Scene, rng: np.random.Generator) -> Question | None:
    polys = _where(scene, lambda o: CORNERS[o.shape] > 0)
    if len(polys) < 2:
        return None
    neg = [-float(CORNERS[scene.objects[i].shape]) for i in polys]
    best = _unique_extreme(neg, margin=1.0)
    if best is None:
        return None
    return Question("fewest_corners", f"corners={int(-neg[best])}", [polys[best]], [
        "Among the shapes that have corners, which one has the fewest?",
        "Ignoring the round shapes, which object has the smallest number of corners?",
    ], [
        "shape with the fewest corners, not counting round ones",
        "cornered shape with the fewest corners",
    ])


def t_shape_riddle(scene: Scene, rng: np.random.Generator) -> Question | None:
    present = sorted({o.shape for o in scene.objects}, key=SHAPES.index)
    if not present:
        return None
    shape = present[int(rng.integers(len(present)))]
    riddles = SHAPE_RIDDLES[shape]
    return Question("shape_riddle", f"shape={shape}", _where(scene, lambda o: o.shape == shape), [
        f"Which shape looks like {riddles[0]}?",
        f"Which object has the outline of {riddles[1]}?",
        f"What in this picture is shaped like {riddles[2]}?",
    ], [
        f"shape that looks like {riddles[0]}",
        f"object shaped like {riddles[1]}",
        f"object with the outline of {riddles[2]}",
    ])


def t_colour_riddle(scene: Scene, rng: np.random.Generator) -> Question | None:
    present = sorted({o.colour for o in scene.objects}, key=COLOURS.index)
    if not present:
        return None
    colour = present[int(rng.integers(len(present)))]
    riddles = COLOUR_RIDDLES[colour]
    return Question("colour_riddle", f"colour={colour}", _where(scene, lambda o: o.colour == colour), [
        f"Which object has the colour of {riddles[0]}?",
        f"Which shapes are coloured like {riddles[1]}?",
        f"What here is the same colour as {riddles[2]}?",
    ], [
        f"object that has the colour of {riddles[0]}",
        f"shapes coloured like {riddles[1]}",
        f"objects the colour of {riddles[2]}",
    ])


def t_warm(scene: Scene, rng: np.random.Generator) -> Question | None:
    return Question("warm_colours", "colour=red|orange|yellow", _where(scene, lambda o: o.colour in WARM), [
        "Which shapes are painted in warm colours?",
        "Which objects have the colours of fire and sunshine?",
    ], [
        "shapes in warm colours",
        "warm-coloured objects",
        "objects coloured like flames",
    ], ignore=_where(scene, lambda o: o.colour in AMBIGUOUS_TEMPERATURE))


def t_cool(scene: Scene, rng: np.random.Generator) -> Question | None:
    return Question("cool_colours", "colour=blue|green", _where(scene, lambda o: o.colour in COOL), [
        "Which shapes are painted in cool colours?",
        "Which objects have the colours of the sea and the forest?",
    ], [
        "shapes in cool colours",
        "cool-coloured objects",
        "objects coloured like water and leaves",
    ], ignore=_where(scene, lambda o: o.colour in AMBIGUOUS_TEMPERATURE))


def _box_area(o: SceneObject) -> float:
    return (o.box[2] - o.box[0]) * (o.box[3] - o.box[1])


def t_biggest(scene: Scene, rng: np.random.Generator) -> Question | None:
    """Largest visible area by a margin, and also the largest extent (a wide ring vs a small full disc)."""
    best = _unique_extreme([float(o.area) for o in scene.objects], ratio=SIZE_RATIO)
    if best is None or _unique_extreme([_box_area(o) for o in scene.objects]) != best:
        return None
    return Question("biggest", "largest visible area", [best], [
        "Which object takes up the most space in the picture?",
        "If you had to paint every shape, which one would need the most paint?",
        "Which shape covers the largest part of the image?",
    ], [
        "biggest object in the picture",
        "largest shape",
        "object that covers the most area",
    ])


def t_smallest(scene: Scene, rng: np.random.Generator) -> Question | None:
    best = _unique_extreme([-float(o.area) for o in scene.objects])
    areas = sorted(o.area for o in scene.objects)
    if best is None or not areas[1] >= SIZE_RATIO * areas[0] or \
            _unique_extreme([-_box_area(o) for o in scene.objects]) != best:
        return None
    return Question("smallest", "smallest visible area", [best], [
        "Which object takes up the least space in the picture?",
        "Which shape would need the least paint to colour in?",
        "Which is the tiniest object here?",
    ], [
        "smallest object in the picture",
        "tiniest shape",
        "object that covers the least area",
    ])


def t_extreme(scene: Scene, rng: np.random.Generator) -> Question | None:
    """Leftmost / rightmost / topmost / bottommost, by the visible mask's centroid *and* its extent."""
    valid = []
    for name, (axis, sign, phrases, sentences) in DIRECTIONS.items():
        side = scene.width if axis == 0 else scene.height
        centre = [sign * (o.cx if axis == 0 else o.cy) for o in scene.objects]
        edge = [sign * o.box[axis + (2 if sign > 0 else 0)] for o in scene.objects]  # x0 y0 x1 y1
        best = _unique_extreme(centre, margin=max(MIN_MARGIN_PX, POSITION_MARGIN * side))
        if best is not None and _unique_extreme(edge, margin=0.5) == best:
            valid.append((name, best, phrases, sentences))
    if not valid:
        return None
    name, best, phrases, sentences = valid[int(rng.integers(len(valid)))]
    return Question("extreme_position", f"position={name}", [best], list(sentences), list(phrases))


def t_centre(scene: Scene, rng: np.random.Generator) -> Question | None:
    cx, cy = scene.width / 2, scene.height / 2
    closeness = [-float(np.hypot(o.cx - cx, o.cy - cy)) for o in scene.objects]
    best = _unique_extreme(closeness, margin=max(MIN_MARGIN_PX, POSITION_MARGIN * min(scene.width, scene.height)))
    if best is None:
        return None
    return Question("centre", "nearest the centre", [best], [
        "Which object is closest to the middle of the picture?",
        "If you put your finger on the centre of the image, which shape would be nearest?",
    ], [
        "object nearest the centre of the image",
        "shape closest to the middle of the picture",
    ])


def _anchor_and_matches(scene: Scene, rng: np.random.Generator, unique: str, shared: str
                        ) -> tuple[int, list[int]] | None:
    """A random object whose ``unique`` attribute no other object has, and the other objects that share its
    ``shared`` attribute (at least one); None when there is no such object."""
    objects = scene.objects
    counts = Counter(getattr(o, unique) for o in objects)
    anchors = [i for i, o in enumerate(objects) if counts[getattr(o, unique)] == 1
               and any(j != i and getattr(p, shared) == getattr(o, shared) for j, p in enumerate(objects))]
    if not anchors:
        return None
    a = anchors[int(rng.integers(len(anchors)))]
    value = getattr(objects[a], shared)
    return a, [i for i, o in enumerate(objects) if i != a and getattr(o, shared) == value]


def t_same_colour_as(scene: Scene, rng: np.random.Generator) -> Question | None:
    """Other objects painted like the only <shape>; that reference object itself is ignored."""
    found = _anchor_and_matches(scene, rng, unique="shape", shared="colour")
    if found is None:
        return None
    a, targets = found
    ref = scene.objects[a]
    return Question("same_colour_as", f"colour of the {ref.shape}", targets, [
        f"Which other shapes share the colour of the {ref.shape}?",
        f"Which objects are painted the same colour as the {ref.shape}?",
    ], [
        f"shapes that are the same colour as the {ref.shape}",
        f"other objects with the {ref.shape}'s colour",
    ], ignore=[a])


def t_same_shape_as(scene: Scene, rng: np.random.Generator) -> Question | None:
    """Other objects shaped like the only <colour> one; the reference object itself is ignored."""
    found = _anchor_and_matches(scene, rng, unique="colour", shared="shape")
    if found is None:
        return None
    a, targets = found
    ref = scene.objects[a]
    return Question("same_shape_as", f"shape of the {ref.colour} one", targets, [
        f"Which other objects have the same form as the {ref.colour} one?",
        f"Which shapes look like the {ref.colour} object, apart from their colour?",
    ], [
        f"shapes with the same form as the {ref.colour} object",
        f"other objects shaped like the {ref.colour} one",
    ], ignore=[a])


def t_majority_colour(scene: Scene, rng: np.random.Generator) -> Question | None:
    counts = Counter(o.colour for o in scene.objects)
    colours = sorted(counts, key=COLOURS.index)
    best = _unique_extreme([float(counts[c]) for c in colours], margin=1.0)
    if best is None or counts[colours[best]] < 2:
        return None
    colour = colours[best]
    return Question("majority_colour", f"colour={colour}", _where(scene, lambda o: o.colour == colour), [
        "Which colour appears most often here? Segment every object in that colour.",
        "Find the colour shared by the most shapes and mark all of those shapes.",
    ], [
        "objects in the most frequent colour",
        "shapes that share the most common colour of the picture",
    ])


def t_odd_colour(scene: Scene, rng: np.random.Generator) -> Question | None:
    counts = Counter(o.colour for o in scene.objects)
    lonely = _where(scene, lambda o: counts[o.colour] == 1)
    if len(lonely) != 1:
        return None
    return Question("odd_colour", "only object of its colour", lonely, [
        "Which object has a colour that no other object in the picture shares?",
        "Every colour here appears at least twice except one; which shape has it?",
    ], [
        "object whose colour no other shape has",
        "only object in its colour",
    ])


TEMPLATES: dict[str, Callable[[Scene, np.random.Generator], Question | None]] = {
    "rolls": t_rolls,
    "thread": t_thread,
    "three_corners": t_three_corners,
    "many_corners": t_many_corners,
    "most_corners": t_most_corners,
    "fewest_corners": t_fewest_corners,
    "shape_riddle": t_shape_riddle,
    "colour_riddle": t_colour_riddle,
    "warm_colours": t_warm,
    "cool_colours": t_cool,
    "biggest": t_biggest,
    "smallest": t_smallest,
    "extreme_position": t_extreme,
    "centre": t_centre,
    "same_colour_as": t_same_colour_as,
    "same_shape_as": t_same_shape_as,
    "majority_colour": t_majority_colour,
    "odd_colour": t_odd_colour,
}


def leaks(text: str, obj: SceneObject) -> bool:
    """Whether ``text`` names the object's colour or shape (singular or plural)."""
    return any(re.search(rf"\b{word}s?\b", text, flags=re.IGNORECASE) for word in (obj.colour, obj.shape))


def ask(scene: Scene, template: str, seed: int, split: str) -> Question | None:
    """The template's question about ``scene`` if it is well-posed (see the module docstring), else None."""
    rng = np.random.default_rng([seed, SPLITS.index(split), scene.image_id, list(TEMPLATES).index(template)])
    q = TEMPLATES[template](scene, rng)
    if q is None or not q.targets:
        return None
    if set(q.targets) & set(q.ignore):
        raise RuntimeError(f"template {template}: an object is both target and ignore")
    if len(q.targets) + len(q.ignore) >= len(scene.objects):
        return None  # no distractor left: "everything" is not a question
    for text in q.sentences + q.phrases:
        for i in q.targets:
            if leaks(text, scene.objects[i]):
                raise RuntimeError(f"template {template} names its answer: {text!r} vs {scene.objects[i]}")
    return q


# ---------------------------------------------------------------------------------------------------------------
# masks -> labelme polygons
# ---------------------------------------------------------------------------------------------------------------
_EIGHT = np.ones((3, 3), dtype=bool)


def hole_free_pieces(mask: np.ndarray) -> list[np.ndarray]:
    """Split ``mask`` [H, W] bool into 8-connected pieces without holes (a ring becomes two C shapes).

    A polygon cannot carry a hole in ReasonSeg's format (every polygon is filled), so a component with a hole
    is cut through the hole's centre column, recursively.
    """
    from scipy import ndimage

    out = []
    labels, n = ndimage.label(mask, structure=_EIGHT)
    for k in range(1, n + 1):
        comp = labels == k
        holes = ndimage.binary_fill_holes(comp) & ~comp  # background is 4-connected, the dual of 8
        if not holes.any():
            out.append(comp)
            continue
        hole_labels, _ = ndimage.label(holes)
        cut = int(round(float(np.nonzero(hole_labels == 1)[1].mean())))
        left, right = comp.copy(), comp.copy()
        left[:, cut:] = False
        right[:, :cut] = False
        out += hole_free_pieces(left) + hole_free_pieces(right)
    return out


def trace_piece(piece: np.ndarray) -> list[tuple[int, int]]:
    """Outline of a hole-free 8-connected piece as (x, y) boundary-pixel centres, in order.

    ``find_contours`` runs between pixel centres (vertices at edge midpoints); each vertex is moved onto the
    adjacent foreground pixel, so the polygon's fill plus outline is the piece exactly.
    """
    from skimage import measure

    h, w = piece.shape
    contours = measure.find_contours(np.pad(piece, 1).astype(np.uint8), 0.5, fully_connected="high")
    if len(contours) != 1:
        raise RuntimeError(f"expected one outline for a hole-free piece, found {len(contours)}")

    def inside(r: int, c: int) -> bool:
        return 0 <= r < h and 0 <= c < w and bool(piece[r, c])

    points: list[tuple[int, int]] = []
    for r, c in contours[0] - 1:
        if r != int(r):  # vertex between two rows
            lo, col = int(np.floor(r)), int(c)
            p = (col, lo if inside(lo, col) else lo + 1)
        else:
            lo, row = int(np.floor(c)), int(r)
            p = (lo if inside(row, lo) else lo + 1, row)
        if not points or points[-1] != p:
            points.append(p)
    if len(points) > 1 and points[0] == points[-1]:
        points.pop()
    if len(points) == 1:
        return points * 2  # a single pixel: a degenerate polygon that still rasterises (readers need >= 2 points)
    # drop the middle of straight runs (consecutive equal steps): same region and the same outline pixels
    n = len(points)
    keep = [p for k, p in enumerate(points)
            if (p[0] - points[k - 1][0], p[1] - points[k - 1][1]) != (points[(k + 1) % n][0] - p[0],
                                                                     points[(k + 1) % n][1] - p[1])]
    return keep if len(keep) >= 2 else points


def mask_to_polygons(mask: np.ndarray) -> list[list[list[int]]]:
    """[H, W] bool -> hole-free polygons ([[x, y], ...], integer pixel centres) whose filled union is ``mask``."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return []
    y0, x0 = int(ys.min()), int(xs.min())
    crop = mask[y0:int(ys.max()) + 1, x0:int(xs.max()) + 1]  # tracing the bounding box is much faster
    return [[[x + x0, y + y0] for x, y in trace_piece(p)] for p in hole_free_pieces(crop)]


def union_mask(scene: Scene, indices: list[int]) -> np.ndarray:
    from pycocotools import mask as mask_util

    out = np.zeros((scene.height, scene.width), dtype=bool)
    for i in indices:
        rle = dict(scene.objects[i].rle)
        if isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode("ascii")
        out |= mask_util.decode(rle).astype(bool)
    return out


def _centroid_x(scene: Scene, index: int) -> float:
    return float(np.nonzero(union_mask(scene, [index]))[1].mean())


def annotation(scene: Scene, q: Question, split: str, rng: np.random.Generator, sentence_share: float,
               num_texts: int) -> dict[str, Any]:
    is_sentence = bool(rng.random() < sentence_share)
    pool = q.sentences if is_sentence else q.phrases
    order = rng.permutation(len(pool))[:num_texts]
    shapes = []
    # one labelme group per answer object (group_id 0, 1, ... left to right by mask centroid), so readers can
    # ask for one mask per object; the union of all target polygons is still the answer mask
    ordered = sorted(q.targets, key=lambda i: _centroid_x(scene, i))
    for rank, index in enumerate(ordered):
        for poly in mask_to_polygons(union_mask(scene, [index])):
            shapes.append({"label": "target", "points": poly, "group_id": rank, "shape_type": "polygon",
                           "flags": {}})
    for poly in mask_to_polygons(union_mask(scene, q.ignore)) if q.ignore else []:
        shapes.append({"label": "ignore", "points": poly, "group_id": None, "shape_type": "polygon", "flags": {}})
    return {
        "text": [pool[int(i)] for i in order],
        "is_sentence": is_sentence,
        "shapes": shapes,
        "template": q.template,
        "answer": q.answer,
        "target_ann_ids": [scene.objects[i].ann_id for i in q.targets],
        # what each answer object is, in group_id order (readers may have the answer name them)
        "target_names": [f"{scene.objects[i].colour} {scene.objects[i].shape}" for i in ordered],
        "ignore_ann_ids": [scene.objects[i].ann_id for i in q.ignore],
        "source": {"split": split, "image_id": scene.image_id, "file_name": scene.file_name},
        "imageHeight": scene.height,
        "imageWidth": scene.width,
    }


# ---------------------------------------------------------------------------------------------------------------
# splits
# ---------------------------------------------------------------------------------------------------------------
def select(records: list[dict[str, Any]], count: int, split: str, seed: int) -> list[tuple[Scene, Question]]:
    """Up to ``count`` (scene, question) pairs, templates balanced.

    Images are visited in a seeded random order; each visit takes the applicable template used least so far
    (ties broken at random).  Further passes over the images add other templates of the same images when
    ``count`` exceeds the number of images.
    """
    rng = np.random.default_rng([seed, SPLITS.index(split), 1_000_003])
    order = rng.permutation(len(records)).tolist()
    scenes: dict[int, Scene] = {}
    used: set[tuple[int, str]] = set()
    counts: Counter[str] = Counter()
    chosen: list[tuple[Scene, Question]] = []
    exhausted: set[int] = set()
    while len(chosen) < count and len(exhausted) < len(order):
        for idx in order:
            if len(chosen) >= count:
                break
            if idx in exhausted:
                continue
            if idx not in scenes:
                scenes[idx] = build_scene(records[idx])
            scene = scenes[idx]
            options = [q for name in TEMPLATES if (scene.image_id, name) not in used
                       and (q := ask(scene, name, seed, split)) is not None]
            if not options:
                exhausted.add(idx)
                continue
            q = min(options, key=lambda o: (counts[o.template], float(rng.random())))
            used.add((scene.image_id, q.template))
            counts[q.template] += 1
            chosen.append((scene, q))
    return chosen


def write_split(src: Path, out: Path, split: str, count: int, seed: int, sentence_share: float, num_texts: int,
                overwrite: bool) -> dict[str, int]:
    folder = out / split
    if folder.exists() and any(folder.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{folder} is not empty; pass --overwrite to replace it or choose another --out")
        for f in folder.iterdir():
            if f.suffix in (".jpg", ".json") and f.is_file():
                f.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    records = load_split(src, split)
    image_dir = src / split / "images"
    chosen = select(records, count, split, seed)
    rng = np.random.default_rng([seed, SPLITS.index(split), 2_000_003])
    for scene, q in chosen:
        source = image_dir / scene.file_name
        if not source.is_file():
            raise FileNotFoundError(f"{source} (image {scene.image_id} of instances_{split}.json) does not exist")
        name = f"{Path(scene.file_name).stem}_{q.template}"
        shutil.copyfile(source, folder / f"{name}.jpg")
        anno = annotation(scene, q, split, rng, sentence_share, num_texts)
        (folder / f"{name}.json").write_text(json.dumps(anno, separators=(",", ":")) + "\n")
    return dict(sorted(Counter(q.template for _, q in chosen).items()))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", required=True, help="ShapesWorld folder (scripts/make_shapesworld.py --out)")
    p.add_argument("--out", required=True, help="output folder (ReasonSeg layout)")
    p.add_argument("--train", type=int, default=3000, help="items (image + question) from instances_train")
    p.add_argument("--val", type=int, default=100, help="items from instances_val (seen compositions)")
    p.add_argument("--heldout", type=int, default=100, help="items from instances_heldout (unseen compositions)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sentence-share", type=float, default=0.6, help="share of sentence-style items (is_sentence)")
    p.add_argument("--texts", type=int, default=3, help="paraphrases per item (LISA samples up to 3 per image)")
    p.add_argument("--overwrite", action="store_true", help="replace the .jpg/.json files of existing split folders")
    args = p.parse_args(argv)
    src, out = Path(args.src), Path(args.out)
    if not (src / "annotations").is_dir():
        p.error(f"--src {src} has no annotations/ folder; write one with scripts/make_shapesworld.py")
    if src.resolve() == out.resolve():
        p.error("--out must differ from --src")
    if not 0.0 <= args.sentence_share <= 1.0 or args.texts < 1:
        p.error("--sentence-share must be in [0, 1] and --texts >= 1")
    tic = time.perf_counter()
    written = {}
    for split in SPLITS:
        n = getattr(args, split)
        if n > 0:
            written[split] = write_split(src, out, split, n, args.seed, args.sentence_share, args.texts,
                                         args.overwrite)
    meta = {"source": str(src), "seed": args.seed, "sentence_share": args.sentence_share, "texts": args.texts,
            "corners": CORNERS, "size_ratio": SIZE_RATIO, "position_margin": POSITION_MARGIN,
            "templates": list(TEMPLATES), "items": written}
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    summary = {split: sum(c.values()) for split, c in written.items()}
    print(json.dumps({"items": summary, "per_template": written, "seconds": round(time.perf_counter() - tic, 1)},
                     indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
