"""The attributes diffusers' SDXL pipelines expose during a call: guidance scale and rescale, clip skip, whether
classifier-free guidance runs, denoising end, step count and the interrupt flag, read by the denoising loop and by
step-end callbacks."""

from __future__ import annotations

from sdxl.pipelines.denoise import guidance_enabled


class CallStateMixin:
    """Mixed into the SDXL pipelines, whose `__call__` sets the private values (`_guidance_scale`, ...) these
    properties read; needs `_guidance_embedding_dim` (`UNetInputsMixin`)."""

    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def guidance_rescale(self) -> float:
        return self._guidance_rescale

    @property
    def clip_skip(self) -> int | None:
        return self._clip_skip

    @property
    def do_classifier_free_guidance(self) -> bool:
        """Guidance runs when guidance_scale > 1 (and the UNet does not embed the scale itself)."""
        return guidance_enabled(self._guidance_scale) and self._guidance_embedding_dim() is None

    @property
    def denoising_end(self) -> float | None:
        return self._denoising_end

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        """Set `pipe._interrupt = True` (e.g. in a step-end callback) to skip the remaining steps."""
        return self._interrupt
