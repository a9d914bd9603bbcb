"""Images in and out of the pipelines: PIL / numpy / torch conversions, pre- and postprocessing.

Mirrors diffusers' `VaeImageProcessor` (default settings: resize with LANCZOS to a multiple of the VAE scale
factor, normalise [0, 1] -> [-1, 1], no RGB conversion) so that images match bit for bit.
PIL is imported inside the functions that need it, keeping `import sdxl` light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

# the mask half of the image processing (re-exported here: pipelines import image processing from `sdxl.image`)
from sdxl.image_mask import (  # noqa: F401
    RESIZE_MODES,
    apply_overlay,
    binarize,
    blur,
    get_crop_region,
    mask_latents,
    masked_image,
    resize_pil,
    spatial_size,
)

if TYPE_CHECKING:
    import PIL.Image

OUTPUT_TYPES = ("pil", "np", "pt", "latent")


def check_output_type(output_type: str) -> None:
    """Raise a ValueError for an output type the pipelines do not produce (diffusers would silently use "np")."""
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"`output_type` must be one of {list(OUTPUT_TYPES)}, but got {output_type!r}.")


def normalize(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> [-1, 1]."""
    return 2.0 * images - 1.0


def denormalize(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1], clamped."""
    return (images * 0.5 + 0.5).clamp(0, 1)


def pt_to_numpy(images: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) tensor -> (B, H, W, C) float32 array."""
    return images.cpu().permute(0, 2, 3, 1).float().numpy()


def numpy_to_pt(images: np.ndarray) -> torch.Tensor:
    """(B, H, W[, C]) array -> (B, C, H, W) tensor (no copy of the data's dtype or range)."""
    if images.ndim == 3:
        images = images[..., None]
    return torch.from_numpy(images.transpose(0, 3, 1, 2))


def numpy_to_pil(images: np.ndarray) -> list[PIL.Image.Image]:
    """(B, H, W, C) or (H, W, C) array in [0, 1] -> list of PIL images: round(x * 255) as uint8."""
    from PIL import Image

    if images.ndim == 3:
        images = images[None, ...]
    images = (images * 255).round().astype("uint8")
    if images.shape[-1] == 1:
        return [Image.fromarray(image.squeeze(), mode="L") for image in images]
    return [Image.fromarray(image) for image in images]


def pil_to_numpy(images: PIL.Image.Image | list[PIL.Image.Image]) -> np.ndarray:
    """PIL image(s) -> (B, H, W, C) float32 array in [0, 1]."""
    if not isinstance(images, list):
        images = [images]
    return np.stack([np.array(image).astype(np.float32) / 255.0 for image in images], axis=0)


def postprocess(image: torch.Tensor, output_type: str = "pil") -> Any:
    """Decoded VAE output in [-1, 1], (B, 3, H, W) -> "pil" list, "np" (B, H, W, 3) float32, "pt" tensor in [0, 1].

    "latent" returns the input unchanged.
    """
    check_output_type(output_type)
    if output_type == "latent":
        return image
    image = denormalize(image)
    if output_type == "pt":
        return image
    array = pt_to_numpy(image)
    if output_type == "np":
        return array
    return numpy_to_pil(array)


def default_height_width(image: Any, height: int | None, width: int | None, vae_scale_factor: int) -> tuple[int, int]:
    """The image's own size where not given, rounded down to a multiple of the VAE scale factor."""
    from PIL import Image

    if isinstance(image, Image.Image):
        size = (image.height, image.width)
    elif isinstance(image, torch.Tensor):
        size = (image.shape[2], image.shape[3])  # (B, C, H, W)
    else:
        size = (image.shape[1], image.shape[2])  # (B, H, W, C)
    height = size[0] if height is None else height
    width = size[1] if width is None else width
    return height - height % vae_scale_factor, width - width % vae_scale_factor


def _grayscale_channel(image: Any) -> Any:
    """A 3-dim grayscale array/tensor gains its channel axis: tensors (B, H, W) -> (B, 1, H, W); arrays (H, W, 1)
    -> (1, H, W, 1) and (B, H, W) -> (B, H, W, 1) (diffusers' reading of the ambiguous shapes)."""
    if isinstance(image, torch.Tensor) and image.ndim == 3:
        return image.unsqueeze(1)
    if isinstance(image, np.ndarray) and image.ndim == 3:
        return image[None] if image.shape[-1] == 1 else image[..., None]
    return image


