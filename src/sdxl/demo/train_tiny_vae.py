"""Distil the demo model's tiny preview VAE (AutoencoderTiny, TAESD's architecture) from its full VAE.

    python -m sdxl.demo.train_tiny_vae --out DIR [--seed 0] [--steps 800]

The teacher is the shipped demo VAE. The tiny encoder learns the teacher's scaled latents (posterior means times the
scaling factor); the tiny decoder learns what the teacher decodes from those latents, plus from latents with Gaussian
noise added (what live previews see halfway through denoising). Like TAESD for SDXL, the tiny VAE works on the
pipeline's scaled latents directly (`scaling_factor` 1.0). Images come from the demo shapes stream (64 px crops: the
model is convolutional). Steps are counted, never seconds: the result depends on the seed, settings and torch build.
Writes DIR/config.json, DIR/diffusion_pytorch_model.safetensors (fp16) and DIR/train_log.json with the held-out error
against the teacher's decodes, next to that of the linear latent-to-RGB projection.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from sdxl.demo import shapes
from sdxl.models.vae_tiny import AutoencoderTiny, AutoencoderTinyConfig

logger = logging.getLogger("sdxl.demo.train_tiny_vae")
HELDOUT_STREAM = 97  # the stream of held-out evaluation images (training uses stream 3)


@dataclass(frozen=True)
class TinySettings:
    """The distillation schedule."""

    steps: int = 800
    batch: int = 16
    crop: int = 64
    lr: float = 2e-3
    noisy_fraction: float = 0.5  # batch rows whose latents get noise of a random std in (0, max_noise)
    max_noise: float = 1.0
    eval_images: int = 32


def tiny_config() -> AutoencoderTinyConfig:
    """TAESD's layout (4 levels, 8x) with 16 channels and one block a level: about 60k parameters."""
    return AutoencoderTinyConfig(
        encoder_block_out_channels=(16, 16, 16, 16), decoder_block_out_channels=(16, 16, 16, 16),
        num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1),
    )


