"""Interactive prompts: clicks, boxes, scribbles and masks -> GLEE prompt masks.

GLEE's visual prompter takes one boolean mask per object plus a type.  The official demo builds it on the
ORIGINAL image and then resizes it like the image:

* point: a filled rectangle around the click with half-size (H // 40, W // 40) (rows
  ``cy - H//40 : cy + H//40``, columns ``cx - W//40 : cx + W//40``, integer click position);
* box: the filled rectangle ``y1:y2, x1:x2``;
* scribble: the stroke pixels;
* mask: the object mask itself.

Several clicks and negative clicks on one object (our design; the official inference has no negative
branch, its negative point set is always empty):

1. the prompt mask is the union of the positive clicks' rectangles (type ``point``);
2. every negative click's rectangle is carved out of the prompt mask (so the template and the decoder's
   point tokens never sample the excluded region); a prompt whose positive area is fully carved away is an
   error;
3. candidate queries are re-ranked by their masks: (positive clicks covered - negative clicks covered),
   ties broken by class probability (:func:`glee.inference.postprocess.select_by_clicks`).

A single positive click follows the demo exactly (top-1 by class probability).  Negative clicks can also be
given with a box, scribble or mask prompt: they carve the prompt and re-rank in the same way.

Out-of-frame handling: clicks must lie inside the image (an error otherwise); boxes and scribble strokes are
clipped to the image, and a prompt that ends up empty is an error.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Point = tuple[float, float]


@dataclass
class VisualPrompt:
    """One object to segment.  Coordinates are (x, y) pixels of the original image.

    Give exactly one positive kind: ``points`` (one or more clicks), ``box`` (x1, y1, x2, y2), ``scribble``
    (a [H, W] bool array, or polylines as lists of (x, y)), or ``mask`` ([H, W] bool).  ``negative_points``
    may accompany any of them.
    """

    points: Sequence[Point] = ()
    negative_points: Sequence[Point] = ()
    box: Sequence[float] | None = None
    scribble: Any = None
    mask: Any = None
    scribble_width: int = 3  # stroke width in pixels when ``scribble`` is given as polylines

    def __post_init__(self) -> None:
        self.points = [_point(p, "points") for p in self.points]
        self.negative_points = [_point(p, "negative_points") for p in self.negative_points]
        given = [k for k in ("points", "box", "scribble", "mask") if _given(getattr(self, k))]
        if not given:
            raise ValueError("a visual prompt needs a positive part: points, box, scribble or mask")
        if len(given) > 1:
            raise ValueError(f"a visual prompt takes one positive kind, got {given}; use separate prompts")
        if self.box is not None:
            box = [float(v) for v in self.box]
            if len(box) != 4 or not all(math.isfinite(v) for v in box):
                raise ValueError(f"box must be 4 finite numbers (x1, y1, x2, y2), got {self.box!r}")
            if box[2] <= box[0] or box[3] <= box[1]:
                raise ValueError(f"box {box} has x2 <= x1 or y2 <= y1; give (x1, y1, x2, y2) with x2 > x1, y2 > y1")
            self.box = box
        if self.scribble_width < 1:
            raise ValueError("scribble_width must be >= 1")

    @property
    def kind(self) -> str:
        """The model's ``visual_prompt_type``: point, box, scribble or mask."""
        for k in ("box", "scribble", "mask"):
            if _given(getattr(self, k)):
                return k
        return "point"

    @property
    def needs_click_ranking(self) -> bool:
        """More than one click or any negative click: rank candidates by click agreement."""
        return len(self.negative_points) > 0 or len(self.points) > 1


def _given(value: Any) -> bool:
    if value is None:
        return False
    if isinstance(value, np.ndarray):
        return True
    try:
        return len(value) > 0
    except TypeError:
        return True


def _point(p: Any, name: str) -> Point:
    try:
        x, y = (float(v) for v in p)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: each point must be (x, y), got {p!r}") from exc
    if not (math.isfinite(x) and math.isfinite(y)):
        raise ValueError(f"{name}: point {p!r} is not finite")
    return x, y


def _check_inside(points: Sequence[Point], height: int, width: int, name: str) -> None:
    for x, y in points:
        if not (0 <= x < width and 0 <= y < height):
            raise ValueError(f"{name}: click ({x:g}, {y:g}) lies outside the {width}x{height} image; "
                             f"x must be in [0, {width}) and y in [0, {height})")


