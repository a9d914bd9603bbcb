"""torch.compile on the UNet, the way the seeds do it: ours and diffusers, eager and compiled, on the same weights.

    python benchmarks/bench_compile.py --device cuda --size 1024 --steps 30 --dtype float16

Each pipeline's UNet is wrapped as `torch.compile(unet, mode=..., fullgraph=True)`; fullgraph=True makes any graph
break an error, so a finished run shows our UNet traces whole. Times are medians of `--repeats` calls after two
warm-up calls (the first compiles); the ratio is diffusers / ours for the compiled pipelines.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench_text2img import ROOT, build_reference, ours_sharing_weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=("tiny", "full"), default="full")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="float16", choices=("float32", "float16", "bfloat16"))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--mode", default="reduce-overhead")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    dtype, device = getattr(torch, args.dtype), torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        ref = build_reference(args.config, dtype, Path(tmp)).to(device)
        ours = ours_sharing_weights(ref).to(device)
    pipes = {"ours": ours, "diffusers": ref}
    for pipe in pipes.values():
        pipe.set_progress_bar_config(disable=True)

    def run(pipe):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        image = pipe("a cat sitting on a beach at sunset", num_inference_steps=args.steps, height=args.size,
                     width=args.size, generator=torch.Generator("cpu").manual_seed(0), output_type="np").images
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start, image

    result = {"benchmark": "compile", "config": args.config, "size": args.size, "steps": args.steps,
              "dtype": args.dtype, "mode": args.mode, "fullgraph": True, "device": str(device),
              "machine": {"platform": platform.platform(), "torch": torch.__version__,
                          "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None}}
    images = {}
    for name, pipe in pipes.items():
        eager = [run(pipe)[0] for _ in range(2)][-1:]
        eager += [run(pipe)[0] for _ in range(args.repeats - 1)]
        eager_image = run(pipe)[1]
        unet = pipe.unet
        pipe.unet = torch.compile(unet, mode=args.mode, fullgraph=True)
        start = time.perf_counter()
        run(pipe)
        first = time.perf_counter() - start
        run(pipe)
        compiled = [run(pipe)[0] for _ in range(args.repeats)]
        seconds, images[name] = run(pipe)
        compiled.append(seconds)
        result[name] = {"eager_median_s": statistics.median(eager), "compiled_median_s": statistics.median(compiled),
                        "first_compiled_call_s": first,
                        "compiled_vs_eager_max_pixel_diff": float(abs(images[name] - eager_image).max())}
        pipe.unet = unet
        torch._dynamo.reset()
        print(name, json.dumps(result[name]), flush=True)
    result["compiled_ratio_diffusers_over_ours"] = (
        result["diffusers"]["compiled_median_s"] / result["ours"]["compiled_median_s"])
    result["ours_vs_diffusers_compiled_max_pixel_diff"] = float(abs(images["ours"] - images["diffusers"]).max())
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / (
        f"compile-{device.type}-{args.config}-{args.size}px-{args.dtype}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"compiled: ours {result['ours']['compiled_median_s']:.3f}s diffusers "
          f"{result['diffusers']['compiled_median_s']:.3f}s ratio {result['compiled_ratio_diffusers_over_ours']:.3f}")


if __name__ == "__main__":
    main()
