"""sdxl: a fast, independent Stable Diffusion XL inference engine with diffusers' API.

`import sdxl` stays cheap: public names are imported on first use (PEP 562).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    # models
    "UNet2DConditionModel": "sdxl.models.unet",
    "AutoencoderKL": "sdxl.models.vae",
    "AutoencoderTiny": "sdxl.models.vae_tiny",
    "CLIPTextModel": "sdxl.models.clip",
    "CLIPTextModelWithProjection": "sdxl.models.clip",
    "CLIPTextConfig": "sdxl.models.clip",
    "CLIPVisionConfig": "sdxl.models.clip_vision",
    "CLIPVisionModelWithProjection": "sdxl.models.clip_vision",
    "CLIPTokenizer": "sdxl.tokenizer",
    "CLIPImageProcessor": "sdxl.clip_image_processor",
    # attention processors and IP-Adapter layers (diffusers' models.attention_processor / models.embeddings names)
    "AttnProcessor": "sdxl.models.attention_processor",
    "AttnProcessor2_0": "sdxl.models.attention_processor",
    "FusedAttnProcessor2_0": "sdxl.models.attention_processor",
    "IPAdapterAttnProcessor2_0": "sdxl.models.ip_adapter",
    "ImageProjection": "sdxl.models.ip_adapter",
    "IPAdapterPlusImageProjection": "sdxl.models.ip_adapter",
    "IPAdapterFullImageProjection": "sdxl.models.ip_adapter",
    "IPAdapterFaceIDImageProjection": "sdxl.models.ip_adapter",
    "IPAdapterFaceIDPlusImageProjection": "sdxl.models.ip_adapter",
    "MultiIPAdapterImageProjection": "sdxl.models.ip_adapter",
    # schedulers
    "EulerDiscreteScheduler": "sdxl.schedulers.euler",
    "EulerAncestralDiscreteScheduler": "sdxl.schedulers.euler_ancestral",
    "HeunDiscreteScheduler": "sdxl.schedulers.heun",
    "KDPM2DiscreteScheduler": "sdxl.schedulers.kdpm2",
    "KDPM2AncestralDiscreteScheduler": "sdxl.schedulers.kdpm2",
    "LMSDiscreteScheduler": "sdxl.schedulers.lms",
    "DPMSolverSDEScheduler": "sdxl.schedulers.dpm_sde",
    "DPMSolverMultistepScheduler": "sdxl.schedulers.dpm_multistep",
    "DPMSolverSinglestepScheduler": "sdxl.schedulers.dpm_singlestep",
    "DDIMScheduler": "sdxl.schedulers.ddim",
    "DDPMScheduler": "sdxl.schedulers.ddpm",
    "PNDMScheduler": "sdxl.schedulers.pndm",
    "UniPCMultistepScheduler": "sdxl.schedulers.unipc",
    "DEISMultistepScheduler": "sdxl.schedulers.deis",
    "EDMEulerScheduler": "sdxl.schedulers.edm_euler",
    "EDMDPMSolverMultistepScheduler": "sdxl.schedulers.edm_dpm_multistep",
    "LCMScheduler": "sdxl.schedulers.lcm",
    # pipelines
    "DiffusionPipeline": "sdxl.pipelines.base",
    "StableDiffusionXLPipeline": "sdxl.pipelines.text2img",
    "StableDiffusionXLImg2ImgPipeline": "sdxl.pipelines.img2img",
    "StableDiffusionXLInpaintPipeline": "sdxl.pipelines.inpaint",
    "AutoPipelineForText2Image": "sdxl.pipelines.auto",
    "AutoPipelineForImage2Image": "sdxl.pipelines.auto",
    "AutoPipelineForInpainting": "sdxl.pipelines.auto",
    "IPAdapterMixin": "sdxl.pipelines.ip_adapter",
    "IPAdapterMaskProcessor": "sdxl.pipelines.ip_adapter",
    "StableDiffusionMixin": "sdxl.pipelines.sd_mixin",
}

__all__ = [*sorted(_LAZY), "__version__"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'sdxl' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
