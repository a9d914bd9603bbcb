"""Train the demo model from scratch: VAE, then both text encoders + the base UNet jointly, then the refiner UNet.

    python -m sdxl.demo.train --out DIR [--device cpu|cuda] [--seed 0] [--quick]

Writes DIR/base and DIR/refiner (diffusers layout, fp16 safetensors, with our own save code) and DIR/train_log.json
(losses, settings, step times). The schedule counts steps, never seconds, so the result depends only on the seed and
the settings; data sample i of a stage is a pure function of (seed, stage, i) (see shapes.make_sample).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sdxl.demo import configs
from sdxl.demo.train_data import Stream, Tokens, degrade, drop_captions
from sdxl.models.clip import CLIPTextModel, CLIPTextModelWithProjection
from sdxl.models.unet import UNet2DConditionModel
from sdxl.models.vae import AutoencoderKL

logger = logging.getLogger("sdxl.demo.train")


@dataclass(frozen=True)
class Settings:
    """Everything a run depends on besides the seed (and the device's arithmetic)."""

    vae_steps: int = 2000
    vae_batch: int = 16
    vae_lr: float = 1e-3
    vae_crop: int = 64  # the VAE trains on random crops of this side (it is convolutional; 4x cheaper than 128)
    kl_weight: float = 1e-6
    edge_weight: float = 0.0  # L1 on image gradients: 0.25 slowed colour learning; 0.5 late: no shape gain
    base_steps: int = 5500
    base_batch: int = 32
    base_lr: float = 8e-4
    base_pool: int = 24576  # samples rendered and VAE-encoded once, then drawn at random
    text_lr: float = 8e-4
    caption_dropout: float = 0.1
    offset_noise: float = 0.1
    min_snr_gamma: float = 5.0
    refiner_steps: int = 800
    refiner_batch: int = 16
    refiner_lr: float = 6e-4
    refiner_max_t: int = 300  # the refiner learns t < refiner_max_t only (SDXL's refiner takes the last ~20%)
    max_degrade_noise: float = 0.3  # pixel noise std at aesthetic score 1 (see degrade)
    warmup: int = 100
    ema_decay: float = 0.999
    log_every: int = 50
    workers: int = 0  # data-rendering processes (0: in the training process)

    @classmethod
    def quick(cls) -> Settings:
        """A few steps of everything: a smoke test of the whole path."""
        return cls(vae_steps=3, vae_batch=2, base_steps=3, base_batch=2, base_pool=4, refiner_steps=3,
                   refiner_batch=2, warmup=1, log_every=1)  # fmt: skip


# ---- diffusion helpers ----------------------------------------------------------------------------------------------


def alphas_cumprod(num_steps: int = 1000) -> torch.Tensor:
    """SDXL's "scaled_linear" beta schedule (0.00085 .. 0.012), as the shipped EulerDiscreteScheduler config."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, num_steps, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, dim=0).float()


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


class EMA:
    """An exponential moving average of some parameters (warm-up: decay (1 + n) / (10 + n), capped)."""

    def __init__(self, params: list[torch.nn.Parameter], decay: float):
        self.params = params
        self.shadow = [p.detach().clone() for p in params]
        self.decay, self.n = decay, 0

    @torch.no_grad()
    def update(self) -> None:
        self.n += 1
        d = min(self.decay, (1 + self.n) / (10 + self.n))
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1 - d)

    @torch.no_grad()
    def copy_to_params(self) -> None:
        for p, s in zip(self.params, self.shadow):
            p.copy_(s)


def encode_text(te1: CLIPTextModel | None, te2: CLIPTextModelWithProjection, ids1: torch.Tensor | None,
                ids2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """What the pipelines feed the UNet: penultimate hidden states (concatenated when there are two encoders) and
    text_encoder_2's projected pooled vector. (B, 77, D), (B, projection_dim)."""
    out2 = te2(ids2, output_hidden_states=True)
    context = out2.hidden_states[-2]
    if te1 is not None:
        context = torch.cat([te1(ids1, output_hidden_states=True).hidden_states[-2], context], dim=-1)
    return context, out2.text_embeds


def _param_groups(*pairs: tuple[torch.nn.Module, float]) -> list[dict[str, Any]]:
    return [{"params": [p for p in m.parameters()], "lr": lr, "peak": lr} for m, lr in pairs]


def _set_lr(opt: torch.optim.Optimizer, step: int, total: int, warmup: int) -> None:
    for group in opt.param_groups:
        group["lr"] = lr_at(step, total, group["peak"], warmup)


class Log:
    """Running means of named losses, logged every `every` steps and kept for train_log.json."""

    def __init__(self, stage: str, every: int, total: int):
        self.stage, self.every, self.total = stage, every, total
        self.sums: dict[str, float] = {}
        self.count = 0
        self.rows: list[dict[str, float]] = []
        self.t0 = time.perf_counter()

    def add(self, step: int, **values: float) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.count += 1
        if (step + 1) % self.every == 0 or step + 1 == self.total:
            row = {"step": step + 1, **{k: v / self.count for k, v in self.sums.items()}}
            row["s_per_step"] = (time.perf_counter() - self.t0) / (step + 1)
            self.rows.append(row)
            logger.info("%s %d/%d %s", self.stage, step + 1, self.total,
                        " ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "step"))  # fmt: skip
            self.sums, self.count = {}, 0

    def summary(self) -> dict[str, Any]:
        return {"seconds": time.perf_counter() - self.t0, "losses": self.rows}


# ---- stages ---------------------------------------------------------------------------------------------------------


def train_vae(s: Settings, seed: int, device: torch.device) -> tuple[AutoencoderKL, dict[str, Any]]:
    """Stage 1: the autoencoder (L1 reconstruction + a small KL), then its latent scaling factor."""
    torch.manual_seed(seed)
    vae = AutoencoderKL(configs.vae_config()).to(device).train()
    with torch.no_grad():  # start with a near-deterministic posterior (std e^-5): the decoder learns from step 1
        vae.quant_conv.bias[vae.config.latent_channels :] = -10.0
    opt = torch.optim.AdamW(_param_groups((vae, s.vae_lr)), weight_decay=0.0, foreach=True)
    gen = torch.Generator().manual_seed(seed + 1)
    log = Log("vae", s.log_every, s.vae_steps)
    for step, (images, _, _) in enumerate(Stream(seed, 1, s.vae_batch, s.vae_steps, s.workers)):
        _set_lr(opt, step, s.vae_steps, s.warmup)
        if s.vae_crop < images.shape[-1]:
            top, left = torch.randint(0, images.shape[-1] - s.vae_crop + 1, (2,), generator=gen).tolist()
            images = images[:, :, top : top + s.vae_crop, left : left + s.vae_crop]
        images = images.to(device)
        moments = vae._encode(images)
        mean, logvar = moments.chunk(2, dim=1)
        logvar = logvar.clamp(-30.0, 20.0)
        eps = torch.randn(mean.shape, generator=gen).to(device)
        recon = vae._decode(mean + (0.5 * logvar).exp() * eps)
        l1 = (recon - images).abs().mean()
        # L1 on the finite differences too: blur costs twice, so edges (the shape's identity) stay sharp
        edges = sum((recon.diff(dim=d) - images.diff(dim=d)).abs().mean() for d in (-1, -2))
        kl = 0.5 * (mean.square() + logvar.exp() - 1 - logvar).sum(dim=(1, 2, 3)).mean()
        loss = l1 + s.edge_weight * edges + s.kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        log.add(step, l1=l1.item(), edges=edges.item(), kl=kl.item())
    vae.eval().requires_grad_(False)
    # The scaling factor makes the scaled latents' RMS 1 (SDXL's 0.13025 was measured the same way, on std).
    with torch.no_grad():
        images, _, _ = Stream(seed, 9, 64, 4, 0).batch(0)
        rms = vae.encode(images.to(device)).latent_dist.mode().square().mean().sqrt().item()
    vae.config = dataclasses.replace(vae.config, scaling_factor=round(1.0 / rms, 5))
    logger.info("vae scaling_factor %.5f", vae.config.scaling_factor)
    return vae, {**log.summary(), "scaling_factor": vae.config.scaling_factor}


def _noisy(latents: torch.Tensor, s: Settings, gen: torch.Generator, acp: torch.Tensor, t_max: int):
    """(noisy latents, noise, timesteps, min-SNR loss weights) for eps prediction at t ~ U{0 .. t_max - 1}."""
    b = latents.shape[0]
    t = torch.randint(0, t_max, (b,), generator=gen)
    noise = torch.randn(latents.shape, generator=gen)
    # offset noise: hides the mean colour that leaks through at t = 999 (SNR is not zero there), so the model
    # takes the colours from the prompt, not from the initial noise's mean
    noise = noise + s.offset_noise * torch.randn(b, latents.shape[1], 1, 1, generator=gen)
    a = acp[t][:, None, None, None]
    dev = latents.device
    noise, a, t = noise.to(dev), a.to(dev), t.to(dev)
    snr = a / (1 - a)
    weight = torch.minimum(snr, torch.full_like(snr, s.min_snr_gamma)) / snr
    return a.sqrt() * latents + (1 - a).sqrt() * noise, noise, t, weight.flatten()


def _diffusion_loss(unet: UNet2DConditionModel, latents: torch.Tensor, context: torch.Tensor, pooled: torch.Tensor,
                    time_ids: torch.Tensor, s: Settings, gen: torch.Generator, acp: torch.Tensor,
                    t_max: int) -> torch.Tensor:  # fmt: skip
    """The min-SNR-weighted eps-prediction loss at t ~ U{0 .. t_max - 1}."""
    noisy, noise, t, weight = _noisy(latents, s, gen, acp, t_max)
    pred = unet(noisy, t, context, text_embeds=pooled, time_ids=time_ids).sample
    return ((pred - noise).square().mean(dim=(1, 2, 3)) * weight).mean()


def _optimise(opt: torch.optim.Optimizer, loss: torch.Tensor, params: list[torch.nn.Parameter], ema: EMA) -> None:
    """One optimiser step with the gradient norm clipped to 1, then the EMA update."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    ema.update()


@torch.no_grad()
def _encode(vae: AutoencoderKL, images: torch.Tensor, device: torch.device) -> torch.Tensor:
    return vae.encode(images.to(device)).latent_dist.mode() * vae.config.scaling_factor


def _base_batches(s: Settings, seed: int, device: torch.device, vae: AutoencoderKL):
    """(scaled latents, captions, micro-conditioning) per base step, drawn at random from a pool of samples rendered
    and encoded once (rendering and the VAE encoder cost about as much as the UNet step)."""
    chunk = min(64, s.base_pool)
    parts = [(_encode(vae, images, device), captions, micro)
             for images, captions, micro in Stream(seed, 2, chunk, -(-s.base_pool // chunk), s.workers)]  # fmt: skip
    latents = torch.cat([p[0] for p in parts])
    captions = [c for p in parts for c in p[1]]
    micro = torch.cat([p[2] for p in parts])
    logger.info("base: %d samples encoded", len(captions))
    gen = torch.Generator().manual_seed(seed + 6)
    for _ in range(s.base_steps):
        idx = torch.randint(len(captions), (s.base_batch,), generator=gen)
        yield latents[idx.to(latents.device)], [captions[i] for i in idx.tolist()], micro[idx]


def train_base(s: Settings, seed: int, device: torch.device, vae: AutoencoderKL):
    """Stage 2: both text encoders and the base UNet, jointly, on the diffusion loss; EMA weights are kept."""
    torch.manual_seed(seed + 2)
    te1 = CLIPTextModel(configs.text_encoder_config()).to(device).train()
    te2 = CLIPTextModelWithProjection(configs.text_encoder_2_config()).to(device).train()
    unet = UNet2DConditionModel(configs.unet_config()).to(device).train()
    opt = torch.optim.AdamW(
        _param_groups((unet, s.base_lr), (te1, s.text_lr), (te2, s.text_lr)), weight_decay=0.0, foreach=True
    )
    params = [p for m in (unet, te1, te2) for p in m.parameters()]
    ema = EMA(params, s.ema_decay)
    gen = torch.Generator().manual_seed(seed + 3)
    acp, tokens, size = alphas_cumprod(), Tokens(), configs.IMAGE_SIZE
    log = Log("base", s.log_every, s.base_steps)
    for step, (latents, captions, micro) in enumerate(_base_batches(s, seed, device, vae)):
        _set_lr(opt, step, s.base_steps, s.warmup)
        ids1, ids2 = tokens(captions)
        context, pooled = encode_text(te1, te2, ids1.to(device), ids2.to(device))
        context, pooled = drop_captions(context, pooled, s.caption_dropout, gen)
        # time ids: original size, crop top-left, target size (the training size)
        time_ids = torch.cat([micro, torch.full((micro.shape[0], 2), float(size))], dim=1).to(device)
        loss = _diffusion_loss(unet, latents, context, pooled, time_ids, s, gen, acp, 1000)
        _optimise(opt, loss, params, ema)
        log.add(step, loss=loss.item())
    ema.copy_to_params()
    for m in (te1, te2, unet):
        m.eval().requires_grad_(False)
    return te1, te2, unet, log.summary()


def train_refiner(s: Settings, seed: int, device: torch.device, vae: AutoencoderKL, te2: CLIPTextModelWithProjection):
    """Stage 3: the refiner UNet on low noise levels, with aesthetic-score time ids; text_encoder_2 frozen."""
    torch.manual_seed(seed + 4)
    unet = UNet2DConditionModel(configs.refiner_unet_config()).to(device).train()
    opt = torch.optim.AdamW(_param_groups((unet, s.refiner_lr)), weight_decay=0.0, foreach=True)
    params = list(unet.parameters())
    ema = EMA(params, s.ema_decay)
    gen = torch.Generator().manual_seed(seed + 5)
    acp, tokens = alphas_cumprod(), Tokens()
    log = Log("refiner", s.log_every, s.refiner_steps)
    for step, (images, captions, micro) in enumerate(Stream(seed, 3, s.refiner_batch, s.refiner_steps, s.workers)):
        _set_lr(opt, step, s.refiner_steps, s.warmup)
        images, score = degrade(images, gen, s.max_degrade_noise)
        latents = _encode(vae, images, device)
        with torch.no_grad():
            _, ids2 = tokens(captions)
            context, pooled = encode_text(None, te2, None, ids2.to(device))
        context, pooled = drop_captions(context, pooled, s.caption_dropout, gen)
        # time ids: original size, crop top-left, aesthetic score
        time_ids = torch.cat([micro, score[:, None]], dim=1).to(device)
        loss = _diffusion_loss(unet, latents, context, pooled, time_ids, s, gen, acp, s.refiner_max_t)
        _optimise(opt, loss, params, ema)
        log.add(step, loss=loss.item())
    ema.copy_to_params()
    unet.eval().requires_grad_(False)
    return unet, log.summary()


# ---- saving ---------------------------------------------------------------------------------------------------------


def save(out: Path, vae, te1, te2, unet, refiner, dtype: torch.dtype = torch.float16) -> None:
    """DIR/base (StableDiffusionXLPipeline) and DIR/refiner (StableDiffusionXLImg2ImgPipeline, aesthetic score)."""
    from sdxl.loading.save import save_pretrained
    from sdxl.loading.single_file import SDXL_SCHEDULER_CONFIG
    from sdxl.schedulers.euler import EulerDiscreteScheduler

    def half(m):
        return m.to("cpu", dtype)

    vae, te1, te2, unet, refiner = (half(m) for m in (vae, te1, te2, unet, refiner))
    tokens = Tokens()
    scheduler = EulerDiscreteScheduler.from_config(SDXL_SCHEDULER_CONFIG)
    base = {"vae": vae, "text_encoder": te1, "text_encoder_2": te2, "tokenizer": tokens.tokenizer,
                "tokenizer_2": tokens.tokenizer_2, "unet": unet, "scheduler": scheduler}  # fmt: skip
    save_pretrained(base, out / "base", options={"force_zeros_for_empty_prompt": True})
    ref = {"vae": vae, "text_encoder": None, "text_encoder_2": te2, "tokenizer": None,
           "tokenizer_2": tokens.tokenizer_2, "unet": refiner, "scheduler": scheduler}  # fmt: skip
    save_pretrained(ref, out / "refiner", class_name="StableDiffusionXLImg2ImgPipeline",
                    options={"force_zeros_for_empty_prompt": True, "requires_aesthetics_score": True})  # fmt: skip


def train(out: str | Path, *, seed: int = 0, device: str = "cpu", settings: Settings = Settings()) -> dict[str, Any]:
    """Run the three stages and write DIR/base, DIR/refiner and DIR/train_log.json; returns the log."""
    out = Path(out)
    if settings.base_pool < 1:
        raise ValueError(f"base_pool must be at least 1 sample (--base-pool), got {settings.base_pool}")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; pass a new folder for --out")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was given but torch sees no CUDA device; use --device cpu")
    if dev.type == "cuda":  # same arithmetic on every run of the device
        torch.backends.cudnn.benchmark = False
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    # CPU: denormal floats (tiny gradients) otherwise slow training down 10x+. Only while training: flush-to-zero is
    # process-wide, and left on it changes every later float computation of the process (torch's default is off).
    torch.set_flush_denormal(True)
    try:
        t0 = time.perf_counter()
        vae, vae_log = train_vae(settings, seed, dev)
        te1, te2, unet, base_log = train_base(settings, seed, dev, vae)
        refiner, refiner_log = train_refiner(settings, seed, dev, vae, te2)
        save(out, vae, te1, te2, unet, refiner)
    finally:
        torch.set_flush_denormal(False)
    log = {
        "seed": seed, "device": str(dev), "threads": torch.get_num_threads(), "settings": dataclasses.asdict(settings),
        "vae": vae_log, "base": base_log, "refiner": refiner_log, "total_seconds": time.perf_counter() - t0,
    }  # fmt: skip
    (out / "train_log.json").write_text(json.dumps(log, indent=1) + "\n")
    logger.info("done in %.0f s: %s", log["total_seconds"], out)
    return log


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sdxl.demo.train", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="new folder for base/, refiner/ and train_log.json")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--quick", action="store_true", help="a few steps of each stage (smoke test)")
    for f in dataclasses.fields(Settings):
        parser.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=None,
                            help=f"default {f.default}")  # fmt: skip
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    settings = Settings.quick() if args.quick else Settings()
    overrides = {
        f.name: getattr(args, f.name) for f in dataclasses.fields(Settings) if getattr(args, f.name) is not None
    }
    settings = dataclasses.replace(settings, **overrides)
    train(args.out, seed=args.seed, device=args.device, settings=settings)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
