"""LoRA on the full-size SDXL base UNet (random weights): load time of a rank-32 LoRA and the unfused step overhead.

The UNet is built with the real SDXL base config in bfloat16 and filled with small random weights; diffusers' UNet
shares the very same weight tensors (`load_state_dict(assign=True)`), so both runs do the same arithmetic. The LoRA is
a kohya-format file (sgm names, as sd-scripts writes SDXL LoRAs) of rank 32 over every linear layer of the
transformer blocks (attention q/k/v/out, feed-forward, proj_in/proj_out: 722 modules, what kohya's default
`networks.lora` trains), written once as fp16 safetensors. Figures:

  load:     `load_lora_weights(file)` until it returns (ours: parse + attach; diffusers: convert + peft inject)
  step:     one UNet forward, batch 2 (CFG), 32x32 latents: adapters disabled (plain) / LoRA unfused / LoRA fused,
            interleaved round by round

    python benchmarks/bench_lora.py [--rounds 5] [--steps 3] [--no-diffusers]

Medians and minima are reported; on a shared machine the minimum is the better estimate of the cost itself.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import psutil
import torch

sys.path.insert(0, str(Path(__file__).parent))
from load_unet import SDXL_BASE_UNET

RANK = 32
LATENT = 32
TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out")


def build_unets(with_diffusers: bool):
    from sdxl.models.unet import UNet2DConditionModel, UNetConfig

    config = UNetConfig.from_dict(SDXL_BASE_UNET)
    with torch.device("meta"):
        ours = UNet2DConditionModel(config)
    ours = ours.to_empty(device="cpu").to(torch.bfloat16).eval().requires_grad_(False)
    gen = torch.Generator().manual_seed(0)
    for p in ours.parameters():
        p.normal_(0, 0.02, generator=gen)
    theirs = None
    if with_diffusers:
        import diffusers

        with torch.device("meta"):
            theirs = diffusers.UNet2DConditionModel.from_config(SDXL_BASE_UNET)
        theirs.load_state_dict(ours.state_dict(), assign=True)
        theirs.eval().requires_grad_(False)
    return ours, theirs


def write_lora(unet, path: Path) -> int:
    """A kohya rank-32 LoRA over TARGETS (sgm module names); returns the module count."""
    from safetensors.torch import save_file

    from sdxl.loading.lora_keys import kohya_names

    sgm = ("input_", "middle_", "output_")
    names = {path_: name for name, path_ in kohya_names("unet", unet).items() if name.startswith(sgm)}
    gen = torch.Generator().manual_seed(1)
    sd = {}
    for module_path, layer in unet.named_modules():
        if isinstance(layer, torch.nn.Linear) and ".attentions." in module_path and module_path.endswith(TARGETS):
            name = "lora_unet_" + names[module_path]
            sd[f"{name}.lora_down.weight"] = (torch.randn(RANK, layer.in_features, generator=gen) * 0.01).half()
            sd[f"{name}.lora_up.weight"] = (torch.randn(layer.out_features, RANK, generator=gen) * 0.01).half()
            sd[f"{name}.alpha"] = torch.tensor(float(RANK / 2)).half()
    save_file(sd, str(path))
    return len(sd) // 3


class UNetHolder:
    """The LoRA methods on a bare UNet (no text encoders or VAE needed for the timing)."""

    def __init__(self, unet):
        self.unet = unet


def step_inputs(dtype: torch.dtype):
    gen = torch.Generator().manual_seed(2)
    return {
        "sample": torch.randn(2, 4, LATENT, LATENT, generator=gen).to(dtype),
        "timestep": torch.tensor(500.0),
        "encoder_hidden_states": torch.randn(2, 77, 2048, generator=gen).to(dtype),
        "added_cond_kwargs": {"text_embeds": torch.randn(2, 1280, generator=gen).to(dtype),
                              "time_ids": torch.tensor([[1024.0, 1024, 0, 0, 1024, 1024]] * 2).to(dtype)},
    }


def time_steps(unet, n: int) -> list[float]:
    inputs = step_inputs(torch.bfloat16)
    with torch.inference_mode():
        unet(**inputs)  # warm-up
        times = []
        for _ in range(n):
            start = time.perf_counter()
            unet(**inputs)
            times.append(time.perf_counter() - start)
    return times


def time_loads(pipe, path: str, rounds: int) -> list[float]:
    """Seconds of each `load_lora_weights(path)` (unloaded again after each)."""
    times = []
    for _ in range(rounds):
        gc.collect()
        start = time.perf_counter()
        pipe.load_lora_weights(path, adapter_name="bench")
        times.append(time.perf_counter() - start)
        pipe.unload_lora_weights()
    return times


def stats(times: list[float]) -> dict[str, float]:
    return {"median_s": statistics.median(times), "min_s": min(times), "runs": len(times)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="LoRA loads per library")
    parser.add_argument("--steps", type=int, default=3, help="timed UNet forwards per configuration")
    parser.add_argument("--no-diffusers", action="store_true", help="skip the diffusers + peft reference")
    parser.add_argument("--file", default="/tmp/sdxl_bench_lora_r32.safetensors")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "lora-cpu.json"))
    args = parser.parse_args()
    from sdxl.pipelines.lora import LoraLoaderMixin

    ours, theirs = build_unets(not args.no_diffusers)
    modules = write_lora(ours, Path(args.file))
    holder = type("Holder", (LoraLoaderMixin, UNetHolder), {})(ours)
    result: dict = {"lora_modules": modules, "rank": RANK, "file_bytes": Path(args.file).stat().st_size}

    loads = time_loads(holder, args.file, args.rounds)
    result["load"] = {"sdxl": stats(loads)}

    # interleaved rounds (plain = adapters disabled, unfused, fused), so drift in the machine's load hits all three
    holder.load_lora_weights(args.file, adapter_name="bench")
    plain, unfused, fused = [], [], []
    for _ in range(args.steps):
        holder.disable_lora()
        plain += time_steps(ours, 1)
        holder.enable_lora()
        unfused += time_steps(ours, 1)
        holder.fuse_lora()
        fused += time_steps(ours, 1)
        holder.unfuse_lora()
    holder.unload_lora_weights()
    result["step"] = {"sdxl_plain": stats(plain), "sdxl_lora_unfused": stats(unfused), "sdxl_lora_fused": stats(fused)}
    result["unfused_overhead_median"] = statistics.median(unfused) / statistics.median(plain) - 1
    result["unfused_overhead_min"] = min(unfused) / min(plain) - 1

    if theirs is not None:
        import diffusers

        pipe = diffusers.StableDiffusionXLPipeline(vae=None, text_encoder=None, text_encoder_2=None, tokenizer=None,
                                                   tokenizer_2=None, unet=theirs, scheduler=None)
        their_loads = time_loads(pipe, args.file, args.rounds)
        result["load"]["diffusers"] = stats(their_loads)
        result["load"]["diffusers_over_sdxl_median"] = statistics.median(their_loads) / statistics.median(loads)
        pipe.load_lora_weights(args.file, adapter_name="bench")
        their_plain, their_unfused = [], []
        for _ in range(args.steps):
            pipe.disable_lora()
            their_plain += time_steps(theirs, 1)
            pipe.enable_lora()
            their_unfused += time_steps(theirs, 1)
        result["step"]["diffusers_plain"] = stats(their_plain)
        result["step"]["diffusers_lora_unfused"] = stats(their_unfused)
        result["step"]["diffusers_unfused_overhead_median"] = statistics.median(their_unfused) / statistics.median(
            their_plain) - 1

    result["machine"] = {"platform": platform.platform(), "cpu_count": psutil.cpu_count(),
                         "memory_gb": round(psutil.virtual_memory().total / 2**30, 1), "torch": torch.__version__,
                         "threads": torch.get_num_threads()}
    result["load_average_at_end"] = list(psutil.getloadavg())
    result["command"] = "python " + " ".join(sys.argv)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
