"""Text-to-image speed: ours against diffusers on the same weights and settings, in one process, alternating.

    python benchmarks/bench_text2img.py --config tiny --size 256 --steps 10
    python benchmarks/bench_text2img.py --config full --size 256 --steps 4 --dtype bfloat16   # ~14 GB RAM
    python benchmarks/bench_text2img.py --config full --size 1024 --steps 30 --dtype float16 --device cuda

Both pipelines hold the SAME weight tensors (ours are assigned from diffusers' modules), so memory is not doubled
and the comparison is exact. Each repeat runs ours then diffusers (or the reverse on odd repeats) with the same seed;
the result is the ratio of medians, diffusers / ours (> 1 means we are faster), written to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def build_reference(config: str, dtype: torch.dtype, workdir: Path, init_device: str = "cpu"):
    """diffusers' StableDiffusionXLPipeline: tiny (test fixture) or the full-size SDXL configs with random weights, or
    the shipped demo model ("demo"). Full-size random weights are drawn on `init_device` (a GPU draws them in a
    moment; the pipeline is left there)."""
    import diffusers
    import reference

    if config == "demo":
        from sdxl.loading.hub import demo_folder

        pipe = diffusers.StableDiffusionXLPipeline.from_pretrained(
            demo_folder("demo"), torch_dtype=dtype, add_watermarker=False)
        return _default_attention(pipe)
    if config == "tiny":
        pipe = reference.make_base_pipeline(workdir / "tiny")
        return _default_attention(pipe).to(dtype=dtype)

    import transformers

    from sdxl.models.clip import CLIPTextConfig
    from sdxl.models.unet import UNetConfig
    from sdxl.models.vae import VAEConfig

    torch.manual_seed(0)
    with torch.device("meta"):
        # Build on meta, then materialise with random values cheaply (init is not what we measure).
        unet = diffusers.UNet2DConditionModel.from_config(UNetConfig.sdxl_base().to_dict())
        vae = diffusers.AutoencoderKL.from_config(VAEConfig.sdxl().to_dict())
        te1 = transformers.CLIPTextModel(transformers.CLIPTextConfig(**CLIPTextConfig.clip_l().to_dict()))
        te2 = transformers.CLIPTextModelWithProjection(transformers.CLIPTextConfig(**CLIPTextConfig.clip_g().to_dict()))
    modules = []
    for module in (unet, vae, te1, te2):
        module.to_empty(device=init_device)
        with torch.no_grad():
            for p in module.parameters():
                p.normal_(0.0, 0.02)
            for name, b in module.named_buffers():
                if name.endswith("position_ids"):
                    b.copy_(torch.arange(b.shape[-1]).expand_as(b))
        modules.append(module.to(dtype).eval())
    unet, vae, te1, te2 = modules
    return diffusers.StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=te1,
        text_encoder_2=te2,
        tokenizer=reference.make_tokenizer(workdir / "vocab1"),
        tokenizer_2=reference.make_tokenizer(workdir / "vocab2", pad_token="!"),
        unet=unet,
        scheduler=reference.make_scheduler(),
        add_watermarker=False,
    )


def _default_attention(pipe):
    """The test builders pin diffusers to its classic attention for parity; benchmark diffusers' default (SDPA)."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    pipe.unet.set_attn_processor(AttnProcessor2_0())
    pipe.vae.set_attn_processor(AttnProcessor2_0())
    for encoder in (pipe.text_encoder, pipe.text_encoder_2):
        encoder.config._attn_implementation = "sdpa"
    return pipe


