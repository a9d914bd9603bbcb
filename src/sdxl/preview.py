"""Cheap live previews of the latents while a run denoises.

A full VAE decode costs more than a denoising step. When a tiny VAE (`AutoencoderTiny`: TAESD, e.g.
madebyollin/taesdxl, or the demo model's distilled one) is present, previews are its decodes: full resolution, close
to the real image. Otherwise they use a linear latent-to-RGB projection: each latent pixel's channels times a (3, C)
matrix plus a bias gives the colour of its 8x8 patch. The matrix is fitted once per VAE by least squares on what that
very VAE decodes (see `fit_latent_to_rgb`), so it works for any latent space (SDXL's, the demo model's) without a
table of published factors.

`PreviewCallback` plugs previews into any pipeline call as `callback_on_step_end` (diffusers' callback protocol).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from PIL import Image

CALIBRATION_IMAGES = 8
CALIBRATION_LATENT_SIZE = 16
MIN_PREVIEW_SIDE = 128


def fit_latent_to_rgb(vae: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares (weight (3, C), bias (3,)) mapping the pipeline's latents (scaled as the denoising loop sees
    them) to RGB in [-1, 1] for this VAE.

    Fitted through the decoder, which is what previews stand in for: smooth random latents (unit variance, as the
    scaling factor makes the loop's latents) are decoded, and each latent pixel is regressed on the mean colour of its
    patch. (Fitting through the encoder on synthetic images is worse: a VAE trained on one kind of picture encodes
    others off its latent manifold.)
    """
    import torch
    import torch.nn.functional as F

    from sdxl.pipelines.denoise import decode_latents

    generator = torch.Generator("cpu").manual_seed(0)
    channels, size = vae.config.latent_channels, CALIBRATION_LATENT_SIZE
    coarse = torch.randn(CALIBRATION_IMAGES, channels, 3, 3, generator=generator)
    latents = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=True)  # (N, C, s, s)
    with torch.no_grad():
        images = decode_latents(vae, latents).float().cpu()  # (N, 3, s * f, s * f)
    colours = F.avg_pool2d(images, images.shape[-1] // size)  # (N, 3, s, s)
    x = latents.permute(0, 2, 3, 1).reshape(-1, channels)  # (N*s*s, C)
    y = colours.permute(0, 2, 3, 1).reshape(-1, 3)  # (N*s*s, 3)
    x1 = torch.cat([x, torch.ones(len(x), 1)], dim=1)
    solution = torch.linalg.lstsq(x1.double(), y.double()).solution.float()  # (C + 1, 3)
    weight, bias = solution[:-1].T.contiguous(), solution[-1].contiguous()
    if not (torch.isfinite(weight).all() and torch.isfinite(bias).all()):
        raise ValueError("the VAE decoded non-finite images while fitting the preview projection")
    return weight, bias


def find_tiny_vae(model: str | os.PathLike | None) -> Path | None:
    """The folder of a tiny preview VAE that goes with `model`: the demo model's shipped one for the "demo" aliases,
    else a `vae_tiny/` subfolder of a local pipeline folder; None when there is none."""
    from sdxl.loading.hub import DEMO_MODELS, DEMO_ROOT

    if model is None:
        return None
    path = Path(model).expanduser()
    if str(model) in DEMO_MODELS or (path.is_dir() and path.resolve().parent == DEMO_ROOT.resolve()):
        folder = DEMO_ROOT / "vae_tiny"  # the demo base and refiner share one latent space
    else:
        folder = path / "vae_tiny"
    return folder if (folder / "config.json").is_file() else None


def _is_tiny(vae: Any) -> bool:
    return type(vae).__name__ == "AutoencoderTiny"


class LatentPreviewer:
    """Turns (B, C, h, w) latents into PIL previews: decoded by `tiny_vae` when given (or when `vae` itself is an
    AutoencoderTiny), else through a linear projection fitted to `vae` (on first use)."""

    def __init__(self, vae: Any, tiny_vae: Any = None):
        self.vae = vae
        self.tiny_vae = tiny_vae if tiny_vae is not None else (vae if _is_tiny(vae) else None)
        self._projection: tuple[torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def for_pipeline(cls, pipe: Any, tiny_vae: Any = None) -> LatentPreviewer:
        """A previewer for `pipe`: `tiny_vae` if given, else the tiny VAE found beside the pipeline's model (see
        `find_tiny_vae`, read from `pipe.config._name_or_path`), else the linear projection of `pipe.vae`."""
        if tiny_vae is None and not _is_tiny(pipe.vae):
            folder = find_tiny_vae(pipe.config.get("_name_or_path"))
            if folder is not None:
                from sdxl.models.vae_tiny import AutoencoderTiny

                tiny_vae = AutoencoderTiny.from_pretrained(folder).to(pipe.vae.device)
        return cls(pipe.vae, tiny_vae)

    def projection(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The fitted (weight (3, C), bias (3,)), computed once."""
        if self._projection is None:
            self._projection = fit_latent_to_rgb(self.vae)
        return self._projection

    def rgb(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) latents, scaled as the denoising loop has them -> (B, 3, H, W) float RGB in [-1, 1] on the CPU:
        the tiny VAE's decode (H = 8h), or the linear projection (H = h)."""
        import torch

        from sdxl.pipelines.denoise import decode_latents

        with torch.no_grad():
            if self.tiny_vae is not None:
                return decode_latents(self.tiny_vae, latents.detach()).float().cpu().clamp(-1, 1)
            weight, bias = self.projection()
            x = latents.detach().float().cpu()
            return (torch.einsum("bchw,rc->brhw", x, weight) + bias.view(1, 3, 1, 1)).clamp(-1, 1)

    def __call__(self, latents: torch.Tensor) -> list[Image.Image]:
        """One preview per batch row, upscaled (nearest) so its longer side is at least 128 pixels."""
        import torch
        from PIL import Image

        rgb = self.rgb(latents)
        pixels = ((rgb + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        out = []
        for row in pixels:
            image = Image.fromarray(row)
            scale = max(1, -(-MIN_PREVIEW_SIDE // max(image.size)))
            if scale > 1:
                image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
            out.append(image)
        return out


class PreviewCallback:
    """A `callback_on_step_end` that turns the step's latents into previews every `every` steps:

        previews = PreviewCallback(pipe, on_preview=lambda step, images: images[0].save(f"step{step}.png"))
        pipe(prompt, callback_on_step_end=previews)

    `on_preview(step, images)` receives the PIL previews; without it the latest are kept in `self.images`. The
    previewer is `LatentPreviewer.for_pipeline(pipe, tiny_vae)`, built on first use.
    """

    tensor_inputs = ("latents",)  # what the pipelines pass in callback_kwargs

    def __init__(
        self,
        pipe: Any = None,
        *,
        every: int = 1,
        on_preview: Callable[[int, list[Image.Image]], None] | None = None,
        tiny_vae: Any = None,
        previewer: LatentPreviewer | None = None,
    ):
        if pipe is None and previewer is None:
            raise ValueError("PreviewCallback needs the pipeline (or a LatentPreviewer) to decode previews with.")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"PreviewCallback every={every!r}: give a whole number of steps >= 1.")
        self.pipe, self.every, self.on_preview, self.tiny_vae = pipe, every, on_preview, tiny_vae
        self.previewer = previewer
        self.images: list[Image.Image] = []

    def __call__(self, pipe: Any, step: int, timestep: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
        if (step + 1) % self.every == 0:
            if self.previewer is None:
                self.previewer = LatentPreviewer.for_pipeline(self.pipe or pipe, self.tiny_vae)
            self.images = self.previewer(callback_kwargs["latents"])
            if self.on_preview is not None:
                self.on_preview(step, self.images)
        return {}