def click_rectangle(mask: np.ndarray, x: float, y: float, value: bool = True) -> None:
    """Set the demo's click rectangle around (x, y) in ``mask`` [H, W] (in place).

    Half-size (H // 40, W // 40), at least 1 pixel so that images under 40 pixels still get a prompt, and
    clamped at the image border (the demo's slicing would wrap around for clicks near the top/left edge).
    """
    height, width = mask.shape
    cx, cy = int(x), int(y)
    hh, hw = max(1, height // 40), max(1, width // 40)
    mask[max(0, cy - hh) : max(0, cy + hh), max(0, cx - hw) : max(0, cx + hw)] = value


def prompt_mask(prompt: VisualPrompt, height: int, width: int) -> np.ndarray:
    """The prompt's boolean mask [H, W] on the original image (before resizing)."""
    _check_inside(prompt.points, height, width, "points")
    _check_inside(prompt.negative_points, height, width, "negative_points")
    mask = np.zeros((height, width), dtype=bool)
    kind = prompt.kind
    if kind == "point":
        for x, y in prompt.points:
            click_rectangle(mask, x, y)
    elif kind == "box":
        x1, y1, x2, y2 = prompt.box  # type: ignore[misc]
        # integer boxes give the demo's y1:y2, x1:x2; fractional ones cover every touched pixel
        c1, r1 = max(0, math.floor(x1)), max(0, math.floor(y1))
        c2, r2 = min(width, math.ceil(x2)), min(height, math.ceil(y2))
        if c2 <= c1 or r2 <= r1:
            raise ValueError(f"box {prompt.box} lies outside the {width}x{height} image")
        mask[r1:r2, c1:c2] = True
    elif kind == "scribble":
        mask = _scribble_mask(prompt.scribble, height, width, prompt.scribble_width)
    else:
        mask = _array_mask(prompt.mask, height, width, "mask")
    if not mask.any():
        raise ValueError(f"the {kind} prompt covers no pixel of the {width}x{height} image")
    for x, y in prompt.negative_points:
        click_rectangle(mask, x, y, value=False)
    if not mask.any():
        raise ValueError("negative clicks remove the whole prompt; move them away from the positive prompt")
    return mask


def _array_mask(value: Any, height: int, width: int, name: str) -> np.ndarray:
    array = np.asarray(value.cpu() if hasattr(value, "cpu") else value)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.shape != (height, width):
        raise ValueError(f"{name} must be [H, W] = ({height}, {width}) like the image, got {array.shape}")
    return array.astype(bool)  # always a copy: negative clicks carve it in place


def _scribble_mask(value: Any, height: int, width: int, stroke: int) -> np.ndarray:
    if isinstance(value, np.ndarray) or hasattr(value, "cpu"):
        return _array_mask(value, height, width, "scribble")
    from PIL import Image, ImageDraw

    canvas = Image.new("1", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for line in value:
        pts = [_point(p, "scribble") for p in line]
        if len(pts) == 1:
            x, y = pts[0]
            r = stroke / 2
            draw.ellipse([x - r, y - r, x + r, y + r], fill=1)
        else:
            draw.line(pts, fill=1, width=stroke)
    return np.array(canvas, dtype=bool)  # a writable copy: negative clicks carve it in place


@dataclass
class PromptPlan:
    """A prompt prepared for one forward: its mask and the clicks used for ranking."""

    prompt: VisualPrompt
    mask: np.ndarray  # [H, W] bool on the original image
    positive: list[Point] = field(default_factory=list)  # (x, y) original pixels (pixel centres)
    negative: list[Point] = field(default_factory=list)


def plan_prompt(prompt: VisualPrompt, height: int, width: int) -> PromptPlan:
    return PromptPlan(
        prompt=prompt,
        mask=prompt_mask(prompt, height, width),
        positive=[(x, y) for x, y in prompt.points],
        negative=[(x, y) for x, y in prompt.negative_points],
    )


def clicks_to_canvas(points: Sequence[Point], original: tuple[int, int], resized: tuple[int, int],
                     padded: tuple[int, int]) -> list[Point]:
    """(x, y) original pixels -> (x, y) in [0, 1] of the padded canvas (pixel centres, as the resize maps them)."""
    oh, ow = original
    rh, rw = resized
    ph, pw = padded
    return [(((int(x) + 0.5) / ow) * rw / pw, ((int(y) + 0.5) / oh) * rh / ph) for x, y in points]