def preprocess(
    image: Any,
    height: int | None = None,
    width: int | None = None,
    *,
    vae_scale_factor: int = 8,
    latent_channels: int = 4,
    resize_mode: str = "default",
    crops_coords: tuple[int, int, int, int] | None = None,
    do_normalize: bool = True,
    do_binarize: bool = False,
    do_convert_grayscale: bool = False,
) -> torch.Tensor:
    """PIL image(s), (B, H, W, C) / (H, W, C) arrays in [0, 1] or (B, C, H, W) / (C, H, W) tensors -> (B, C, H, W)
    float tensor in [-1, 1] at `height` x `width` (default: the input's size rounded down to the scale factor).

    PIL inputs are cropped to `crops_coords` (x1, y1, x2, y2) when given, then resized with LANCZOS per
    `resize_mode` ("default" stretches; "fill" and "crop" keep the aspect ratio, PIL only); arrays and tensors are
    resized with nearest-neighbour interpolation (as diffusers). A tensor with `latent_channels` channels is
    returned untouched: it is taken to be latents already. Tensors with negative values are taken to be in [-1, 1]
    already. The mask settings (diffusers' `mask_processor`): `do_normalize=False` keeps [0, 1],
    `do_binarize=True` thresholds at 0.5, `do_convert_grayscale=True` makes one channel ("L").
    """
    from PIL import Image

    if do_convert_grayscale:
        image = _grayscale_channel(image)
    images = image if isinstance(image, list) else [image]
    if not images or not all(isinstance(i, (Image.Image, np.ndarray, torch.Tensor)) for i in images):
        raise TypeError(
            f"`image` must be a PIL image, a numpy array, a torch tensor or a list of one of them, but got {image!r}."
        )
    if resize_mode not in RESIZE_MODES:
        raise ValueError(f"`resize_mode` must be one of {list(RESIZE_MODES)}, but got {resize_mode!r}.")
    if resize_mode != "default" and not isinstance(images[0], Image.Image):
        raise ValueError(f"`resize_mode` {resize_mode!r} works on PIL images only, but got {type(images[0]).__name__}.")
    if isinstance(images[0], Image.Image):
        if crops_coords is not None:
            images = [i.crop(crops_coords) for i in images]
        height, width = default_height_width(images[0], height, width, vae_scale_factor)
        images = [resize_pil(i, width, height, resize_mode) for i in images]
        if do_convert_grayscale:
            images = [i.convert("L") for i in images]
        batch = numpy_to_pt(pil_to_numpy(images))
    else:
        if isinstance(images[0], np.ndarray):
            arrays = np.concatenate(images, axis=0) if images[0].ndim == 4 else np.stack(images, axis=0)
            batch = numpy_to_pt(arrays)
        else:
            batch = torch.cat(images, dim=0) if images[0].ndim == 4 else torch.stack(images, dim=0)
            if do_convert_grayscale and batch.ndim == 3:  # a list of (H, W) tensors
                batch = batch.unsqueeze(1)
            if batch.shape[1] == latent_channels:
                return batch
        height, width = default_height_width(batch, height, width, vae_scale_factor)
        batch = F.interpolate(batch, size=(height, width))
    if do_normalize and batch.min() >= 0:
        batch = normalize(batch)
    if do_binarize:
        batch = binarize(batch)
    return batch


class VaeImageProcessor:
    """diffusers' `pipe.image_processor` / `pipe.mask_processor` surface over the functions above and in
    `sdxl.image_mask`. The inpainting pipelines' mask processor is
    `VaeImageProcessor(f, do_normalize=False, do_binarize=True, do_convert_grayscale=True)`, as in diffusers."""

    def __init__(
        self,
        vae_scale_factor: int = 8,
        vae_latent_channels: int = 4,
        do_normalize: bool = True,
        do_binarize: bool = False,
        do_convert_grayscale: bool = False,
    ):
        self.vae_scale_factor = vae_scale_factor
        self.vae_latent_channels = vae_latent_channels
        self.do_normalize = do_normalize
        self.do_binarize = do_binarize
        self.do_convert_grayscale = do_convert_grayscale

    def preprocess(
        self,
        image: Any,
        height: int | None = None,
        width: int | None = None,
        resize_mode: str = "default",
        crops_coords: tuple[int, int, int, int] | None = None,
    ) -> torch.Tensor:
        """See `sdxl.image.preprocess`."""
        return preprocess(
            image, height, width, vae_scale_factor=self.vae_scale_factor, latent_channels=self.vae_latent_channels,
            resize_mode=resize_mode, crops_coords=crops_coords, do_normalize=self.do_normalize,
            do_binarize=self.do_binarize, do_convert_grayscale=self.do_convert_grayscale,
        )

    def postprocess(self, image: torch.Tensor, output_type: str = "pil") -> Any:
        """See `sdxl.image.postprocess`."""
        return postprocess(image, output_type)

    def resize(self, image: PIL.Image.Image, height: int, width: int, resize_mode: str = "default") -> Any:
        """See `sdxl.image_mask.resize_pil` (PIL images)."""
        return resize_pil(image, width, height, resize_mode)

    blur = staticmethod(blur)
    get_crop_region = staticmethod(get_crop_region)
    apply_overlay = staticmethod(apply_overlay)
