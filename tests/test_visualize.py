"""glee.visualize: masks, boxes, labels and track ids drawn where they belong."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from glee.inference.prompts import VisualPrompt
from glee.structures import Detections
from glee.visualize import color_for, draw_detections, draw_prompts, instance_colors, save_overlay

GRAY = 100


def one_instance(track: int | None = None) -> Detections:
    masks = torch.zeros(1, 60, 80, dtype=torch.bool)
    masks[0, 3:20, 30:50] = True
    return Detections(
        boxes=torch.tensor([[10.0, 40.0, 70.0, 55.0]]), scores=torch.tensor([0.87]),
        class_ids=torch.tensor([0]), class_names=["cat"], image_size=(60, 80), masks=masks,
        track_ids=None if track is None else torch.tensor([track]),
    )


def test_mask_box_and_label_pixels() -> None:
    image = np.full((60, 80, 3), GRAY, dtype=np.uint8)
    dets = one_instance()
    out = draw_detections(image, dets, mask_alpha=0.5, line_width=1, font_size=10)
    color = np.array(color_for(0))
    assert out.shape == image.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out[10, 40], np.rint(GRAY * 0.5 + color * 0.5))  # inside the mask
    np.testing.assert_array_equal(out[3, 40], color)  # mask outline
    np.testing.assert_array_equal(out[48, 10], color)  # left box edge
    np.testing.assert_array_equal(out[55, 40], color)  # bottom box edge
    np.testing.assert_array_equal(out[50, 40], [GRAY] * 3)  # inside the box, outside the mask: untouched
    np.testing.assert_array_equal(out[5, 75], [GRAY] * 3)  # background
    tab = out[25:40, 10:70]  # the label tab sits above the box's top-left corner
    assert (tab > 230).all(-1).any() and (tab == color).all(-1).any()  # white text on a tab of the colour
    plain = draw_detections(image, dets, show_masks=False, show_labels=False, line_width=1)
    np.testing.assert_array_equal(plain[10, 40], [GRAY] * 3)


def test_track_ids_keep_colours_and_appear_in_labels() -> None:
    a = instance_colors(one_instance(track=7))
    b = instance_colors(one_instance(track=7))
    c = instance_colors(one_instance(track=8))
    assert a == b and a != c
    from glee.visualize import label_text

    assert label_text(one_instance(track=7), 0) == "#7 cat 0.87"
    with pytest.raises(ValueError, match="track_ids"):
        instance_colors(one_instance(), color_by="track")


def test_errors_and_png_output(tmp_path: Path) -> None:
    dets = one_instance()
    with pytest.raises(ValueError, match="80x60"):
        draw_detections(np.zeros((10, 10, 3), np.uint8), dets)
    path = save_overlay(np.zeros((60, 80, 3), np.uint8), dets, tmp_path / "sub" / "o.png")
    assert Image.open(path).size == (80, 60) and Image.open(path).mode == "RGB"
    empty = draw_detections(np.zeros((60, 80, 3), np.uint8), Detections.empty((60, 80)))
    assert not empty.any()


def test_prompts_drawn() -> None:
    image = np.zeros((60, 80, 3), np.uint8)
    out = draw_prompts(image, [VisualPrompt(points=[(20, 30)], negative_points=[(60, 30)]),
                               VisualPrompt(box=(5, 5, 30, 20))], radius=4)
    assert tuple(out[30, 18]) == (40, 200, 60)  # positive click: green
    assert tuple(out[28, 60]) in {(220, 40, 40), (255, 255, 255)}  # negative click: red with a white cross
    assert tuple(out[31, 57]) == (220, 40, 40)
    assert tuple(out[5, 15]) == (255, 220, 0)  # box outline
