"""StableDiffusionMixin: diffusers' pipeline-level switches over the UNet and VAE (FreeU, fused QKV projections);
the VAE slicing/tiling switches are in `memory.py`."""

from __future__ import annotations

from typing import Any


class StableDiffusionMixin:
    """Mixed into the SDXL pipelines (they have `unet` and `vae`)."""

    def _model(self, name: str, what: str) -> Any:
        model = getattr(self, name, None)
        if model is None:
            raise ValueError(f"The pipeline must have `{name}` for using {what}.")
        return model

    def enable_freeu(self, s1: float, s2: float, b1: float, b2: float) -> None:
        """FreeU (arXiv:2309.11497) on the UNet: `b1`/`b2` scale the backbone features of the first two up blocks,
        `s1`/`s2` the low frequencies of their skip features. For SDXL the paper suggests s1=0.9, s2=0.2, b1=1.3,
        b2=1.4."""
        self._model("unet", "FreeU").enable_freeu(s1=s1, s2=s2, b1=b1, b2=b2)

    def disable_freeu(self) -> None:
        """Turn FreeU off."""
        self._model("unet", "FreeU").disable_freeu()

    def fuse_qkv_projections(self, unet: bool = True, vae: bool = True) -> None:
        """Fuse the attention projections of the UNet and/or the VAE (one matmul for q, k, v); same images up to
        float rounding. `unfuse_qkv_projections` undoes it."""
        self.fusing_unet = self.fusing_vae = False
        if unet:
            self.fusing_unet = True
            self._model("unet", "fuse_qkv_projections").fuse_qkv_projections()
        if vae:
            model = self._model("vae", "fuse_qkv_projections")
            if not hasattr(model, "fuse_qkv_projections"):
                raise ValueError("`fuse_qkv_projections()` is only supported for the VAE of type `AutoencoderKL`.")
            self.fusing_vae = True
            model.fuse_qkv_projections()

    def unfuse_qkv_projections(self, unet: bool = True, vae: bool = True) -> None:
        """Back to separate projections (and the attention processors from before fusing)."""
        if unet and getattr(self, "fusing_unet", False):
            self.unet.unfuse_qkv_projections()
            self.fusing_unet = False
        if vae and getattr(self, "fusing_vae", False):
            self.vae.unfuse_qkv_projections()
            self.fusing_vae = False