def teacher_pair(vae: Any, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(scaled latents, the teacher's decode of them) for images in [-1, 1]."""
    with torch.no_grad():
        latents = vae.encode(images).latent_dist.mode() * vae.config.scaling_factor
        return latents, vae.decode(latents / vae.config.scaling_factor).sample


def _batch(seed: int, start: int, n: int, crop: int, gen: torch.Generator) -> torch.Tensor:
    images, _, _ = shapes.make_batch(seed, start, n, 128, shapes.training_triples())
    top, left = torch.randint(0, 128 - crop + 1, (2,), generator=gen).tolist()
    return images[:, :, top : top + crop, left : left + crop]


def distil(vae: Any, s: TinySettings, seed: int) -> tuple[AutoencoderTiny, list[dict[str, float]]]:
    """Train a tiny VAE against `vae`; returns it (eval mode) and the loss log."""
    torch.manual_seed(seed)
    tiny = AutoencoderTiny(tiny_config()).train()
    opt = torch.optim.Adam(tiny.parameters(), lr=s.lr)
    gen = torch.Generator().manual_seed(seed + 1)
    log: list[dict[str, float]] = []
    for step in range(s.steps):
        lr = s.lr * min(1.0, (step + 1) / 50) * 0.5 * (1 + torch.cos(torch.tensor(step / s.steps * torch.pi)).item())
        for group in opt.param_groups:
            group["lr"] = lr
        images = _batch(seed * 1000 + 3, step * s.batch, s.batch, s.crop, gen)
        noisy = int(s.batch * s.noisy_fraction)
        sigma = torch.rand(noisy, 1, 1, 1, generator=gen) * s.max_noise
        with torch.no_grad():
            latents = vae.encode(images).latent_dist.mode() * vae.config.scaling_factor
            inputs = latents.clone()
            inputs[:noisy] += sigma * torch.randn(inputs[:noisy].shape, generator=gen)
            target = vae.decode(inputs / vae.config.scaling_factor).sample
        enc_loss = F.mse_loss(tiny.encode(images).latents, latents)
        dec_loss = (tiny.decode(inputs).sample - target).abs().mean()
        loss = enc_loss + dec_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == s.steps - 1:
            log.append({"step": step, "encoder_mse": enc_loss.item(), "decoder_l1": dec_loss.item()})
            logger.info("step %d encoder mse %.4f decoder l1 %.4f", step, enc_loss.item(), dec_loss.item())
    return tiny.eval().requires_grad_(False), log


def evaluate(vae: Any, tiny: AutoencoderTiny, n: int) -> dict[str, float]:
    """Mean absolute error (0-255 scale) against the teacher's decodes of held-out latents: the tiny decoder's, the
    linear projection's (at latent resolution, as previews show it) and a flat mean colour's, for scale."""
    from sdxl.preview import LatentPreviewer

    images, _, _ = shapes.make_batch(HELDOUT_STREAM, 0, n, 128, shapes.training_triples())
    latents, decoded = teacher_pair(vae, images)
    with torch.no_grad():
        tiny_images = tiny.decode(latents).sample.clamp(-1, 1)
    target = decoded.clamp(-1, 1)
    weight, bias = LatentPreviewer(vae).projection()
    linear = torch.einsum("bchw,rc->brhw", latents, weight) + bias.view(1, 3, 1, 1)
    linear = F.interpolate(linear.clamp(-1, 1), scale_factor=8, mode="nearest")
    flat = target.mean(dim=(2, 3), keepdim=True).expand_as(target)
    scale = 127.5
    return {
        "tiny_vae_mae": round((tiny_images - target).abs().mean().item() * scale, 2),
        "linear_projection_mae": round((linear - target).abs().mean().item() * scale, 2),
        "flat_colour_mae": round((flat - target).abs().mean().item() * scale, 2),
        "tiny_encoder_latent_rmse": round((tiny.encode(images).latents - latents).square().mean().sqrt().item(), 4),
    }


def save(tiny: AutoencoderTiny, out: Path) -> None:
    """diffusers layout: config.json + fp16 safetensors."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(tiny.config.to_dict(), indent=2, sort_keys=True) + "\n")
    weights = {k: v.half().contiguous() for k, v in tiny.state_dict().items()}
    save_file(weights, str(out / "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sdxl.demo.train_tiny_vae", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="folder for the tiny VAE (config.json, weights, train_log.json)")
    parser.add_argument("--teacher", default="demo", help="pipeline whose VAE is distilled (default: demo)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=TinySettings.steps)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from sdxl.models.vae import AutoencoderKL

    # one thread: the model is tiny (per-op overhead bound), and results then do not depend on the core count
    torch.set_num_threads(1)
    vae = AutoencoderKL.from_pretrained(_teacher_folder(args.teacher), subfolder="vae").eval().requires_grad_(False)
    settings = TinySettings(steps=args.steps)
    start = time.perf_counter()
    tiny, log = distil(vae, settings, args.seed)
    seconds = time.perf_counter() - start
    metrics = evaluate(vae, tiny, settings.eval_images)
    out = Path(args.out)
    save(tiny, out)
    record = {"seed": args.seed, "settings": vars(settings), "seconds": round(seconds, 1),
              "threads": torch.get_num_threads(), "torch": torch.__version__, "heldout": metrics, "log": log}
    (out / "train_log.json").write_text(json.dumps(record, indent=2) + "\n")
    logger.info("held-out error vs the full VAE (0-255): %s", metrics)
    return 0


def _teacher_folder(name: str) -> Path:
    from sdxl.loading.hub import DEMO_MODELS, demo_folder

    return demo_folder(name) if name in DEMO_MODELS else Path(name)


if __name__ == "__main__":
    raise SystemExit(main())
