"""Cheap live previews of the latents while a run denoises.

A full VAE decode costs more than a denoising step, so previews use a linear latent-to-RGB projection: each latent
pixel's channels times a (3, C) matrix plus a bias gives the colour of its 8x8 patch. The matrix is fitted once per
VAE by least squares on what that very VAE decodes (see `fit_latent_to_rgb`), so it works for any latent space
(SDXL's, the demo model's) without a table of published factors.
"""

from __future__ import annotations

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


class LatentPreviewer:
    """Turns (B, C, h, w) latents into small PIL previews with a linear projection fitted to `vae` (on first use)."""

    def __init__(self, vae: Any):
        self.vae = vae
        self._projection: tuple[torch.Tensor, torch.Tensor] | None = None

    def projection(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The fitted (weight (3, C), bias (3,)), computed once."""
        if self._projection is None:
            self._projection = fit_latent_to_rgb(self.vae)
        return self._projection

    def __call__(self, latents: torch.Tensor) -> list[Image.Image]:
        """One preview per batch row, upscaled (nearest) so its longer side is at least 128 pixels."""
        import torch
        from PIL import Image

        weight, bias = self.projection()
        with torch.no_grad():
            x = latents.detach().float().cpu()
            rgb = torch.einsum("bchw,rc->brhw", x, weight) + bias.view(1, 3, 1, 1)
            pixels = ((rgb.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        out = []
        for row in pixels:
            image = Image.fromarray(row)
            scale = max(1, -(-MIN_PREVIEW_SIDE // max(image.size)))
            if scale > 1:
                image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
            out.append(image)
        return out
