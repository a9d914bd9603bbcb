"""IP-Adapter on the SDXL pipelines: `load_ip_adapter`, `set_ip_adapter_scale`, `unload_ip_adapter`, and the image
embeddings a call passes to the UNet (`ip_adapter_image` / `ip_adapter_image_embeds`).

As diffusers 0.42.1 (`loaders/ip_adapter.py` IPAdapterMixin, `StableDiffusionXLPipeline.encode_image` /
`prepare_ip_adapter_image_embeds`), so that code written for diffusers runs unchanged and gives the same images.
The UNet side (projection layers, decoupled cross-attention) is `sdxl.models.ip_adapter`.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import torch

from sdxl.image import VaeImageProcessor
from sdxl.models.ip_adapter import downsample_mask

logger = logging.getLogger(__name__)

DEFAULT_CLIP_IMAGE_SIZE = 224  # FaceID adapters have no image encoder; their feature extractor uses CLIP's size


def _as_list(value: Any, n: int | None = None) -> list[Any]:
    items = value if isinstance(value, list) else [value]
    return items * n if n is not None and len(items) == 1 else items


def expand_block_scales(unet: Any, scale: Any, default_scale: float = 0.0) -> Any:
    """A per-block scale dict ({"down": {"block_2": [0.0, 1.0]}, "up": {"block_0": [0.0, 1.0, 0.0]}, "mid": 1.0})
    -> {"down_blocks.2.attentions.1": 1.0, ...} for every transformer of the UNet, `default_scale` where unnamed
    (diffusers' `_maybe_expand_lora_scales`, the InstantStyle form). A number is returned as is."""
    if not isinstance(scale, dict):
        return scale
    unknown = sorted(set(scale) - {"down", "mid", "up"})
    if unknown:
        raise ValueError(f"IP-Adapter scale keys {unknown} are not blocks: use 'down', 'mid' and 'up'.")
    scale = copy.deepcopy(scale)
    with_attention = {
        "down": [i for i, b in enumerate(unet.down_blocks) if b.attentions is not None],
        "up": [i for i, b in enumerate(unet.up_blocks) if b.attentions is not None],
    }
    per_block = {"down": unet.config.layers_per_block, "up": unet.config.layers_per_block + 1}
    mid = scale.pop("mid", default_scale)
    if isinstance(mid, list):
        if len(mid) != 1:
            raise ValueError(f"Expected 1 scale for mid, got {len(mid)}.")
        mid = mid[0]
    out = {"mid_block.attentions.0": mid}
    for side in ("down", "up"):
        blocks = scale.get(side, default_scale)
        if not isinstance(blocks, dict):
            blocks = {f"block_{i}": blocks for i in with_attention[side]}
        stray = sorted(set(blocks) - {f"block_{i}" for i in with_attention[side]})
        if stray:
            raise ValueError(f"IP-Adapter scale for {side}: {stray} have no attention layers in this UNet.")
        for i in with_attention[side]:
            values = blocks.get(f"block_{i}", default_scale)
            values = values if isinstance(values, list) else [values]
            if len(values) == 1:
                values = values * per_block[side]
            if len(values) != per_block[side]:
                raise ValueError(f"Expected {per_block[side]} scales for {side}.block_{i}, got {len(values)}.")
            for j, value in enumerate(values):
                out[f"{side}_blocks.{i}.attentions.{j}"] = value
    return out


class IPAdapterMixin:
    """Mixed into the SDXL pipelines (they have `unet`, `image_encoder`, `feature_extractor`)."""

    def load_ip_adapter(
        self,
        pretrained_model_name_or_path_or_dict: Any,
        subfolder: str | list[str] | None,
        weight_name: str | list[str],
        image_encoder_folder: str | None = "image_encoder",
        **kwargs: Any,
    ) -> None:
        """Load one or more IP-Adapters (h94/IP-Adapter files such as `sdxl_models/ip-adapter_sdxl.safetensors`,
        or state dicts {"image_proj": ..., "ip_adapter": ...}) into the UNet; lists load several at once.

        Also loads the CLIP image encoder (`subfolder/image_encoder_folder`, or `image_encoder_folder` itself when it
        holds a "/") when the pipeline has none, and creates a CLIPImageProcessor as `feature_extractor`. Only
        .safetensors files are read. Keywords: `cache_dir`, `revision`, `local_files_only` (others diffusers takes,
        such as `low_cpu_mem_usage`, are accepted and have no effect).
        """
        from sdxl.loading.hub import resolve_file
        from sdxl.loading.ip_adapter import read_ip_adapter_file

        hub = {k: kwargs.pop(k) for k in ("cache_dir", "revision", "local_files_only") if k in kwargs}
        for ignored in ("low_cpu_mem_usage", "force_download", "proxies", "token"):
            kwargs.pop(ignored, None)
        if kwargs:
            raise TypeError(f"load_ip_adapter got unexpected arguments {sorted(kwargs)}.")
        weight_names = _as_list(weight_name)
        sources = _as_list(pretrained_model_name_or_path_or_dict, len(weight_names))
        subfolders = _as_list(subfolder, len(weight_names))
        if not len(weight_names) == len(sources) == len(subfolders):
            raise ValueError(
                "`weight_name`, `subfolder` and `pretrained_model_name_or_path_or_dict` need one entry per "
                "IP-Adapter (or a single value for all)."
            )
        state_dicts = []
        for source, name, sub in zip(sources, weight_names, subfolders):
            if isinstance(source, dict):
                state_dict = source
            else:
                state_dict = read_ip_adapter_file(resolve_file(source, name, sub, **hub))
            if "image_proj" not in state_dict or "ip_adapter" not in state_dict:
                raise ValueError("Required keys are (`image_proj` and `ip_adapter`) missing from the state dict.")
            state_dicts.append(state_dict)
            if getattr(self, "image_encoder", None) is None:
                self._load_image_encoder(source, sub, image_encoder_folder, hub)
            if getattr(self, "feature_extractor", None) is None:
                self._make_feature_extractor()
        self.unet._load_ip_adapter_weights(state_dicts)
        self.unet._load_ip_adapter_loras(state_dicts)

    def _load_image_encoder(self, source: Any, subfolder: str | None, folder: str | None, hub: dict) -> None:
        from sdxl.models.clip_vision import CLIPVisionModelWithProjection

        if folder is None:
            logger.warning(
                "image_encoder is not loaded since image_encoder_folder=None was passed: use ip_adapter_image_embeds "
                "instead of ip_adapter_image when calling the pipeline."
            )
            return
        if isinstance(source, dict):
            raise ValueError(  # noqa: TRY004 (a missing input, not a wrong type)
                "`image_encoder` cannot be loaded because `pretrained_model_name_or_path_or_dict` is a state dict: "
                "pass image_encoder_folder=None (and ip_adapter_image_embeds), or set pipe.image_encoder first."
            )
        # a bare name is inside the adapter's subfolder; a path with "/" is relative to the repository root
        encoder_sub = Path(subfolder or "", folder).as_posix() if "/" not in folder else Path(folder).as_posix()
        encoder = CLIPVisionModelWithProjection.from_pretrained(
            source, subfolder=encoder_sub, torch_dtype=self.dtype, **hub
        )
        self.register_modules(image_encoder=encoder.to(self.device))

    def _make_feature_extractor(self) -> None:
        from sdxl.clip_image_processor import CLIPImageProcessor

        encoder = getattr(self, "image_encoder", None)
        size = encoder.config.image_size if encoder is not None else DEFAULT_CLIP_IMAGE_SIZE
        self.register_modules(feature_extractor=CLIPImageProcessor(size=size, crop_size=size))

    def set_ip_adapter_scale(self, scale: Any) -> None:
        """How strongly each IP-Adapter steers: a number, one per adapter (a list), or per block as a dict
        ({"up": {"block_0": [0.0, 1.0, 0.0]}}: style only, InstantStyle); 0 switches an adapter off."""
        scales = [expand_block_scales(self.unet, s) for s in _as_list(scale)]
        for name, processor in self.unet.ip_adapter_layers().items():
            if len(scales) != len(processor.scale):
                raise ValueError(f"Cannot assign {len(scales)} scale_configs to {len(processor.scale)} IP-Adapter.")
            for i, config in enumerate(scales):
                if isinstance(config, dict):
                    for prefix, value in config.items():
                        if name.startswith(prefix):
                            processor.scale[i] = value
                else:
                    processor.scale[i] = config

    def unload_ip_adapter(self) -> None:
        """Remove the IP-Adapters, the image encoder and the feature extractor; the UNet attends to text only again."""
        self.image_encoder = None
        self.feature_extractor = None
        self.unet._unload_ip_adapter()

    # ---- the image embeddings of a call ---------------------------------------------------------------------------

    def encode_image(
        self, image: Any, device: torch.device, num_images_per_prompt: int, output_hidden_states: bool | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(image embeddings, unconditional ones) from the image encoder: projected embeddings with zeros as the
        negative, or with `output_hidden_states` the penultimate hidden states, the negative from a zero image."""
        if self.image_encoder is None:
            raise ValueError(
                "ip_adapter_image needs the pipeline's image_encoder: load_ip_adapter() with an image_encoder_folder, "
                "or pass ip_adapter_image_embeds instead."
            )
        dtype = next(self.image_encoder.parameters()).dtype
        if not isinstance(image, torch.Tensor):
            image = self.feature_extractor(image, return_tensors="pt").pixel_values
        image = image.to(device=device, dtype=dtype)
        if output_hidden_states:
            hidden = self.image_encoder(image, output_hidden_states=True).hidden_states[-2]
            uncond = self.image_encoder(torch.zeros_like(image), output_hidden_states=True).hidden_states[-2]
            return (
                hidden.repeat_interleave(num_images_per_prompt, dim=0),
                uncond.repeat_interleave(num_images_per_prompt, dim=0),
            )
        embeds = self.image_encoder(image).image_embeds.repeat_interleave(num_images_per_prompt, dim=0)
        return embeds, torch.zeros_like(embeds)

    def prepare_ip_adapter_image_embeds(
        self,
        ip_adapter_image: Any,
        ip_adapter_image_embeds: list[torch.Tensor] | None,
        device: torch.device,
        num_images_per_prompt: int,
        do_classifier_free_guidance: bool,
    ) -> list[torch.Tensor]:
        """One (B, n_images, ...) tensor per adapter, rows [negative; positive] under guidance. Given embeddings
        must already be stacked [negative; positive] when guidance is on (diffusers' convention)."""
        from sdxl.models.ip_adapter import ImageProjection

        image_embeds, negative_embeds = [], []
        if ip_adapter_image_embeds is None:
            layers = self._ip_projection_layers()
            images = _as_list(ip_adapter_image)
            if len(images) != len(layers):
                raise ValueError(
                    f"`ip_adapter_image` must have same length as the number of IP Adapters. Got {len(images)} "
                    f"images and {len(layers)} IP Adapters."
                )
            for image, layer in zip(images, layers):
                embeds, negative = self.encode_image(image, device, 1, not isinstance(layer, ImageProjection))
                image_embeds.append(embeds[None, :])
                negative_embeds.append(negative[None, :])
        else:
            for embeds in ip_adapter_image_embeds:
                if do_classifier_free_guidance:
                    negative, embeds = embeds.chunk(2)
                    negative_embeds.append(negative)
                image_embeds.append(embeds)
        out = []
        for i, embeds in enumerate(image_embeds):
            embeds = torch.cat([embeds] * num_images_per_prompt, dim=0)
            if do_classifier_free_guidance:
                embeds = torch.cat([torch.cat([negative_embeds[i]] * num_images_per_prompt, dim=0), embeds], dim=0)
            out.append(embeds.to(device=device))
        return out

    def _ip_projection_layers(self) -> list[Any]:
        projection = getattr(self.unet, "encoder_hid_proj", None)
        if projection is None:
            raise ValueError("ip_adapter_image was given but no IP-Adapter is loaded: call load_ip_adapter() first.")
        return list(projection.image_projection_layers)

    def check_ip_adapter_inputs(self, ip_adapter_image: Any, ip_adapter_image_embeds: Any) -> None:
        """ValueError for the IP-Adapter input combinations diffusers rejects, and for IP inputs without an adapter."""
        if ip_adapter_image is not None and ip_adapter_image_embeds is not None:
            raise ValueError(
                "Provide either `ip_adapter_image` or `ip_adapter_image_embeds`. Cannot leave both `ip_adapter_image` "
                "and `ip_adapter_image_embeds` defined."
            )
        if ip_adapter_image_embeds is not None:
            if not isinstance(ip_adapter_image_embeds, list):
                raise ValueError(
                    f"`ip_adapter_image_embeds` has to be of type `list` but is {type(ip_adapter_image_embeds)}"
                )
            if ip_adapter_image_embeds[0].ndim not in (3, 4):
                raise ValueError(
                    "`ip_adapter_image_embeds` has to be a list of 3D or 4D tensors but is "
                    f"{ip_adapter_image_embeds[0].ndim}D"
                )
        if (
            ip_adapter_image is not None or ip_adapter_image_embeds is not None
        ) and self.unet.encoder_hid_proj is None:
            raise ValueError("IP-Adapter inputs were given but no IP-Adapter is loaded: call load_ip_adapter() first.")


class IPAdapterMaskProcessor(VaeImageProcessor):
    """Masks for IP-Adapter regions (diffusers' `IPAdapterMaskProcessor`): `preprocess(masks, height, width)` ->
    (n, 1, H, W) in {0, 1}; reshape to (1, n, H, W) per adapter for `cross_attention_kwargs["ip_adapter_masks"]`."""

    def __init__(
        self,
        vae_scale_factor: int = 8,
        do_normalize: bool = False,
        do_binarize: bool = True,
        do_convert_grayscale: bool = True,
        **kwargs: Any,
    ):
        super().__init__(
            vae_scale_factor=vae_scale_factor,
            do_normalize=do_normalize,
            do_binarize=do_binarize,
            do_convert_grayscale=do_convert_grayscale,
            **kwargs,
        )

    downsample = staticmethod(downsample_mask)
