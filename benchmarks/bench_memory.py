"""Peak accelerator memory of text-to-image under the memory options, ours against diffusers in one run.

    python benchmarks/bench_memory.py --device cuda --size 1024 --steps 4 --dtype float16

Both pipelines hold the same weight tensors (full-size SDXL configs, random weights), kept on the CPU between
configurations. For each pipeline and each configuration (everything on the GPU; VAE tiling; model CPU offload;
model offload + VAE tiling; sequential offload) the peak of `torch.cuda.max_memory_allocated` over one call is
recorded, with the call's time. Peak memory does not depend on the step count, so a few steps suffice.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from bench_text2img import ROOT, build_reference, ours_sharing_weights

CONFIGS = ("gpu", "gpu+vae_tiling", "model_offload", "model_offload+vae_tiling", "sequential_offload")


def _setup(pipe, config: str, device: torch.device) -> None:
    if config.startswith("gpu"):
        pipe.to(device)
    elif config.startswith("model_offload"):
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.enable_sequential_cpu_offload(device=device)
    if config.endswith("vae_tiling"):
        pipe.vae.enable_tiling()  # diffusers 0.42's SDXL pipelines dropped pipe.enable_vae_tiling()


def _teardown(pipe, config: str) -> None:
    if hasattr(pipe, "remove_all_hooks"):
        pipe.remove_all_hooks()
    if config.endswith("vae_tiling"):
        pipe.vae.disable_tiling()
    if not config.startswith("sequential"):
        pipe.to("cpu")
    gc.collect()
    torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=("tiny", "full"), default="full")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--dtype", default="float16", choices=("float32", "float16", "bfloat16"))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--only", nargs="*", default=list(CONFIGS), choices=CONFIGS)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    dtype, device = getattr(torch, args.dtype), torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        ref = build_reference(args.config, dtype, Path(tmp))
        ours = ours_sharing_weights(ref)
    results: dict[str, dict] = {}
    for name, pipe in (("ours", ours), ("diffusers", ref)):
        pipe.set_progress_bar_config(disable=True)
        results[name] = {}
        for config in args.only:
            _setup(pipe, config, device)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(device)
            start = time.perf_counter()
            pipe("a cat sitting on a beach at sunset", num_inference_steps=args.steps, height=args.size,
                 width=args.size, generator=torch.Generator("cpu").manual_seed(0), output_type="np")
            torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            peak = torch.cuda.max_memory_allocated(device)
            results[name][config] = {"peak_gib": peak / 2**30, "seconds": seconds}
            print(f"{name:9s} {config:26s} peak {peak / 2**30:6.2f} GiB  {seconds:6.2f} s", flush=True)
            _teardown(pipe, config)
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / (
        f"memory-{device.type}-{args.config}-{args.size}px-{args.dtype}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "benchmark": "memory", "config": args.config, "size": args.size, "steps": args.steps, "dtype": args.dtype,
        "machine": {"platform": platform.platform(), "torch": torch.__version__,
                    "gpu": torch.cuda.get_device_name(device)},
        "peak_gib_and_seconds": results,
    }, indent=2) + "\n")


if __name__ == "__main__":
    main()
