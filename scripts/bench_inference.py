"""Benchmark GLEE inference: reference mode (the official computation) against the fast path, in one run.

Usage:
    python scripts/bench_inference.py [--preset lite] [--size 800] [--threads 2] [--device cpu|cuda]
                                      [--repeats 2] [--modes reference,fast,fast_bf16] [--tasks det,grounding]
                                      [--json results.json]

One model with random weights (seeded) serves every mode; the modes are switched with
``GleeModel.set_inference_mode`` and interleaved round by round, so machine drift hits all of them alike.
Tasks: detection with the 80 COCO names and one referring expression, on a synthetic image resized to
``--size`` on its short side (800 -> 800x1066, padded to 800x1088 inside the model).

Per task and mode it reports: the first call (fast modes: the text cache is cleared before it, so the class
names are encoded again) and repeated calls (cached text), per-stage times, peak memory, FLOPs counted by
``torch.utils.flop_counter.FlopCounterMode`` and the achieved GFLOP/s next to the machine's measured matrix
multiply rate, and whether the fast outputs equal the reference outputs within the parity tolerance
|fast - reference| <= 1e-4 + 1e-4 |reference|.  For ``fast_bf16`` it reports the largest box and score
deviation from the float32 fast path.

Timing: CPU wall clock (``time.perf_counter``) around each call; on CUDA, CUDA events.  Stage times come from
forward hooks and method wrappers (on CPU the work is synchronous, so the time between hooks is the stage's);
where the fast path runs a stage's chunks on several worker threads, the stage's time is the wall time during
which any worker was in it.
Memory is measured in separate calls after all timed rounds (one per task and mode; fast modes: a first and
a repeated call).  On CPU: peak resident set size during the call (``VmHWM`` after resetting it through
``/proc/self/clear_refs``) minus the resident size before it, with glibc's mmap threshold fixed at 64 KiB so
that freed tensors leave the process at once; the process peak is reported too.  That setting is only for the
memory calls: it turns every allocation above 64 KiB into fresh zeroed pages (page faults that serialise the
threads), which is not how a user's process runs, so the timed calls run first under glibc's defaults.  On
CUDA: ``max_memory_allocated`` minus the allocation before the call.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import math
import os
import platform
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

import glee  # noqa: F401  (installs the torchvision shim)
from glee.config import GleeConfig
from glee.inference.vocab import COCO_CLASSES
from glee.modeling.glee_model import GleeModel, GleeOutput
from glee.modeling.ms_deform_attn_fast import build_cpu_kernel, cpu_kernel_available

EXPRESSION = "the person on the left"
ATOL = RTOL = 1e-4
TASKS = ("det", "grounding")
TASK_TITLES = {"det": "detect (80 COCO names)", "grounding": f"grounding ('{EXPRESSION}')"}


# ---------------------------------------------------------------------------------------------------- machine
def machine_info(device: torch.device) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    flags = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name") and cpu in ("", platform.machine()):
                    cpu = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    flags = line
                    break
    except OSError:
        pass
    info = {
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "avx512_bf16": "avx512_bf16" in flags,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def load_average() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def gemm_rate(dtype: torch.dtype, device: torch.device, n: int = 2048, repeats: int = 5) -> float:
    """Best-of-``repeats`` GFLOP/s of an n x n matrix product."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    best = math.inf
    for i in range(repeats + 1):
        with Clock(device) as clock:
            torch.mm(a, b)
        if i:  # the first one warms up
            best = min(best, clock.seconds)
    return 2 * n**3 / best / 1e9


