"""ShapesWorld: a deterministic synthetic world for training and evaluating GLEE end to end on a CPU.

Images (320-512 px per side, textured backgrounds) hold 3-10 objects of 12-160 px.  An object is a colour x shape
composition ("blue star"); 8 colours x 8 shapes give 64 categories, of which 8 (one per colour and per shape) are
held out: they never appear in the training split, only in ``heldout``.  Objects overlap, but every object keeps
at least half of its area visible (occlusion <= 50%); masks are the visible pixels.  Referring expressions name an
object by attributes and, when needed, a spatial relation to a landmark ("the small blue star left of the red
ring"); every expression is checked to be unambiguous in its scene.  Videos are short clips of objects moving
(bouncing inside the frame) and occluding each other, with the same 50% rule in every frame.

Everything is a function of (seed, split, index): regenerating gives identical files.  ``write_dataset`` writes
the files the real loaders read:

* ``annotations/instances_<split>.json`` -- COCO instances (RLE masks); read with ``reader: coco`` (or
  ``reader: sa1b`` for class-agnostic training);
* ``annotations/refs_<split>.json`` -- RefCOCO-style (one entry per referred object, ``expressions`` list);
* ``annotations/videos_<split>.json`` -- YouTube-VIS-style clips.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 38, 38), "green": (36, 160, 64), "blue": (38, 82, 215), "yellow": (236, 206, 36),
    "purple": (134, 56, 186), "orange": (242, 132, 28), "white": (242, 242, 242), "black": (22, 22, 22),
}
SHAPES = ("circle", "square", "triangle", "star", "ring", "diamond", "hexagon", "cross")
SPLITS = ("train", "val", "heldout")
RELATIONS = ("left of", "right of", "above", "below")


def default_heldout() -> list[tuple[str, str]]:
    """One held-out shape per colour, each shape once: (colour i, shape (3i + 1) mod 8)."""
    colors = list(COLORS)
    return [(colors[i], SHAPES[(3 * i + 1) % len(SHAPES)]) for i in range(len(colors))]


@dataclass
class ShapesWorldConfig:
    seed: int = 0
    min_side: int = 320
    max_side: int = 512
    min_objects: int = 3
    max_objects: int = 10
    min_object: int = 12
    max_object: int = 160
    max_occlusion: float = 0.5
    video_frames: int = 8
    max_speed: float = 12.0  # px per frame
    refs_per_image: int = 3
    heldout: list[tuple[str, str]] = field(default_factory=default_heldout)
    jpeg_quality: int = 95

    def __post_init__(self) -> None:
        if not (0 < self.min_side <= self.max_side):
            raise ValueError("need 0 < min_side <= max_side")
        if not (1 <= self.min_objects <= self.max_objects):
            raise ValueError("need 1 <= min_objects <= max_objects")
        if not (4 <= self.min_object <= self.max_object <= self.min_side):
            raise ValueError("need 4 <= min_object <= max_object <= min_side")
        for c, s in self.heldout:
            if c not in COLORS or s not in SHAPES:
                raise ValueError(f"held-out composition ({c}, {s}) is not a ShapesWorld colour/shape")


@dataclass
class WorldObject:
    color: str
    shape: str
    size: int  # side of the object's square footprint, px
    angle: float
    x: float  # centre
    y: float
    vx: float = 0.0
    vy: float = 0.0

    @property
    def name(self) -> str:
        return f"{self.color} {self.shape}"

    @property
    def size_word(self) -> str | None:
        if self.size < 48:
            return "small"
        if self.size > 96:
            return "large"
        return None


def categories(cfg: ShapesWorldConfig | None = None, split: str | None = None) -> list[dict[str, Any]]:
    """COCO categories (ids 1..64, colour-major).  The train split lists only the seen compositions."""
    cfg = cfg or ShapesWorldConfig()
    held = set(cfg.heldout)
    out = []
    for i, c in enumerate(COLORS):
        for j, s in enumerate(SHAPES):
            if split == "train" and (c, s) in held:
                continue
            out.append({"id": i * len(SHAPES) + j + 1, "name": f"{c} {s}", "color": c, "shape": s,
                        "heldout": (c, s) in held})
    return out


# ------------------------------------------------------------------------------------------ rendering
def _polygon(shape: str, r: float, angle: float) -> list[tuple[float, float]] | None:
    def ngon(n: int, radius: float, offset: float = 0.0) -> list[tuple[float, float]]:
        return [(radius * math.cos(angle + offset + 2 * math.pi * k / n),
                 radius * math.sin(angle + offset + 2 * math.pi * k / n)) for k in range(n)]

    if shape == "square":
        return ngon(4, r, math.pi / 4)
    if shape == "triangle":
        return ngon(3, r, -math.pi / 2)
    if shape == "hexagon":
        return ngon(6, r)
    if shape == "diamond":
        pts = [(r, 0.0), (0.0, 0.62 * r), (-r, 0.0), (0.0, -0.62 * r)]
    elif shape == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else 0.45 * r
            a = -math.pi / 2 + math.pi * k / 5
            pts.append((rad * math.cos(a), rad * math.sin(a)))
    elif shape == "cross":
        a = 0.34 * r
        pts = [(-a, -r), (a, -r), (a, -a), (r, -a), (r, a), (a, a), (a, r), (-a, r), (-a, a), (-r, a), (-r, -a),
               (-a, -a)]
    else:
        return None
    ca, sa = math.cos(angle), math.sin(angle)
    return [(x * ca - y * sa, x * sa + y * ca) for x, y in pts]


def object_mask(obj: WorldObject, height: int, width: int) -> np.ndarray:
    """Full (unoccluded) [H, W] bool mask of an object."""
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    r = obj.size / 2
    if obj.shape in ("circle", "ring"):
        draw.ellipse([obj.x - r, obj.y - r, obj.x + r, obj.y + r], fill=255)
        if obj.shape == "ring":
            ri = 0.55 * r
            draw.ellipse([obj.x - ri, obj.y - ri, obj.x + ri, obj.y + ri], fill=0)
    else:
        pts = _polygon(obj.shape, r, obj.angle)
        draw.polygon([(obj.x + px, obj.y + py) for px, py in pts], fill=255)
    return np.asarray(canvas) > 127


def background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Muted textured background: smooth noise + stripes or checks + grain, [H, W, 3] uint8."""
    base = rng.uniform(70, 170, size=3)
    gy, gx = rng.integers(3, 9, size=2)
    coarse = rng.normal(0, 1, size=(gy, gx, 3)).astype(np.float32)
    smooth = np.asarray(
        Image.fromarray(((coarse - coarse.min()) / (np.ptp(coarse) + 1e-6) * 255).astype(np.uint8)).resize(
            (width, height), Image.BICUBIC), dtype=np.float32) / 255.0 - 0.5
    img = base + 45 * smooth
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    kind = rng.integers(3)
    period = rng.uniform(10, 40)
    if kind == 0:
        theta = rng.uniform(0, math.pi)
        pattern = np.sin((xx * math.cos(theta) + yy * math.sin(theta)) * 2 * math.pi / period)
    elif kind == 1:
        pattern = np.sign(np.sin(xx * 2 * math.pi / period) * np.sin(yy * 2 * math.pi / period))
    else:
        pattern = np.zeros_like(xx)
    img = img + rng.uniform(6, 16) * pattern[..., None]
    img = img + rng.normal(0, 6, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def paint(image: np.ndarray, objects: list[WorldObject], masks: list[np.ndarray], rng: np.random.Generator) -> None:
    """Draw objects back to front (list order) with a little shading."""
    for obj, m in zip(objects, masks):
        color = np.asarray(COLORS[obj.color], dtype=np.float32)
        shade = 1.0 + rng.normal(0, 0.04, size=(int(m.sum()), 1))
        image[m] = np.clip(color[None] * shade, 0, 255).astype(np.uint8)


def visible_masks(full: list[np.ndarray]) -> list[np.ndarray]:
    """Visible part of each mask; later masks are in front."""
    out = []
    cover = np.zeros_like(full[0]) if full else None
    for m in reversed(full):
        out.append(m & ~cover)
        cover = cover | m
    return out[::-1]


# ------------------------------------------------------------------------------------------ scenes
class ShapesWorld:
    def __init__(self, cfg: ShapesWorldConfig | None = None) -> None:
        self.cfg = cfg or ShapesWorldConfig()
        held = set(self.cfg.heldout)
        self.seen = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in held]
        self.heldout = list(self.cfg.heldout)

    def _rng(self, kind: str, split: str, index: int) -> np.random.Generator:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return np.random.default_rng([self.cfg.seed, SPLITS.index(split), ("image", "video").index(kind), index])

    def _compositions(self, split: str, rng: np.random.Generator, n: int) -> list[tuple[str, str]]:
        if split != "heldout":
            return [self.seen[i] for i in rng.integers(len(self.seen), size=n)]
        comps = [self.heldout[i] for i in rng.integers(len(self.heldout), size=max(1, n // 2))]
        comps += [self.seen[i] for i in rng.integers(len(self.seen), size=n - len(comps))]
        return [comps[i] for i in rng.permutation(len(comps))]

    def _place(
        self, rng: np.random.Generator, height: int, width: int, comps: list[tuple[str, str]], frames: int,
    ) -> tuple[list[WorldObject], list[list[np.ndarray]]]:
        """Objects with trajectories such that no object is more than max_occlusion hidden in any frame.

        Returns the objects (back to front) and per frame the list of their full masks.
        """
        cfg = self.cfg
        objects: list[WorldObject] = []
        full: list[list[np.ndarray]] = [[] for _ in range(frames)]
        for color, shape in comps:
            for _ in range(30):
                hi = min(cfg.max_object, height, width)
                size = int(round(math.exp(rng.uniform(math.log(cfg.min_object), math.log(hi)))))
                r = size / 2
                obj = WorldObject(color, shape, size, float(rng.uniform(0, 2 * math.pi)),
                                  float(rng.uniform(r, width - r)), float(rng.uniform(r, height - r)))
                if frames > 1:
                    speed = rng.uniform(0, cfg.max_speed)
                    heading = rng.uniform(0, 2 * math.pi)
                    obj.vx, obj.vy = speed * math.cos(heading), speed * math.sin(heading)
                track = self._trajectory(obj, height, width, frames)
                masks = [object_mask(o, height, width) for o in track]
                if any(m.sum() < 16 for m in masks):
                    continue
                ok = True
                for f in range(frames):
                    cover = masks[f]
                    vis = visible_masks(full[f] + [cover])
                    for k, m in enumerate(full[f]):
                        if vis[k].sum() < (1 - cfg.max_occlusion) * m.sum():
                            ok = False
                            break
                    if not ok:
                        break
                if ok:
                    objects.append(obj)
                    for f in range(frames):
                        full[f].append(masks[f])
                    break
        return objects, full

    def _scene_objects(
        self, rng: np.random.Generator, split: str, height: int, width: int, frames: int
    ) -> tuple[list[WorldObject], list[list[np.ndarray]]]:
        """Draw the object count and place; redraw the scene (a few times) if fewer than min_objects fit."""
        cfg = self.cfg
        best: tuple[list[WorldObject], list[list[np.ndarray]]] = ([], [[] for _ in range(frames)])
        for _ in range(8):
            n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
            objects, full = self._place(rng, height, width, self._compositions(split, rng, n), frames)
            if len(objects) > len(best[0]):
                best = (objects, full)
            if len(objects) >= cfg.min_objects and (split != "heldout" or any(
                    (o.color, o.shape) in set(self.heldout) for o in objects)):
                return objects, full
        return best

    @staticmethod
    def _trajectory(obj: WorldObject, height: int, width: int, frames: int) -> list[WorldObject]:
        """Positions over time, bouncing off the image borders."""
        out = []
        x, y, vx, vy = obj.x, obj.y, obj.vx, obj.vy
        r = obj.size / 2
        for f in range(frames):
            out.append(WorldObject(obj.color, obj.shape, obj.size, obj.angle + 0.05 * f, x, y, vx, vy))
            x, y = x + vx, y + vy
            if x < r or x > width - r:
                vx = -vx
                x = min(max(x, r), width - r)
            if y < r or y > height - r:
                vy = -vy
                y = min(max(y, r), height - r)
        return out

    def image(self, split: str, index: int) -> dict[str, Any]:
        """One scene: ``image`` [H, W, 3] uint8, ``objects`` (back to front), ``masks`` (visible) [N, H, W]."""
        rng = self._rng("image", split, index)
        cfg = self.cfg
        height, width = (int(v) for v in rng.integers(cfg.min_side, cfg.max_side + 1, size=2))
        objects, full = self._scene_objects(rng, split, height, width, 1)
        masks = visible_masks(full[0]) if objects else []
        img = background(rng, height, width)
        paint(img, objects, masks, rng)
        return {"image": img, "objects": objects, "masks": np.stack(masks) if masks else
                np.zeros((0, height, width), dtype=bool), "height": height, "width": width,
                "expressions": self.referring_expressions(objects, masks, rng)}

    def video(self, split: str, index: int) -> dict[str, Any]:
        """A clip: ``frames`` list of images, ``masks`` [T, N, H, W] visible masks, ``objects``."""
        rng = self._rng("video", split, index)
        cfg = self.cfg
        height, width = (int(v) for v in rng.integers(cfg.min_side, cfg.max_side + 1, size=2))
        objects, full = self._scene_objects(rng, split, height, width, cfg.video_frames)
        bg = background(rng, height, width)
        frames, all_masks = [], []
        for f in range(cfg.video_frames):
            vis = visible_masks(full[f]) if objects else []
            img = bg.copy()
            paint(img, objects, vis, rng)
            frames.append(img)
            all_masks.append(np.stack(vis) if vis else np.zeros((0, height, width), dtype=bool))
        return {"frames": frames, "masks": np.stack(all_masks), "objects": objects, "height": height, "width": width}

    # ------------------------------------------------------------------ referring expressions
    def referring_expressions(
        self, objects: list[WorldObject], masks: list[np.ndarray], rng: np.random.Generator
    ) -> list[tuple[int, list[str]]]:
        """(object index, unambiguous expressions) for up to ``refs_per_image`` objects."""
        if not objects:
            return []
        boxes = [_mask_box(m) for m in masks]
        refs = []
        for t in rng.permutation(len(objects)).tolist():
            if masks[t].sum() < 0.7 * object_mask(objects[t], *masks[t].shape).sum():
                continue  # heavily occluded targets make poor referents
            exprs = self._expressions_for(t, objects, boxes)
            if exprs:
                order = rng.permutation(len(exprs))[:3]
                refs.append((t, [exprs[i] for i in sorted(order.tolist())]))
            if len(refs) >= self.cfg.refs_per_image:
                break
        return refs

    @staticmethod
    def _expressions_for(t: int, objects: list[WorldObject], boxes: list[tuple[float, ...]]) -> list[str]:
        target = objects[t]

        def matches(o: WorldObject, with_size: bool) -> bool:
            return o.name == target.name and (not with_size or o.size_word == target.size_word)

        def relation_holds(a: int, rel: str, b: int) -> bool:
            ax, ay = (boxes[a][0] + boxes[a][2]) / 2, (boxes[a][1] + boxes[a][3]) / 2
            x1, y1, x2, y2 = boxes[b]
            return {"left of": ax < x1, "right of": ax > x2, "above": ay < y1, "below": ay > y2}[rel]

        out = []
        variants = [False] + ([True] if target.size_word else [])
        for with_size in variants:
            words = f"{target.size_word} {target.name}" if with_size else target.name
            same = [i for i, o in enumerate(objects) if matches(o, with_size)]
            if same == [t]:
                out.append(f"the {words}")
            # relations to landmarks that are unique by colour and shape
            for lm, landmark in enumerate(objects):
                if lm == t or sum(o.name == landmark.name for o in objects) != 1 or landmark.name == target.name:
                    continue
                for rel in RELATIONS:
                    holders = [i for i in same if relation_holds(i, rel, lm)]
                    if holders == [t]:
                        out.append(f"the {words} {rel} the {landmark.name}")
        return out


def _mask_box(m: np.ndarray) -> tuple[float, float, float, float]:
    ys = np.flatnonzero(m.any(1))
    xs = np.flatnonzero(m.any(0))
    return float(xs[0]), float(ys[0]), float(xs[-1] + 1), float(ys[-1] + 1)


# ------------------------------------------------------------------------------------------ writer
def _rle(mask: np.ndarray) -> dict[str, Any]:
    from pycocotools import mask as mask_util

    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def write_dataset(
    root: str | Path,
    images: dict[str, int] | None = None,
    videos: dict[str, int] | None = None,
    cfg: ShapesWorldConfig | None = None,
) -> dict[str, dict[str, str]]:
    """Write ShapesWorld to ``root``.

    Args:
        images: number of images per split, e.g. {"train": 2000, "val": 200, "heldout": 200}.
        videos: number of clips per split.
    Returns:
        per split, the paths of the files written (``instances``, ``refs``, ``videos``, ``image_root``).
    """
    cfg = cfg or ShapesWorldConfig()
    world = ShapesWorld(cfg)
    root = Path(root)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    written: dict[str, dict[str, str]] = {}
    cat_id = {c["name"]: c["id"] for c in categories(cfg)}
    for split, count in (images or {}).items():
        cats = categories(cfg, split)
        img_dir = root / split / "images"
        img_dir.mkdir(parents=True, exist_ok=True)
        coco: dict[str, Any] = {"info": {"description": f"ShapesWorld {split}", "seed": cfg.seed},
                                "images": [], "annotations": [], "categories": cats}
        refs: dict[str, Any] = {"info": coco["info"], "images": [], "annotations": [],
                                "categories": [{"id": 1, "name": "object"}]}
        ann_id = ref_id = 1
        for i in range(count):
            scene = world.image(split, i)
            name = f"{i:06d}.jpg"
            Image.fromarray(scene["image"]).save(img_dir / name, quality=cfg.jpeg_quality)
            image_id = i + 1
            coco["images"].append({"id": image_id, "file_name": name, "height": scene["height"],
                                   "width": scene["width"]})
            obj_ann = []
            for obj, m in zip(scene["objects"], scene["masks"]):
                x1, y1, x2, y2 = _mask_box(m)
                ann = {"id": ann_id, "image_id": image_id, "category_id": cat_id[obj.name], "iscrowd": 0,
                       "bbox": [x1, y1, x2 - x1, y2 - y1], "area": int(m.sum()), "segmentation": _rle(m),
                       "attributes": {"color": obj.color, "shape": obj.shape, "size": obj.size}}
                coco["annotations"].append(ann)
                obj_ann.append(ann)
                ann_id += 1
            for t, exprs in scene["expressions"]:
                refs["images"].append({"id": ref_id, "file_name": name, "height": scene["height"],
                                       "width": scene["width"], "expressions": exprs, "original_id": image_id})
                src = obj_ann[t]
                refs["annotations"].append({"id": ref_id, "image_id": ref_id, "category_id": 1, "iscrowd": 0,
                                            "bbox": src["bbox"], "area": src["area"],
                                            "segmentation": src["segmentation"]})
                ref_id += 1
        inst_path = root / "annotations" / f"instances_{split}.json"
        refs_path = root / "annotations" / f"refs_{split}.json"
        inst_path.write_text(json.dumps(coco))
        refs_path.write_text(json.dumps(refs))
        written.setdefault(split, {}).update(
            {"instances": str(inst_path), "refs": str(refs_path), "image_root": str(img_dir)}
        )
    for split, count in (videos or {}).items():
        cats = categories(cfg, split)
        vid_root = root / split / "videos"
        ytvis: dict[str, Any] = {"info": {"description": f"ShapesWorld videos {split}", "seed": cfg.seed},
                                 "videos": [], "annotations": [], "categories": cats}
        ann_id = 1
        for v in range(count):
            clip = world.video(split, v)
            vid_dir = vid_root / f"{v:06d}"
            vid_dir.mkdir(parents=True, exist_ok=True)
            names = []
            for f, frame in enumerate(clip["frames"]):
                Image.fromarray(frame).save(vid_dir / f"{f:05d}.jpg", quality=cfg.jpeg_quality)
                names.append(f"{v:06d}/{f:05d}.jpg")
            ytvis["videos"].append({"id": v + 1, "file_names": names, "height": clip["height"],
                                    "width": clip["width"], "length": len(names)})
            for k, obj in enumerate(clip["objects"]):
                bboxes, segms, areas = [], [], []
                for f in range(len(names)):
                    m = clip["masks"][f][k]
                    if m.any():
                        x1, y1, x2, y2 = _mask_box(m)
                        bboxes.append([x1, y1, x2 - x1, y2 - y1])
                        segms.append(_rle(m))
                        areas.append(int(m.sum()))
                    else:
                        bboxes.append(None)
                        segms.append(None)
                        areas.append(None)
                ytvis["annotations"].append({"id": ann_id, "video_id": v + 1, "category_id": cat_id[obj.name],
                                             "iscrowd": 0, "bboxes": bboxes, "segmentations": segms,
                                             "areas": areas})
                ann_id += 1
        path = root / "annotations" / f"videos_{split}.json"
        path.write_text(json.dumps(ytvis))
        written.setdefault(split, {}).update({"videos": str(path), "video_root": str(vid_root)})
    return written
