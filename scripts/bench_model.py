"""CPU latency and peak memory of one GLEE model-level forward (random weights).

Usage: python scripts/bench_model.py [--preset lite] [--short-side 800] [--threads 2] [--repeats 2]

Each prompt mode runs in its own process so that peak memory is measured per mode.  Prints a table with
the machine it ran on.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

COCO = (
    "person bicycle car motorcycle airplane bus train truck boat traffic_light fire_hydrant stop_sign parking_meter "
    "bench bird cat dog horse sheep cow elephant bear zebra giraffe backpack umbrella handbag tie suitcase frisbee "
    "skis snowboard sports_ball kite baseball_bat baseball_glove skateboard surfboard tennis_racket bottle wine_glass "
    "cup fork knife spoon bowl banana apple sandwich orange broccoli carrot hot_dog pizza donut cake chair couch "
    "potted_plant bed dining_table toilet tv laptop mouse remote keyboard cell_phone microwave oven toaster sink "
    "refrigerator book clock vase scissors teddy_bear hair_drier toothbrush"
).replace("_", " ").split(" ")


def _worker(args: argparse.Namespace) -> dict:
    import torch

    import glee  # noqa: F401
    from glee import GleeConfig, GleeModel
    from glee.benchmark import machine_summary, peak_rss_mb, time_call

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = GleeModel(GleeConfig.preset(args.preset)).eval()
    rss_model = peak_rss_mb()
    h = args.short_side
    w = int(h * 4 / 3) // 32 * 32  # a 4:3 photo resized to the short side, padded to /32
    image = torch.randn(1, 3, h, w)
    categories = [c.replace("_", " ") for c in COCO]
    prompt = {"categories": categories} if args.mode == "categories" else {"expressions": ["the red car on the left"]}
    with torch.no_grad():
        times = time_call(lambda: model(image, **prompt), repeats=args.repeats)
    return {
        "mode": args.mode, "size": f"{h}x{w}", "mean_s": sum(times) / len(times), "min_s": min(times),
        "peak_rss_mb": peak_rss_mb(), "model_rss_mb": rss_model, "machine": machine_summary(),
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="lite")
    parser.add_argument("--short-side", type=int, default=800)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--mode", choices=["categories", "expression"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.mode:
        print(json.dumps(_worker(args)))
        return 0
    rows = []
    for mode in ("categories", "expression"):
        cmd = [sys.executable, __file__, "--preset", args.preset, "--short-side", str(args.short_side),
               "--threads", str(args.threads), "--repeats", str(args.repeats), "--mode", mode]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"machine: {rows[0]['machine']}")
    print(f"model: GLEE-{args.preset} ({rows[0]['params_m']:.1f}M parameters, random weights), reference path")
    print(f"{'prompt':<26} {'input':>10} {'mean s':>8} {'min s':>8} {'peak RSS MiB':>13} {'model RSS MiB':>14}")
    for r in rows:
        label = "80 COCO names" if r["mode"] == "categories" else "one expression"
        print(f"{label:<26} {r['size']:>10} {r['mean_s']:>8.2f} {r['min_s']:>8.2f} {r['peak_rss_mb']:>13.0f} "
              f"{r['model_rss_mb']:>14.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
