"""Live previews: the linear latent-to-RGB projection fitted to a VAE approximates what the VAE decodes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sdxl.preview import LatentPreviewer


@pytest.fixture(scope="module")
def demo_pipe():
    import sdxl

    pipe = sdxl.StableDiffusionXLPipeline.from_pretrained("demo")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_previews_follow_the_decoded_image(demo_pipe):
    """On generated latents the preview is closer to the decoded image than its mean colour is."""
    from sdxl.pipelines.denoise import decode_latents

    previewer = LatentPreviewer(demo_pipe.vae)
    prompts = ["a red circle on a blue background", "a large yellow star on a purple background"]
    latents = demo_pipe(prompts, num_inference_steps=10, output_type="latent",
                        generator=torch.Generator().manual_seed(0)).images
    decoded = F.avg_pool2d(decode_latents(demo_pipe.vae, latents), 8)  # (B, 3, h, w): colour per latent pixel
    target = ((decoded.clamp(-1, 1) + 1) * 127.5).permute(0, 2, 3, 1).numpy()
    for preview, expected in zip(previewer(latents), target):
        shown = np.asarray(preview.resize(expected.shape[1::-1], resample=0)).astype(float)
        grey = np.abs(expected - expected.mean()).mean()
        # better than a flat image of the exact mean colour (a linear map cannot follow this small VAE closely)
        assert np.abs(shown - expected).mean() < grey


def test_one_preview_per_row_scaled_up(demo_pipe):
    previews = LatentPreviewer(demo_pipe.vae)(torch.randn(2, 4, 16, 12))
    assert len(previews) == 2
    assert previews[0].size == (12 * 8, 16 * 8)  # longer side at least 128 px, nearest upscaling by whole factors
