"""Time loading the full-size SDXL base UNet: sdxl vs diffusers' UNet2DConditionModel.from_pretrained, same files.

The checkpoint is written once with random fp16 weights under the names and shapes of diffusers' UNet (built on
the meta device), as `diffusion_pytorch_model.fp16.safetensors` + `config.json`, about 5.1 GB. Each round loads it
with ours and with diffusers (alternating, page cache warm for both after the first write), with
`torch_dtype=torch.float16, variant="fp16"`. Two figures per load:
  load:        from_pretrained returns (weights may still be memory-mapped, not yet read)
  load+touch:  plus one pass reading every parameter (what the first forward pays at the latest)

    python benchmarks/load_unet.py [--dir /tmp/sdxl_unet_bench] [--rounds 5] [--keep]

Both loaders build on the meta device and assign memory-mapped tensors (diffusers 0.42: no_init_weights +
accelerate's init_empty_weights), so the ratio measures overheads, not a different strategy. Medians and minima
are reported: on a shared machine the minimum is the better estimate of the cost itself.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import shutil
import statistics
import struct
import time
from pathlib import Path

import psutil
import torch

# stabilityai/stable-diffusion-xl-base-1.0 unet/config.json
SDXL_BASE_UNET = {
    "_class_name": "UNet2DConditionModel",
    "_diffusers_version": "0.19.0.dev0",
    "act_fn": "silu",
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280],
    "center_input_sample": False,
    "class_embed_type": None,
    "class_embeddings_concat": False,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "cross_attention_dim": 2048,
    "cross_attention_norm": None,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "downsample_padding": 1,
    "dual_cross_attention": False,
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_only_cross_attention": None,
    "mid_block_scale_factor": 1,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "num_attention_heads": None,
    "num_class_embeds": None,
    "only_cross_attention": False,
    "out_channels": 4,
    "projection_class_embeddings_input_dim": 2816,
    "resnet_out_scale_factor": 1.0,
    "resnet_skip_time_act": False,
    "resnet_time_scale_shift": "default",
    "sample_size": 128,
    "time_cond_proj_dim": None,
    "time_embedding_act_fn": None,
    "time_embedding_dim": None,
    "time_embedding_type": "positional",
    "timestep_post_act": None,
    "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "upcast_attention": None,
    "use_linear_projection": True,
}
WEIGHTS = "diffusion_pytorch_model.fp16.safetensors"


def write_checkpoint(folder: Path) -> int:
    """Stream random fp16 tensors with diffusers' names/shapes into a safetensors file; returns the parameter count."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        ref = UNet2DConditionModel.from_config(SDXL_BASE_UNET)
    shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    del ref
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in shapes.items():
        nbytes = 2 * int(torch.Size(shape).numel())
        header[name] = {"dtype": "F16", "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # keep the data 8-byte aligned, as safetensors' writer does
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(SDXL_BASE_UNET, indent=2))
    g = torch.Generator().manual_seed(0)
    with open(folder / WEIGHTS, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for shape in shapes.values():
            f.write((torch.randn(shape, generator=g) * 0.02).half().numpy().tobytes())
    return sum(int(torch.Size(s).numel()) for s in shapes.values())


def _touch_all_pages(model: torch.nn.Module) -> None:
    """Read one element per 4 KiB page of every parameter, forcing mapped weights into memory."""
    total = 0.0
    for p in model.parameters():
        flat = p.detach().reshape(-1)
        total += float(flat[::2048].float().sum())  # 2048 fp16 = 4 KiB
    if math.isnan(total):
        raise RuntimeError("NaN in weights")


def _load_ours(folder: Path) -> torch.nn.Module:
    import sdxl

    return sdxl.UNet2DConditionModel.from_pretrained(folder, torch_dtype=torch.float16, variant="fp16")


def _load_theirs(folder: Path) -> torch.nn.Module:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(folder, torch_dtype=torch.float16, variant="fp16")


def measure(name: str, loader, folder: Path) -> dict:
    proc = psutil.Process()
    gc.collect()
    rss0 = proc.memory_info().rss
    t0 = time.perf_counter()
    model = loader(folder)
    t1 = time.perf_counter()
    rss_load = proc.memory_info().rss
    _touch_all_pages(model)
    t2 = time.perf_counter()
    rss_touch = proc.memory_info().rss
    n = sum(p.numel() for p in model.parameters())
    dtype = next(model.parameters()).dtype
    del model
    gc.collect()
    return {
        "impl": name,
        "load_s": t1 - t0,
        "load_touch_s": t2 - t0,
        "rss_after_load_gb": (rss_load - rss0) / 1e9,
        "rss_after_touch_gb": (rss_touch - rss0) / 1e9,
        "parameters": n,
        "dtype": str(dtype),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/sdxl_unet_bench"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help="keep the 5 GB checkpoint for later runs")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "load_unet-cpu.json")
    args = parser.parse_args()

    import diffusers
    import safetensors

    made = not (args.dir / WEIGHTS).is_file()
    t = time.perf_counter()
    n_params = write_checkpoint(args.dir) if made else None
    if made:
        print(f"wrote {args.dir / WEIGHTS} ({n_params:,} parameters) in {time.perf_counter() - t:.1f} s")

    size = (args.dir / WEIGHTS).stat().st_size
    runs = []
    try:
        # A warm-up load of each (not counted) brings the whole file into the page cache for both.
        for loader in (_load_ours, _load_theirs):
            model = loader(args.dir)
            _touch_all_pages(model)
            del model
            gc.collect()
        for r in range(args.rounds):
            order = [("sdxl", _load_ours), ("diffusers", _load_theirs)]
            if r % 2:
                order.reverse()
            for name, loader in order:
                run = measure(name, loader, args.dir)
                run["round"] = r
                runs.append(run)
                print(
                    f"round {r} {name:9s} load {run['load_s']:6.2f} s  load+touch {run['load_touch_s']:6.2f} s  "
                    f"rss +{run['rss_after_load_gb']:.2f} / +{run['rss_after_touch_gb']:.2f} GB"
                )
    finally:
        if not args.keep:
            shutil.rmtree(args.dir, ignore_errors=True)

    def stat(fn, impl: str, key: str) -> float:
        return fn(r[key] for r in runs if r["impl"] == impl)

    summary = {
        key: {
            "sdxl_median_s": stat(statistics.median, "sdxl", key),
            "diffusers_median_s": stat(statistics.median, "diffusers", key),
            "sdxl_min_s": stat(min, "sdxl", key),
            "diffusers_min_s": stat(min, "diffusers", key),
            "diffusers_over_sdxl_median": stat(statistics.median, "diffusers", key)
            / stat(statistics.median, "sdxl", key),
            "diffusers_over_sdxl_min": stat(min, "diffusers", key) / stat(min, "sdxl", key),
        }
        for key in ("load_s", "load_touch_s")
    }
    result = {
        "benchmark": "load full-size SDXL base UNet (fp16 safetensors, variant='fp16', torch_dtype=float16), "
        "warm page cache; load = from_pretrained returns, load_touch = plus reading every 4 KiB page of the weights",
        "load_average_at_end": os.getloadavg(),
        "command": f"python benchmarks/load_unet.py --rounds {args.rounds}",
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "memory_gb": round(psutil.virtual_memory().total / 1e9, 1),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "safetensors": safetensors.__version__,
        },
        "checkpoint_bytes": size,
        "parameters": runs[0]["parameters"],
        "summary": summary,
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for key, s in summary.items():
        print(
            f"{key}: median sdxl {s['sdxl_median_s']:.2f} s, diffusers {s['diffusers_median_s']:.2f} s "
            f"(diffusers/sdxl {s['diffusers_over_sdxl_median']:.2f}x); min sdxl {s['sdxl_min_s']:.2f} s, "
            f"diffusers {s['diffusers_min_s']:.2f} s (diffusers/sdxl {s['diffusers_over_sdxl_min']:.2f}x)"
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
