"""Write the ShapesWorld dataset (COCO, RefCOCO-style and YouTube-VIS-style files) for training and evaluation.

    python scripts/make_shapesworld.py --out datasets/shapesworld --train 20000 --val 500 --heldout 500 \\
        --train-videos 2000 --val-videos 100 [--seed 0]

The output is a pure function of the arguments (see ``train.data.shapesworld``); point the ShapesWorld recipe at
it with ``SHAPESWORLD=<out>``.
"""

from __future__ import annotations

import argparse
import json
import time

from train.data.shapesworld import ShapesWorldConfig, categories, write_dataset


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train", type=int, default=2000, help="training images")
    p.add_argument("--val", type=int, default=200, help="validation images (seen compositions)")
    p.add_argument("--heldout", type=int, default=200, help="images with held-out colour-shape compositions")
    p.add_argument("--train-videos", type=int, default=200)
    p.add_argument("--val-videos", type=int, default=20)
    p.add_argument("--heldout-videos", type=int, default=0)
    p.add_argument("--frames", type=int, default=8, help="frames per video clip")
    args = p.parse_args(argv)
    cfg = ShapesWorldConfig(seed=args.seed, video_frames=args.frames)
    images = {k: v for k, v in (("train", args.train), ("val", args.val), ("heldout", args.heldout)) if v > 0}
    videos = {k: v for k, v in (("train", args.train_videos), ("val", args.val_videos),
                                ("heldout", args.heldout_videos)) if v > 0}
    tic = time.perf_counter()
    written = write_dataset(args.out, images, videos, cfg)
    held = [c["name"] for c in categories(cfg) if c["heldout"]]
    print(json.dumps({"written": written, "heldout_compositions": held,
                      "seconds": round(time.perf_counter() - tic, 1)}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