# ---------------------------------------------------------------------------------------------------- timing
class Clock:
    """Wall time of a block: perf_counter on CPU, CUDA events on a GPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.seconds = 0.0

    def __enter__(self) -> Clock:
        if self.cuda:
            self.start = torch.cuda.Event(enable_timing=True)
            self.end = torch.cuda.Event(enable_timing=True)
            self.start.record()
        else:
            self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.cuda:
            self.end.record()
            self.end.synchronize()
            self.seconds = self.start.elapsed_time(self.end) / 1000
        else:
            self.seconds = time.perf_counter() - self.t0


class StageTimer:
    """Accumulates per-stage times through forward hooks and method wrappers while ``active``."""

    def __init__(self, model: GleeModel, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.active = False
        self.marks: list[tuple[str, Any, Any]] = []
        self._open: dict[int, list[Any]] = defaultdict(list)
        self._handles: list[Any] = []
        self._patched: list[tuple[Any, str]] = []
        pix = model.pixel_decoder
        encoder = pix.transformer.encoder
        self._hook(model.text_encoder, "text encoder")
        if hasattr(model, "text_encoder_teacher"):
            self._hook(model.text_encoder_teacher, "text encoder: teacher")
        self._hook(model.backbone, "backbone")
        if len(encoder.vl_layers):
            self._hook(encoder.vl_layers[0], "early fusion")
        for layer in encoder.layers:
            self._hook(layer, "encoder layers")
            self._wrap(layer.self_attn, "project_value", "encoder deformable attention")
            self._wrap(layer.self_attn, "attend", "encoder deformable attention")
        self._hook(pix, "pixel decoder")
        self._hook(model.predictor, "object decoder + heads")

    def _now(self) -> Any:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def _hook(self, module: torch.nn.Module, name: str) -> None:
        def pre(*_: Any) -> None:
            if self.active:
                self._open[id(module)].append(self._now())

        def post(*_: Any) -> None:
            if self.active and self._open[id(module)]:
                self.marks.append((name, self._open[id(module)].pop(), self._now()))

        self._handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]

    def _wrap(self, obj: Any, method: str, name: str) -> None:
        original = getattr(obj, method)

        def timed(*args: Any, **kwargs: Any) -> Any:
            if not self.active:
                return original(*args, **kwargs)
            start = self._now()
            result = original(*args, **kwargs)
            self.marks.append((name, start, self._now()))
            return result

        setattr(obj, method, timed)
        self._patched.append((obj, method))

    @contextlib.contextmanager
    def record(self) -> Iterator[dict[str, float]]:
        """Yields a dict that holds the stage totals (seconds) once the block ends."""
        self.marks.clear()
        self.active = True
        result: dict[str, float] = {}
        try:
            yield result
        finally:
            self.active = False
            if self.cuda:
                torch.cuda.synchronize()
            # union of each stage's intervals: the fast path runs chunks of a stage on several worker threads
            # at once, and overlapping calls must count once (wall time), not once per worker
            spans: dict[str, list[tuple[float, float]]] = defaultdict(list)
            origin = self.marks[0][1] if self.marks else None
            for name, start, end in self.marks:
                if self.cuda:
                    spans[name].append((origin.elapsed_time(start) / 1000, origin.elapsed_time(end) / 1000))
                else:
                    spans[name].append((start, end))
            for name, intervals in spans.items():
                total, reach = 0.0, -math.inf
                for start, end in sorted(intervals):
                    if end > reach:
                        total += end - max(start, reach)
                        reach = end
                result[name] = total

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        for obj, method in self._patched:
            obj.__dict__.pop(method, None)


def stage_breakdown(raw: dict[str, float], total: float) -> dict[str, float]:
    """Exclusive stage times from the (nested) hook totals."""
    enc_attn = raw.get("encoder deformable attention", 0.0)
    enc_layers = raw.get("encoder layers", 0.0)
    fusion = raw.get("early fusion", 0.0)
    pix = raw.get("pixel decoder", 0.0)
    stages = {
        "text encoder": raw.get("text encoder", 0.0),
        "text encoder: teacher (official forward runs it)": raw.get("text encoder: teacher", 0.0),
        "backbone": raw.get("backbone", 0.0),
        "early fusion": fusion,
        "encoder: deformable attention": enc_attn,
        "encoder: FFN, norms": enc_layers - enc_attn,
        "pixel decoder: proj, pos-enc, FPN, mask feat.": pix - fusion - enc_layers,
        "object decoder + heads": raw.get("object decoder + heads", 0.0),
    }
    stages["other (tokenizer, padding, glue)"] = total - sum(stages.values())
    stages["total"] = total
    return stages


# ---------------------------------------------------------------------------------------------------- memory
class MemoryProbe:
    """Peak extra memory of a block (see the module docstring)."""

    def __init__(self, device: torch.device) -> None:
        """Fixes glibc's mmap threshold for the rest of the process (CPU): create it after the timed calls."""
        self.cuda = device.type == "cuda"
        self.rss_ok = False
        if not self.cuda:
            try:
                ctypes.CDLL("libc.so.6").mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD: fixed, no dynamic growth
                self._clear_peak()
                self.rss_ok = True
            except OSError:
                pass
        self.process_peak = 0.0

    @staticmethod
    def _status(key: str) -> float:
        with open("/proc/self/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) / 1024  # MiB
        return float("nan")

    @staticmethod
    def _clear_peak() -> None:
        with open("/proc/self/clear_refs", "w", encoding="utf-8") as f:
            f.write("5")

    @contextlib.contextmanager
    def measure(self) -> Iterator[dict[str, float]]:
        result: dict[str, float] = {}
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated() / 2**20
        elif self.rss_ok:
            self._clear_peak()
            before = self._status("VmRSS")
        else:
            before = float("nan")
        try:
            yield result
        finally:
            if self.cuda:
                torch.cuda.synchronize()
                peak = torch.cuda.max_memory_allocated() / 2**20
            else:
                peak = self._status("VmHWM") if self.rss_ok else float("nan")
            self.process_peak = max(self.process_peak, peak)
            result.update(before=before, peak=peak, extra=peak - before)


# ---------------------------------------------------------------------------------------------------- inputs
def synthetic_image(cfg: GleeConfig, short_side: int, device: torch.device) -> torch.Tensor:
    """A fixed 480x640 RGB test picture (gradients, discs, stripes), resized to ``short_side`` and normalised."""
    h, w = 480, 640
    y = torch.linspace(0, 1, h).view(h, 1).expand(h, w)
    x = torch.linspace(0, 1, w).view(1, w).expand(h, w)
    r = 255 * (0.5 + 0.5 * torch.sin(6 * x + 3 * y))
    g = 255 * ((x - 0.3) ** 2 + (y - 0.6) ** 2 < 0.05).float() * 0.8 + 40 * y
    b = 255 * (0.5 + 0.5 * torch.sign(torch.sin(40 * x))) * (y > 0.5).float()
    image = torch.stack([r, g, b])[None].clamp(0, 255).round()
    scale = short_side / min(h, w)
    size = (round(h * scale), round(w * scale))
    image = F.interpolate(image, size=size, mode="bilinear", align_corners=False)
    mean = torch.tensor(cfg.pixel_mean).view(1, 3, 1, 1)
    std = torch.tensor(cfg.pixel_std).view(1, 3, 1, 1)
    return ((image - mean) / std).to(device)


def condition_random_weights(model: GleeModel, seed: int) -> None:
    """Re-draw the few random parameters whose official initialisation makes a random model degenerate.

    * ``lang_projection`` and ``predictor.category_embed`` start as ``torch.rand`` (all positive): every class
      logit is then a large positive number (about 1e3) and the two-stage top-k chooses among near-ties, so
      float rounding alone (even the reference at 1 vs 2 threads) changes which queries are selected.  They
      get N(0, 1/fan_in) entries instead, giving logits of order 10 with clear gaps, as trained weights do.
    * Deformable attention starts with query-independent offsets and uniform weights, and the box head with
      zero updates; those get small random weights so that queries sample different points and boxes move.
    Compute is unchanged (same shapes); only the comparisons become meaningful.
    """
    from glee.modeling.ms_deform_attn import MultiScaleDeformableAttention

    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        model.lang_projection.normal_(0.0, model.lang_projection.shape[0] ** -0.5, generator=gen)
        model.predictor.category_embed.normal_(0.0, model.predictor.category_embed.shape[0] ** -0.5, generator=gen)
        for module in model.modules():
            if isinstance(module, MultiScaleDeformableAttention):
                module.sampling_offsets.weight.normal_(0.0, 0.01, generator=gen)
                module.attention_weights.weight.normal_(0.0, 0.02, generator=gen)
        model.predictor.bbox_embed.layers[-1].weight.normal_(0.0, 0.01, generator=gen)


def run_task(model: GleeModel, task: str, image: torch.Tensor) -> GleeOutput:
    if task == "det":
        return model(image, categories=COCO_CLASSES)
    return model(image, expressions=[EXPRESSION])


# ---------------------------------------------------------------------------------------------------- comparisons
def output_tensors(out: GleeOutput) -> dict[str, torch.Tensor]:
    res = {
        "pred_logits": out.pred_logits, "pred_scores": out.pred_scores, "pred_boxes": out.pred_boxes,
        "pred_masks": out.pred_masks, "query_embeddings": out.query_embeddings,
        "pixel_embeddings": out.pixel_embeddings,
    }
    for k, v in out.interm_outputs.items():
        if v is not None:
            res[f"interm.{k}"] = v
    for i, aux in enumerate(out.aux_outputs):
        for k, v in aux.items():
            if v is not None:
                res[f"aux{i}.{k}"] = v
    return res


def parity(ref: GleeOutput, ours: GleeOutput) -> tuple[float, str, float]:
    """(max excess over the tolerance, worst tensor, its max |diff|); excess <= 0 passes.

    Every tensor both return is compared; the reference also returns the two-stage prediction's masks, which
    the fast modes skip by default (``GleeModel.forward(interm_masks=...)``).
    """
    worst, worst_name, worst_abs = -math.inf, "", 0.0
    a_all, b_all = output_tensors(ref), output_tensors(ours)
    missing = set(a_all) - set(b_all) - {"interm.pred_masks"}
    if missing:
        raise ValueError(f"the fast output lacks {sorted(missing)}")
    for name, a in a_all.items():
        if name not in b_all:
            continue
        b = b_all[name].to(a.dtype)
        diff = (a.float() - b.float()).abs()
        excess = (diff - (ATOL + RTOL * a.float().abs())).max().item()
        if excess > worst:
            worst, worst_name, worst_abs = excess, name, diff.max().item()
    return worst, worst_name, worst_abs


def bf16_deviation(fp32: GleeOutput, bf16: GleeOutput, task: str) -> dict[str, float]:
    """Deviation of the bf16 outputs from float32, as a user sees it.

    The demo keeps the top-k queries by class probability (15 for detection, 1 for grounding).  Rounding can
    reorder near-equal queries, so each float32 top-k detection is matched to the bf16 query with the nearest
    box (any rank); reported: the largest box deviation (pixels of the padded image) and class-probability
    and confidence deviation over those pairs, the share of pairs within 2 px, the share of the float32
    top-k query indices that bf16 also ranks top-k, and the largest relative deviation of the per-pixel
    embedding (no query choice involved).
    """
    h, w = fp32.padded_size
    scale = torch.tensor([w, h, w, h], dtype=torch.float32, device=fp32.pred_boxes.device)
    prob32, prob16 = fp32.pred_logits[0].sigmoid(), bf16.pred_logits[0].sigmoid()  # [Q, K]
    k = min(15 if task == "det" else 1, prob32.shape[0])
    top32 = prob32.amax(-1).topk(k).indices
    top16 = prob16.amax(-1).topk(k).indices
    boxes32 = fp32.pred_boxes[0, top32] * scale  # [k, 4] cx, cy, w, h in px
    boxes16 = bf16.pred_boxes[0] * scale  # [Q, 4]
    dist = (boxes32[:, None] - boxes16[None]).abs().amax(-1)  # [k, Q]
    box_dev, match = dist.min(-1)
    cls = prob32[top32].argmax(-1)
    prob_dev = (prob32[top32, cls] - prob16[match, cls]).abs()
    conf_dev = (fp32.pred_scores[0, top32, 0].sigmoid() - bf16.pred_scores[0, match, 0].sigmoid()).abs()
    pix = (fp32.pixel_embeddings - bf16.pixel_embeddings).abs().max() / fp32.pixel_embeddings.abs().max()
    return {
        "k": k,
        "max_box_dev_px": box_dev.max().item(),
        "share_within_2px": (box_dev <= 2).float().mean().item(),
        "max_class_prob_dev": prob_dev.max().item(),
        "max_confidence_dev": conf_dev.max().item(),
        "same_topk_queries": len(set(top32.tolist()) & set(top16.tolist())) / k,
        "pixel_embedding_rel_dev": pix.item(),
    }


def _linear_pointwise_flops(input_shape: Any, weight_shape: Any, *args: Any, out_shape: Any = None,
                            **kwargs: Any) -> int:
    rows = math.prod(input_shape[:-1])
    return 2 * rows * weight_shape[1] * weight_shape[0]  # weight [out, in]


def _convolution_pointwise_flops(x_shape: Any, second: Any, third: Any, *args: Any, out_shape: Any = None,
                                 **kwargs: Any) -> int:
    """Both overloads: ``(X, W, B, ...)`` and ``.binary(X, other, W, B, ...)`` (the counter keys by op packet)."""
    from torch.utils.flop_counter import conv_flop_count

    w_shape = third if third is not None and len(third) == len(x_shape) else second
    return conv_flop_count(list(x_shape), list(w_shape), list(out_shape), transposed=False)


def count_flops(fn: Callable[[], Any]) -> float:
    """GFLOPs of matrix products, convolutions and attention in ``fn`` (PyTorch's FLOP counter), including the
    fast path's oneDNN fused ops -- linears (``mkldnn._linear_pointwise``) and convolutions with an add + ReLU
    post-op (``mkldnn._convolution_pointwise.binary``) -- which the counter does not know."""
    from torch.utils.flop_counter import FlopCounterMode

    custom = {}
    if hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        custom[torch.ops.mkldnn._linear_pointwise] = _linear_pointwise_flops
    if hasattr(torch.ops.mkldnn, "_convolution_pointwise"):
        custom[torch.ops.mkldnn._convolution_pointwise] = _convolution_pointwise_flops
    counter = FlopCounterMode(display=False, custom_mapping=custom)
    with counter:
        fn()
    return counter.get_total_flops() / 1e9


# ---------------------------------------------------------------------------------------------------- main
@dataclass
class Record:
    first: list[float] = field(default_factory=list)
    repeat: list[float] = field(default_factory=list)
    stages: list[dict[str, float]] = field(default_factory=list)
    memory: list[float] = field(default_factory=list)
    gflops: float = float("nan")
    output: GleeOutput | None = None


def fmt(x: float, digits: int = 2) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="lite", help="GleeConfig preset (default lite)")
    parser.add_argument("--size", type=int, default=800, help="short side of the test image (default 800)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--repeats", type=int, default=2, help="rounds; each times every mode (default 2)")
    parser.add_argument("--modes", default="reference,fast,fast_bf16")
    parser.add_argument("--tasks", default="det,grounding")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-flops", action="store_true", help="skip the FLOP-counting calls")
    parser.add_argument("--no-teacher", action="store_true",
                        help="build the model without the CLIP teacher tower (the official model has one, and "
                             "its forward runs it on every category call; reference mode does the same)")
    parser.add_argument("--compile", action="store_true",
                        help="add mode fast_compiled: fast + GleeModel.compile_fast() (compile time reported)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    if args.compile and "fast_compiled" not in modes:
        modes.append("fast_compiled")
    tasks = [t for t in args.tasks.split(",") if t]
    if "reference" not in modes:
        parser.error("--modes must include reference (everything is compared with it)")
    if any(t not in TASKS for t in tasks):
        parser.error(f"--tasks must be among {TASKS}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but CUDA is not available")
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    info = machine_info(device)
    print(f"machine: {info['platform']} | {info['cpu']} | {info['cpu_count']} CPUs | torch threads "
          f"{info['torch_threads']} | torch {info['torch']}" + (f" | GPU {info.get('gpu')}" if "gpu" in info else ""))
    t0 = time.perf_counter()
    probe_start = {"fp32": gemm_rate(torch.float32, device), "bf16": gemm_rate(torch.bfloat16, device)}
    print(f"2048x2048 matmul: fp32 {probe_start['fp32']:.0f} GFLOP/s, bf16 {probe_start['bf16']:.0f} GFLOP/s; "
          f"load average {load_average()}")
    kernel_note = "n/a (CUDA)"
    if device.type == "cpu":
        t = time.perf_counter()
        try:
            build_cpu_kernel()
            kernel_note = f"C kernel ready in {time.perf_counter() - t:.1f} s (built once, cached)"
        except RuntimeError as err:
            kernel_note = f"C kernel unavailable ({str(err).splitlines()[0]}); gather kernel used"
        if not cpu_kernel_available():
            kernel_note = "C kernel unavailable; gather kernel used"
    print(f"deformable-attention kernel (fast modes): {kernel_note}")

    torch.manual_seed(args.seed)
    model = GleeModel(GleeConfig.preset(args.preset), with_teacher=not args.no_teacher).eval()
    condition_random_weights(model, args.seed)
    model.to(device)
    image = synthetic_image(model.cfg, args.size, device)
    print(f"model {args.preset}{'' if args.no_teacher else ' (with the teacher text tower)'}: "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters; image "
          f"{tuple(image.shape[-2:])} (padded inside the model to /{model.cfg.size_divisibility})", flush=True)
    timer = StageTimer(model, device)
    records: dict[tuple[str, str], Record] = {(t, m): Record() for t in tasks for m in modes}

    def set_mode(mode: str) -> None:
        model.set_inference_mode("fast" if mode == "fast_compiled" else mode)
        model.compile_fast(mode == "fast_compiled")

    def timed_call(task: str, mode: str, first: bool) -> GleeOutput:
        set_mode(mode)
        if first:
            model.clear_text_cache()
        with timer.record() as raw, Clock(device) as clock:
            out = run_task(model, task, image)
        rec = records[(task, mode)]
        (rec.first if first else rec.repeat).append(clock.seconds)
        if not first or mode == "reference":
            rec.stages.append(stage_breakdown(raw, clock.seconds))
        rec.output = out
        print(f"  {task:<9} {mode:<9} {'first' if first else 'repeat':<6} {clock.seconds:7.2f} s   load "
              f"{load_average()}", flush=True)
        return out

    def memory_call(memory: MemoryProbe, task: str, mode: str, first: bool) -> None:
        set_mode(mode)
        if first:
            model.clear_text_cache()
        with memory.measure() as mem:
            run_task(model, task, image)
        records[(task, mode)].memory.append(mem["extra"])
        print(f"  {task:<9} {mode:<9} {'first' if first else 'repeat':<6} peak +{mem['extra']:.0f} MiB", flush=True)

    with torch.no_grad():
        # process warm-up (oneDNN primitive creation, lazy inits) with a different prompt, not timed
        warm = {}
        for mode in modes:
            if mode == "reference":
                continue
            set_mode(mode)
            with Clock(device) as clock:
                model(image, categories=["warm-up"])
            warm[mode] = clock.seconds  # fast_compiled: includes torch.compile's compilation
        print("process warm-up (first forwards, not counted): "
              + ", ".join(f"{m} {s:.2f} s" for m, s in warm.items()), flush=True)
        for r in range(args.repeats):
            print(f"round {r + 1}/{args.repeats}", flush=True)
            for task in tasks:
                for mode in modes:
                    if mode == "reference":
                        timed_call(task, mode, first=True)
                        records[(task, mode)].repeat.append(records[(task, mode)].first[-1])
                    elif mode in ("fast", "fast_compiled"):
                        timed_call(task, mode, first=True)
                        timed_call(task, mode, first=False)
                        timed_call(task, mode, first=False)
                    else:
                        timed_call(task, mode, first=False)
        print("memory (separate calls, after the timed ones)", flush=True)
        memory = MemoryProbe(device)
        for task in tasks:
            for mode in modes:
                memory_call(memory, task, mode, first=mode != "fast_bf16")
                if mode in ("fast", "fast_compiled"):
                    memory_call(memory, task, mode, first=False)
        if not args.no_flops:
            for task in tasks:
                for mode in modes:
                    set_mode("fast" if mode == "fast_compiled" else mode)  # same maths; count it eagerly
                    records[(task, mode)].gflops = count_flops(lambda t=task: run_task(model, t, image))
    timer.remove()
    probe_end = {"fp32": gemm_rate(torch.float32, device), "bf16": gemm_rate(torch.bfloat16, device)}
    wall = time.perf_counter() - t0

    # ------------------------------------------------------------------ report
    results: dict[str, Any] = {"machine": info, "gemm_start": probe_start, "gemm_end": probe_end,
                               "kernel": kernel_note, "warmup": warm, "wall_s": wall, "tasks": {}}
    lines = []
    cols = [(t, m) for t in tasks for m in modes]
    header = "| metric | " + " | ".join(f"{t}: {m}" for t, m in cols) + " |"
    lines += [header, "|" + "---|" * (len(cols) + 1)]

    def row(name: str, values: list[str]) -> None:
        lines.append(f"| {name} | " + " | ".join(values) + " |")

    def rep(t: str, m: str) -> float:
        return statistics.median(records[(t, m)].repeat)

    def first(t: str, m: str) -> float:
        rec = records[(t, m)]
        return min(rec.first) if rec.first else float("nan")

    row("first call s (min; fast: text cache cleared)", [fmt(first(t, m)) for t, m in cols])
    row("repeated call s: median [min, max]", [
        f"{fmt(rep(t, m))} [{fmt(min(records[(t, m)].repeat))}, {fmt(max(records[(t, m)].repeat))}]" for t, m in cols
    ])
    row("speed-up vs reference: repeated (first)", [
        f"{rep(t, 'reference') / rep(t, m):.2f}x" + (f" ({first(t, 'reference') / first(t, m):.2f}x)"
                                                     if records[(t, m)].first else "")
        for t, m in cols
    ])
    peak_key = "extra MiB (GPU allocated)" if device.type == "cuda" else "extra RSS MiB"
    row(f"peak memory during the call, {peak_key} (ratio to reference)", [
        f"{max(records[(t, m)].memory):.0f} ({memory_ratio(records, t, m):.2f})"
        for t, m in cols
    ])
    row("GFLOPs counted (matmul, conv, attention)", [fmt(records[(t, m)].gflops, 0) for t, m in cols])
    row("achieved GFLOP/s (repeated median)", [fmt(records[(t, m)].gflops / rep(t, m), 0) for t, m in cols])
    probe = {m: min(probe_start["bf16" if m == "fast_bf16" else "fp32"], probe_end["bf16" if m == "fast_bf16"
                                                                                    else "fp32"]) for m in modes}
    probe_hi = {m: max(probe_start["bf16" if m == "fast_bf16" else "fp32"], probe_end["bf16" if m == "fast_bf16"
                                                                                       else "fp32"]) for m in modes}
    row("  as % of the matmul probe (fp32; bf16 for fast_bf16), worst probe", [
        f"{100 * records[(t, m)].gflops / rep(t, m) / probe_hi[m]:.0f}%" for t, m in cols
    ])
    parity_cells, dev_cells = [], []
    for t, m in cols:
        ref = records[(t, "reference")].output
        out = records[(t, m)].output
        if m == "reference":
            parity_cells.append("-")
        else:
            excess, name, max_abs = parity(ref, out)
            if m == "fast_bf16":  # not meant to be at float32 parity: its deviation has its own row
                parity_cells.append(f"bf16, not at parity (worst {name} |d| {max_abs:.1e}); see the next row")
            else:
                ok = "PASS" if excess <= 0 else "FAIL"
                parity_cells.append(f"{ok} (worst {name} |d| {max_abs:.1e}, excess {excess:.1e})")
            results["tasks"].setdefault(t, {}).setdefault(m, {})["parity_excess"] = excess
        if m == "fast_bf16" and (t, "fast") in records:
            dev = bf16_deviation(records[(t, "fast")].output, out, t)
            dev_cells.append(
                f"top-{dev['k']} matched: box <= {dev['max_box_dev_px']:.2f} px ({100 * dev['share_within_2px']:.0f}%"
                f" within 2 px), class prob <= {dev['max_class_prob_dev']:.4f}, confidence <= "
                f"{dev['max_confidence_dev']:.4f}; same top-{dev['k']} queries {100 * dev['same_topk_queries']:.0f}%;"
                f" pixel embedding {100 * dev['pixel_embedding_rel_dev']:.2f}% of its max"
            )
            results["tasks"].setdefault(t, {}).setdefault(m, {})["bf16_deviation"] = dev
        else:
            dev_cells.append("-")
    row("outputs vs reference (|d| <= 1e-4 + 1e-4|ref|)", parity_cells)
    if "fast_bf16" in modes:
        row("bf16 deviation from float32 fast (boxes in px of the padded image)", dev_cells)

    stage_names = list(next(iter(records.values())).stages[0].keys())
    stage_lines = ["| stage (median of repeated calls, s) | " + " | ".join(f"{t}: {m}" for t, m in cols) + " |",
                   "|" + "---|" * (len(cols) + 1)]
    for s in stage_names:
        stage_lines.append(f"| {s} | " + " | ".join(
            fmt(statistics.median(st[s] for st in records[(t, m)].stages), 3) for t, m in cols) + " |")

    print()
    print(f"machine: {info['platform']}; CPU {info['cpu']} ({info['cpu_count']} CPUs, AVX512-BF16 "
          f"{'yes' if info['avx512_bf16'] else 'no'}); torch {info['torch']}, {info['torch_threads']} threads; "
          f"device {info['device']}" + (f" ({info.get('gpu')})" if "gpu" in info else ""))
    print(f"matmul probe 2048^2 (start / end): fp32 {probe_start['fp32']:.0f} / {probe_end['fp32']:.0f} GFLOP/s, "
          f"bf16 {probe_start['bf16']:.0f} / {probe_end['bf16']:.0f} GFLOP/s; load average at the end "
          f"{load_average()}; process peak {'GPU allocated' if device.type == 'cuda' else 'RSS'} "
          f"{memory.process_peak:.0f} MiB; benchmark wall time {wall:.0f} s")
    print(f"deformable attention (fast modes): {kernel_note}; process warm-up: "
          + ", ".join(f"{m} {s:.2f} s" for m, s in warm.items()))
    print()
    print("\n".join(lines))
    print()
    print("\n".join(stage_lines))
    print()
    checks = acceptance(records, tasks, modes, probe_hi)
    for line in checks:
        print(line)
    results["table"] = lines
    results["stages"] = stage_lines
    results["acceptance"] = checks
    for (t, m), rec in records.items():
        results["tasks"].setdefault(t, {}).setdefault(m, {}).update(
            first=rec.first, repeat=rec.repeat, memory_extra_mib=rec.memory, gflops=rec.gflops,
            stages=rec.stages)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2, default=str)
    del probe
    return 0