def ours_sharing_weights(ref):
    """Our pipeline holding the very tensors of `ref` (no copy)."""
    import sdxl
    from sdxl.loading.keymaps import normalize_clip_text as normalize_clip_keys
    from sdxl.models.clip import CLIPTextConfig
    from sdxl.models.unet import UNetConfig
    from sdxl.models.vae import VAEConfig

    def adopt(cls, config, state_dict):
        with torch.device("meta"):
            model = cls(config)
        model.load_state_dict(state_dict, strict=True, assign=True)
        return model.eval().requires_grad_(False)

    te_config = lambda m: CLIPTextConfig.from_dict(m.config.to_dict())
    folder = ref.config.get("_name_or_path")
    if folder and Path(folder, "tokenizer").is_dir():  # a saved model (the demo): its own vocabularies
        tokenizers = [sdxl.CLIPTokenizer.from_pretrained(folder, sub) for sub in ("tokenizer", "tokenizer_2")]
    else:  # the reference builders use the shipped CLIP vocabulary
        tokenizers = [sdxl.CLIPTokenizer.from_shipped_vocab(pad_token=pad) for pad in ("<|endoftext|>", "!")]
    return sdxl.StableDiffusionXLPipeline(
        vae=adopt(sdxl.AutoencoderKL, VAEConfig.from_dict(dict(ref.vae.config)), ref.vae.state_dict()),
        text_encoder=adopt(sdxl.CLIPTextModel, te_config(ref.text_encoder),
                           normalize_clip_keys(ref.text_encoder.state_dict())),
        text_encoder_2=adopt(sdxl.CLIPTextModelWithProjection, te_config(ref.text_encoder_2),
                             normalize_clip_keys(ref.text_encoder_2.state_dict())),
        tokenizer=tokenizers[0],
        tokenizer_2=tokenizers[1],
        unet=adopt(sdxl.UNet2DConditionModel, UNetConfig.from_dict(dict(ref.unet.config)), ref.unet.state_dict()),
        scheduler=sdxl.EulerDiscreteScheduler.from_config(dict(ref.scheduler.config)),
        add_watermarker=False,  # as the reference (the default turns it on where invisible-watermark is installed)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=("tiny", "full", "demo"), default="tiny")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=None, help="JSON path (default: benchmarks/results/text2img-...json)")
    args = parser.parse_args()

    import tempfile

    dtype = getattr(torch, args.dtype)
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        ref = build_reference(args.config, dtype, Path(tmp)).to(device)
        ours = ours_sharing_weights(ref).to(device)
    for pipe in (ref, ours):
        pipe.set_progress_bar_config(disable=True)

    peak_extra = {"ours": 0, "diffusers": 0}

    def run(pipe, name=None):
        _sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            resident = torch.cuda.memory_allocated(device)
        start = time.perf_counter()
        image = pipe(
            "a cat sitting on a beach at sunset",
            num_inference_steps=args.steps,
            guidance_scale=args.guidance,
            height=args.size,
            width=args.size,
            generator=torch.Generator("cpu").manual_seed(0),
            output_type="np",
        ).images
        _sync(device)
        seconds = time.perf_counter() - start
        if device.type == "cuda" and name is not None:
            # activations and workspaces above the (shared) weights
            peak_extra[name] = max(peak_extra[name], torch.cuda.max_memory_allocated(device) - resident)
        return seconds, image

    run(ours), run(ref)  # warm-up (allocator, kernels)
    times = {"ours": [], "diffusers": []}
    max_diff = 0.0
    for i in range(args.repeats):
        order = [("ours", ours), ("diffusers", ref)]
        if i % 2:
            order.reverse()
        images = {}
        for name, pipe in order:
            seconds, images[name] = run(pipe, name)
            times[name].append(seconds)
        max_diff = max(max_diff, float(abs(images["ours"] - images["diffusers"]).max()))
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "benchmark": "text2img",
        "config": args.config,
        "size": args.size,
        "steps": args.steps,
        "guidance_scale": args.guidance,
        "dtype": args.dtype,
        "device": str(device),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "torch": torch.__version__,
        },
        "seconds": times,
        "median_seconds": med,
        "ratio_diffusers_over_ours": med["diffusers"] / med["ours"],
        "max_abs_pixel_diff": max_diff,
    }
    if device.type == "cuda":
        result["peak_bytes_above_weights"] = peak_extra
        result["weights_bytes"] = torch.cuda.memory_allocated(device)
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / (
        f"text2img-{device.type}-{args.config}-{args.size}px-{args.dtype}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"ours {med['ours']:.3f}s  diffusers {med['diffusers']:.3f}s  ratio (diffusers/ours) "
          f"{result['ratio_diffusers_over_ours']:.3f}  max pixel diff {max_diff:.4f}  -> {out}")
    if device.type == "cuda":
        print(f"peak GiB above weights: ours {peak_extra['ours'] / 2**30:.2f}  diffusers "
              f"{peak_extra['diffusers'] / 2**30:.2f}")


if __name__ == "__main__":
    main()
