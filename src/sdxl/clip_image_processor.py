"""CLIPImageProcessor: images -> the normalised 224x224 pixel tensors a CLIP image encoder reads (the pipelines'
`feature_extractor`, used for IP-Adapter images).

Reproduces transformers 5.23's CLIP image processor (PIL backend, `image_processing_pil_clip.py` over
`image_processing_backends.PilBackend`): convert to RGB, resize the shortest edge with PIL (bicubic), centre-crop,
rescale by 1/255 (in float64, then float32), normalise with the OpenAI CLIP mean/std. Same pixels for the same input.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CONFIG_NAME = "preprocessor_config.json"
# preprocessor_config.json keys that carry no processing (written by transformers)
_IGNORED_KEYS = frozenset({"image_processor_type", "processor_class", "feature_extractor_type", "_processor_class"})


def _size_dict(size: Any, square: bool) -> dict[str, int]:
    if isinstance(size, int):
        return {"height": size, "width": size} if square else {"shortest_edge": size}
    if isinstance(size, dict) and (set(size) == {"shortest_edge"} or set(size) == {"height", "width"}):
        return {k: int(v) for k, v in size.items()}
    raise ValueError(f"size {size!r}: pass an int or {{'shortest_edge': n}} / {{'height': h, 'width': w}}.")


class BatchFeature(dict):
    """The processor's result: `out.pixel_values` or `out["pixel_values"]` ((B, 3, H, W) float32)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class CLIPImageProcessor:
    """transformers' `CLIPImageProcessor` options and call: `processor(images, return_tensors="pt").pixel_values`."""

    def __init__(
        self,
        do_resize: bool = True,
        size: int | dict[str, int] | None = None,
        resample: int = PIL.Image.BICUBIC,
        do_center_crop: bool = True,
        crop_size: int | dict[str, int] | None = None,
        do_rescale: bool = True,
        rescale_factor: float = 1 / 255,
        do_normalize: bool = True,
        image_mean: list[float] | tuple[float, ...] | None = None,
        image_std: list[float] | tuple[float, ...] | None = None,
        do_convert_rgb: bool = True,
        **kwargs: Any,
    ):
        unknown = sorted(set(kwargs) - _IGNORED_KEYS)
        if unknown:
            raise TypeError(f"CLIPImageProcessor got unexpected arguments {unknown}.")
        self.do_resize = do_resize
        self.size = _size_dict(224 if size is None else size, square=False)
        self.resample = int(resample)
        self.do_center_crop = do_center_crop
        self.crop_size = _size_dict(224 if crop_size is None else crop_size, square=True)
        self.do_rescale = do_rescale
        self.rescale_factor = rescale_factor
        self.do_normalize = do_normalize
        self.image_mean = list(OPENAI_CLIP_MEAN if image_mean is None else image_mean)
        self.image_std = list(OPENAI_CLIP_STD if image_std is None else image_std)
        self.do_convert_rgb = do_convert_rgb

    # ---- config ------------------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        keys = ("do_resize", "size", "resample", "do_center_crop", "crop_size", "do_rescale", "rescale_factor",
                "do_normalize", "image_mean", "image_std", "do_convert_rgb")  # fmt: skip
        return {"image_processor_type": "CLIPImageProcessor", **{k: getattr(self, k) for k in keys}}

    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """Write preprocessor_config.json (transformers' file) into `save_directory`."""
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / CONFIG_NAME).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return folder

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike, subfolder: str | None = None, **kwargs: Any
    ) -> CLIPImageProcessor:
        """Read preprocessor_config.json from a local folder (or its `subfolder`); keywords override it."""
        folder = Path(path) / subfolder if subfolder else Path(path)
        config_file = folder / CONFIG_NAME
        if not config_file.is_file():
            raise FileNotFoundError(f"No {CONFIG_NAME} in {folder}: it is not an image processor folder.")
        return cls(**{**json.loads(config_file.read_text()), **kwargs})

    # ---- processing --------------------------------------------------------------------------------------------

    def _to_pil(self, image: Any) -> tuple[PIL.Image.Image, bool]:
        """(PIL image, whether the input was a [0, 1] float image that must be scaled back after resizing)."""
        if isinstance(image, PIL.Image.Image):
            return (image.convert("RGB") if self.do_convert_rgb and image.mode != "RGB" else image), False
        array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
        if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
            array = np.moveaxis(array, 0, -1)  # (C, H, W) -> (H, W, C)
        if array.ndim != 3:
            raise ValueError(f"An image must be (H, W, C) or (C, H, W), got shape {array.shape}.")
        scaled = False
        if array.dtype != np.uint8:
            if np.allclose(array, array.astype(int)) and array.min() >= 0 and array.max() <= 255:
                pass
            elif array.min() >= 0 and array.max() <= 1:
                array, scaled = array * 255, True
            else:
                raise ValueError(f"Image values must lie in [0, 1] or [0, 255], got [{array.min()}, {array.max()}].")
        array = array.astype(np.uint8)
        pil = PIL.Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
        return (pil.convert("RGB") if self.do_convert_rgb and pil.mode != "RGB" else pil), scaled

    def _resized(self, image: PIL.Image.Image) -> PIL.Image.Image:
        w, h = image.size
        if "shortest_edge" in self.size:
            short, long = (w, h) if w <= h else (h, w)
            new_short, new_long = self.size["shortest_edge"], int(self.size["shortest_edge"] * long / short)
            new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
        else:
            new_w, new_h = self.size["width"], self.size["height"]
        return image.resize((new_w, new_h), resample=self.resample)

    def _center_crop(self, array: np.ndarray) -> np.ndarray:
        """(H, W, C) -> (crop_h, crop_w, C), zero-padded where the image is smaller (transformers' center_crop)."""
        ch, cw = self.crop_size["height"], self.crop_size["width"]
        h, w = array.shape[:2]
        top, left = (h - ch) // 2, (w - cw) // 2
        if top >= 0 and left >= 0:
            return array[top : top + ch, left : left + cw]
        ph, pw = max(ch, h), max(cw, w)
        padded = np.zeros((ph, pw, array.shape[2]), dtype=array.dtype)
        t, lft = (ph - h + 1) // 2, (pw - w + 1) // 2
        padded[t : t + h, lft : lft + w] = array
        top, left = (ph - ch) // 2, (pw - cw) // 2
        return padded[top : top + ch, left : left + cw]

    def preprocess_one(self, image: Any) -> np.ndarray:
        """One image -> (3, H, W) float32."""
        pil, scaled = self._to_pil(image)
        if self.do_resize:
            pil = self._resized(pil)
        array = np.array(pil)
        if array.ndim == 2:
            array = array[..., None]
        if scaled:  # back to the caller's [0, 1] range, as transformers does around its PIL resize
            array = (array.astype(np.float64) / 255).astype(np.float32)
        if self.do_center_crop:
            array = self._center_crop(array)
        if self.do_rescale:
            array = (array.astype(np.float64) * self.rescale_factor).astype(np.float32)
        if self.do_normalize:
            array = array.astype(np.float32) if not np.issubdtype(array.dtype, np.floating) else array
            mean = np.array(self.image_mean, dtype=array.dtype)
            std = np.array(self.image_std, dtype=array.dtype)
            array = (array - mean) / std
        return np.moveaxis(array, -1, 0)

    def __call__(self, images: Any, return_tensors: str | None = "pt", **kwargs: Any) -> BatchFeature:
        """PIL image(s), (H, W, C) / (C, H, W) arrays or tensors, or a list -> {"pixel_values": (B, 3, H, W)}."""
        if kwargs:
            raise TypeError(f"CLIPImageProcessor() got unexpected arguments {sorted(kwargs)}.")
        single = isinstance(images, PIL.Image.Image) or (hasattr(images, "ndim") and images.ndim == 3)
        batch = [images] if single else list(images)
        pixels = np.stack([self.preprocess_one(image) for image in batch])
        if return_tensors == "pt":
            return BatchFeature(pixel_values=torch.from_numpy(pixels))
        if return_tensors in (None, "np"):
            return BatchFeature(pixel_values=pixels)
        raise ValueError(f"return_tensors={return_tensors!r}: use 'pt' or 'np'.")

    preprocess = __call__