def memory_ratio(records: dict[tuple[str, str], Record], task: str, mode: str) -> float:
    """Peak extra memory of ``mode`` over reference mode (nan when the reference added nothing measurable)."""
    reference = max(records[(task, "reference")].memory)
    return max(records[(task, mode)].memory) / reference if reference > 0 else float("nan")


def acceptance(records: dict[tuple[str, str], Record], tasks: list[str], modes: list[str],
               probe: dict[str, float]) -> list[str]:
    """The issue's acceptance lines, evaluated on this run."""
    out = ["acceptance (this run):"]

    def rep(t: str, m: str) -> float:
        return statistics.median(records[(t, m)].repeat)

    def check(ok: bool, text: str) -> None:
        out.append(f"  [{'met' if ok else 'MISSED'}] {text}")

    if "det" in tasks and "fast" in modes:
        sp = rep("det", "reference") / rep("det", "fast")
        check(sp >= 4, f"detect, repeated category list: {sp:.2f}x >= 4x")
        sp1 = min(records[("det", "reference")].first) / min(records[("det", "fast")].first)
        check(sp1 >= 3, f"detect, first call: {sp1:.2f}x >= 3x")
    if "grounding" in tasks and "fast" in modes:
        sp = rep("grounding", "reference") / rep("grounding", "fast")
        check(sp >= 2, f"one expression: {sp:.2f}x >= 2x")
    for t in tasks:
        if "fast" in modes:
            excess, name, _ = parity(records[(t, "reference")].output, records[(t, "fast")].output)
            check(excess <= 0, f"{t}: fast outputs within the parity tolerance (worst excess {excess:.1e}, {name})")
            ratio = memory_ratio(records, t, "fast")
            check(ratio <= 0.4, f"{t}: peak memory of the call {ratio:.2f}x reference <= 0.4x")
            eff = records[(t, "fast")].gflops / rep(t, "fast") / probe["fast"]
            check(eff >= 0.7, f"{t}: fast path {100 * eff:.0f}% of the fp32 matmul rate >= 70%")
        if "fast_bf16" in modes:
            sp = rep(t, "reference") / rep(t, "fast_bf16")
            check(sp >= 8, f"{t}: bf16 mode {sp:.2f}x reference >= 8x")
    return out


if __name__ == "__main__":
    sys.exit(main())
