"""The fast path (`pipe.optimize()`) against diffusers + torch.compile: issue 16's targets, in one process.

    bash benchmarks/run_gpu.sh                                         # on a GPU machine: the one command
    python benchmarks/bench_fast.py                                    # full configs, 1024 px, 30 steps, fp16, cuda
    python benchmarks/bench_fast.py --parts batch,fp8                  # a second call, if one call cannot hold all
    python benchmarks/bench_fast.py --config tiny --device cpu --size 64 --steps 2 --batch 2 \
        --compile-backend eager                                        # smoke run on a CPU (what the tests run)

Both pipelines start from the same random weights (full-size SDXL configs unless --config says otherwise) and the
same seed. Only one pipeline is on the device at a time (the other waits on the CPU), so each peak memory figure is
that pipeline alone with everything on the device. Parts (`--parts`, default all):

- single: one image. diffusers eager, diffusers + torch.compile (`--diffusers-mode`, fullgraph), ours plain,
  ours `optimize()` (fused projections, channels_last, attention kernel per shape, CUDA graphs, bf16 VAE decode)
  and ours `optimize(compile=True)`. Medians of `--repeats` calls after warm-up (compiles and captures happen in the
  warm-up and are timed apart as `first_call_s`). Peak memory of each variant's timed calls.
- batch: `--batch` images per call, ours `optimize()` and diffusers + torch.compile: images/s.
`--no-compile` leaves every compiled variant out (CPU figures: eager against eager).
- fp8: ours `optimize(fp8=True)` against ours in bfloat16: time and pixel difference.

The JSON (benchmarks/results/fast-<device>-<config>-<size>px-<dtype>.json; --out-dir, --out) is rewritten after every
variant, so a run cut short keeps what it measured. A table is printed last.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from bench_text2img import ROOT, build_reference, ours_sharing_weights

PROMPT = "a cat sitting on a beach at sunset"
PARTS = ("single", "batch", "fp8")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


class Bench:
    """Runs and times pipelines on one device, recording into one JSON document."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.device = torch.device(args.device)
        self.result: dict = {
            "benchmark": "fast", "config": args.config, "size": args.size, "steps": args.steps,
            "guidance_scale": args.guidance, "dtype": args.dtype, "batch": args.batch, "repeats": args.repeats,
            "diffusers_compile_mode": args.diffusers_mode, "device": str(self.device),
            "machine": {
                "platform": platform.platform(), "torch": torch.__version__,
                "gpu": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else None,
            },
            "variants": {},
        }
        self.images: dict[str, object] = {}
        where = self.device.type
        if where == "cuda":  # the card in the name, as the other results: "NVIDIA H100 80GB HBM3" -> cuda-h100
            where += "-" + torch.cuda.get_device_name(self.device).lower().replace("nvidia", "").split()[0]
        self.out = Path(args.out) if args.out else Path(args.out_dir) / (
            f"fast-{where}-{args.config}-{args.size}px-{args.dtype}.json")

    def call(self, pipe, batch: int = 1):
        """One text-to-image call: (seconds, images as a numpy array)."""
        _sync(self.device)
        start = time.perf_counter()
        images = pipe(
            PROMPT, num_inference_steps=self.args.steps, guidance_scale=self.args.guidance, height=self.args.size,
            width=self.args.size, num_images_per_prompt=batch, generator=torch.Generator("cpu").manual_seed(0),
            output_type="np",
        ).images
        _sync(self.device)
        return time.perf_counter() - start, images

    def measure(self, name: str, pipe, batch: int = 1, warmup: int = 2) -> dict:
        """Warm-up calls (the first timed apart: compiles, captures), then `repeats` timed calls with the peak
        memory over them."""
        first, _ = self.call(pipe, batch)
        for _ in range(warmup - 1):
            self.call(pipe, batch)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)  # reserved memory cached by earlier calls still counts
        times = []
        for _ in range(self.args.repeats):
            seconds, images = self.call(pipe, batch)
            times.append(seconds)
        entry = {"batch": batch, "first_call_s": first, "seconds": times, "median_s": statistics.median(times),
                 "images_per_s": batch / statistics.median(times)}
        if self.device.type == "cuda":
            # allocated: tensors; reserved: the allocator's whole footprint, including CUDA graphs' private pools
            entry["peak_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
            entry["peak_reserved_gib"] = torch.cuda.max_memory_reserved(self.device) / 2**30
        self.images[name] = images
        self.result["variants"][name] = entry
        self.save()
        print(name, json.dumps({k: v for k, v in entry.items() if k != "seconds"}), flush=True)
        return entry

    def diff(self, key: str, a: str, b: str) -> None:
        """Max and mean absolute pixel difference (0-1 scale) of two variants' images, when both ran."""
        if a in self.images and b in self.images:
            d = abs(self.images[a] - self.images[b])
            self.result.setdefault("pixel_diff", {})[key] = {"max": float(d.max()), "mean": float(d.mean())}
            self.save()

    def save(self) -> None:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(json.dumps(self.result, indent=2) + "\n")


def compiled_unet(unet, args: argparse.Namespace):
    """torch.compile of a whole UNet module, as the seeds and diffusers' docs do it."""
    if args.compile_backend != "inductor":
        return torch.compile(unet, backend=args.compile_backend, fullgraph=True)
    return torch.compile(unet, mode=args.diffusers_mode, fullgraph=True)


def our_compile_settings(args: argparse.Namespace):
    from sdxl.pipelines.fast import CompileSettings

    return CompileSettings(backend=args.compile_backend)


def run_diffusers(bench: Bench, ref, parts: set[str]) -> None:
    """diffusers eager and compiled (single image; batch with the compiled UNet)."""
    args = bench.args
    ref.to(bench.device)
    if "single" in parts:
        bench.measure("diffusers", ref)
    if args.no_compile:
        if "batch" in parts:
            bench.measure("diffusers batch", ref, batch=args.batch)
    else:
        unet = ref.unet
        ref.unet = compiled_unet(unet, args)
        if "single" in parts:
            bench.measure("diffusers+compile", ref)
        if "batch" in parts:
            # compiled afresh for the batch shape (a second shape would make dynamo recompile with a dynamic batch)
            torch._dynamo.reset()
            ref.unet = compiled_unet(unet, args)
            _free(bench.device)
            bench.measure("diffusers+compile batch", ref, batch=args.batch)
        ref.unet = unet
        torch._dynamo.reset()
    ref.to("cpu")
    _free(bench.device)


def run_ours(bench: Bench, ref, parts: set[str]) -> None:
    """Ours on the same weights: plain, optimize(), optimize(compile=True); batch; fp8 against bfloat16."""
    args = bench.args
    ours = ours_sharing_weights(ref)
    ours.set_progress_bar_config(disable=True)
    ours.to(bench.device)
    if "single" in parts:
        bench.measure("ours", ours)
    path = ours.optimize()
    bench.result["fast_path"] = path.describe()
    if "single" in parts:
        bench.measure("ours+optimize", ours)
    if "batch" in parts:
        ours._fast.runner.reset()  # the single-image graphs would hold their memory through the batch figures
        _free(bench.device)
        bench.measure("ours+optimize batch", ours, batch=args.batch)
    if "single" in parts and not args.no_compile:
        ours.optimize(compile=our_compile_settings(args))
        bench.measure("ours+optimize+compile", ours)
        torch._dynamo.reset()
    ours.unoptimize()
    if "fp8" in parts:
        ours.to(dtype=torch.bfloat16)
        ours.optimize()
        bench.measure("ours bf16+optimize", ours)
        ours.optimize(fp8=True)  # one-way: the UNet stays fp8 after this
        bench.measure("ours fp8+optimize", ours)
        bench.diff("fp8_vs_bf16", "ours fp8+optimize", "ours bf16+optimize")
    ours.unoptimize()
    del ours
    _free(bench.device)


def summary(bench: Bench) -> None:
    """Ratios against the issue's targets, and the table printed last."""
    v = bench.result["variants"]
    ratios = {}

    def ratio(key: str, num: str, den: str) -> None:
        if num in v and den in v:
            ratios[key] = v[num]["median_s"] / v[den]["median_s"]

    best_ours = min((n for n in ("ours+optimize", "ours+optimize+compile") if n in v),
                    key=lambda n: v[n]["median_s"], default=None)
    if best_ours:
        bench.result["best_ours"] = best_ours
        ratio("diffusers+compile / best ours", "diffusers+compile", best_ours)
        ratio("diffusers eager / best ours", "diffusers", best_ours)
    ratio("ours plain / ours+optimize", "ours", "ours+optimize")
    for theirs in ("diffusers+compile batch", "diffusers batch"):
        if "ours+optimize batch" in v and theirs in v:
            ratios[f"batch images/s ours+optimize / {theirs.removesuffix(' batch')}"] = (
                v["ours+optimize batch"]["images_per_s"] / v[theirs]["images_per_s"])
    bench.result["ratios"] = ratios
    bench.save()
    print(f"\n{'variant':28s} {'batch':>5s} {'median s':>9s} {'img/s':>7s} {'first s':>8s} {'peak GiB':>9s} "
          f"{'reserved':>9s}")
    for name, e in v.items():
        peak = f"{e['peak_gib']:.2f}" if "peak_gib" in e else "-"
        reserved = f"{e['peak_reserved_gib']:.2f}" if "peak_reserved_gib" in e else "-"
        print(f"{name:28s} {e['batch']:5d} {e['median_s']:9.3f} {e['images_per_s']:7.2f} {e['first_call_s']:8.1f} "
              f"{peak:>9s} {reserved:>9s}")
    for key, value in ratios.items():
        print(f"{key}: {value:.3f}")
    for key, d in bench.result.get("pixel_diff", {}).items():
        print(f"pixel diff {key}: max {d['max'] * 255:.2f}/255 mean {d['mean'] * 255:.2f}/255")
    print(f"-> {bench.out}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=("tiny", "full", "demo"), default="full")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="float16", choices=("float32", "float16", "bfloat16"))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    parser.add_argument("--diffusers-mode", default="reduce-overhead", help="torch.compile mode for diffusers' UNet")
    parser.add_argument("--compile-backend", default="inductor", help="'eager' for a quick smoke run")
    parser.add_argument("--no-compile", action="store_true",
                        help="leave out the compiled variants (CPU figures: eager against eager)")
    parser.add_argument("--out", default=None, help="JSON path (default: OUT_DIR/fast-<device>-<config>-...json)")
    parser.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    unknown = set(args.parts.split(",")) - set(PARTS)
    if unknown:
        parser.error(f"unknown --parts {sorted(unknown)}; choose from {', '.join(PARTS)}")
    return args


def main(argv: list[str] | None = None, on_done: Callable[[dict], None] | None = None) -> dict:
    args = parse_args(argv)
    parts = set(args.parts.split(","))
    bench = Bench(args)
    dtype = getattr(torch, args.dtype)
    with tempfile.TemporaryDirectory() as tmp:
        # draw the random weights where they are fast to draw, then park them on the CPU between pipelines
        init = args.device if args.config == "full" else "cpu"
        ref = build_reference(args.config, dtype, Path(tmp), init_device=init).to("cpu")
    ref.set_progress_bar_config(disable=True)
    _free(bench.device)
    if parts & {"single", "batch"}:
        run_diffusers(bench, ref, parts)
    run_ours(bench, ref, parts)
    bench.diff("ours+optimize_vs_diffusers", "ours+optimize", "diffusers")
    bench.diff("ours+optimize_vs_ours", "ours+optimize", "ours")
    summary(bench)
    return bench.result


if __name__ == "__main__":
    main()
