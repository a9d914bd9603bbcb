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


def test_demo_previews_use_its_tiny_vae_and_follow_the_image_closer(demo_pipe):
    """The demo model ships a distilled tiny VAE: its previews are full size and nearer the real decode than the
    linear projection's."""
    from sdxl.pipelines.denoise import decode_latents

    tiny = LatentPreviewer.for_pipeline(demo_pipe)
    assert type(tiny.tiny_vae).__name__ == "AutoencoderTiny"
    linear = LatentPreviewer(demo_pipe.vae)
    latents = demo_pipe(["a green square on a white background", "a small red cross on a black background"],
                        num_inference_steps=8, output_type="latent", generator=torch.Generator().manual_seed(1)).images
    target = ((decode_latents(demo_pipe.vae, latents).clamp(-1, 1) + 1) * 127.5).permute(0, 2, 3, 1).numpy()
    for tiny_image, linear_image, expected in zip(tiny(latents), linear(latents), target):
        assert tiny_image.size == (128, 128)
        tiny_error = np.abs(np.asarray(tiny_image, dtype=float) - expected).mean()
        linear_up = np.asarray(linear_image.resize((128, 128), resample=0), dtype=float)
        assert tiny_error < np.abs(linear_up - expected).mean()


def test_preview_callback_every_n_steps(demo_pipe):
    from sdxl.preview import PreviewCallback

    seen = []
    callback = PreviewCallback(demo_pipe, every=2, on_preview=lambda step, images: seen.append((step, len(images))))
    demo_pipe("a blue circle", num_inference_steps=4, num_images_per_prompt=2, output_type="latent",
              callback_on_step_end=callback)
    assert seen == [(1, 2), (3, 2)]
    assert len(callback.images) == 2
    with pytest.raises(ValueError, match="every=0"):
        PreviewCallback(demo_pipe, every=0)
    with pytest.raises(ValueError, match="needs the pipeline"):
        PreviewCallback()


def test_no_tiny_vae_beside_a_plain_folder(tmp_path):
    from sdxl.preview import find_tiny_vae

    assert find_tiny_vae(tmp_path) is None
    assert find_tiny_vae(None) is None
    assert find_tiny_vae("demo") is not None
    from sdxl.loading.hub import demo_folder

    assert find_tiny_vae(demo_folder("demo-refiner")) == find_tiny_vae("demo")
