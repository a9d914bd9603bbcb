"""Tiny SDXL-architecture configs for the demo model (the shapes, not the weights).

Same structure as SDXL: two CLIP text encoders on the real 49,408-token vocabulary (CLIP-L-like without projection,
OpenCLIP-G-like with projection), a base UNet with DownBlock2D then CrossAttnDownBlock2D levels and "text_time"
micro-conditioning (6 time ids + pooled embedding), a refiner UNet with 4 levels, text_encoder_2 context only and
5 time ids (aesthetic score), and a 4-level AutoencoderKL (8x downsampling). Widths are toy-sized so the whole
thing trains on a 2-core CPU in under an hour and ships in a few MB.
"""

from __future__ import annotations

from sdxl.models.clip import CLIPTextConfig
from sdxl.models.unet import UNetConfig
from sdxl.models.vae import VAEConfig

IMAGE_SIZE = 128  # training resolution in pixels; the pipelines' default size (unet sample_size * 8)
LATENT_SIZE = IMAGE_SIZE // 8
TEXT_WIDTH = 32
ADD_TIME_DIM = 16


def text_encoder_config() -> CLIPTextConfig:
    """CLIP-L-like: quick_gelu, no projection; the pipeline reads its penultimate layer."""
    return CLIPTextConfig(
        hidden_size=TEXT_WIDTH, intermediate_size=4 * TEXT_WIDTH, projection_dim=TEXT_WIDTH, num_hidden_layers=3,
        num_attention_heads=2, hidden_act="quick_gelu", bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
    )  # fmt: skip


def text_encoder_2_config() -> CLIPTextConfig:
    """OpenCLIP-G-like: gelu, with a projection whose pooled output feeds the UNet's added embedding."""
    return CLIPTextConfig(
        hidden_size=TEXT_WIDTH, intermediate_size=4 * TEXT_WIDTH, projection_dim=TEXT_WIDTH, num_hidden_layers=3,
        num_attention_heads=2, hidden_act="gelu", bos_token_id=49406, eos_token_id=49407, pad_token_id=0,
    )  # fmt: skip


def unet_config() -> UNetConfig:
    """The base UNet: SDXL's 3-level layout (DownBlock2D, CrossAttnDownBlock2D x2), 6 time ids + pooled text."""
    return UNetConfig(
        sample_size=LATENT_SIZE,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64, 96),
        layers_per_block=2,
        cross_attention_dim=2 * TEXT_WIDTH,  # both encoders' penultimate states, concatenated
        transformer_layers_per_block=1,
        attention_head_dim=(1, 2, 4),
        use_linear_projection=True,
        norm_num_groups=8,
        addition_embed_type="text_time",
        addition_time_embed_dim=ADD_TIME_DIM,
        projection_class_embeddings_input_dim=6 * ADD_TIME_DIM + TEXT_WIDTH,
    )


def refiner_unet_config() -> UNetConfig:
    """The refiner UNet: SDXL refiner's 4-level layout, text_encoder_2 context only, 5 time ids (aesthetic score)."""
    return UNetConfig(
        sample_size=LATENT_SIZE,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 48, 48, 48),
        layers_per_block=2,
        cross_attention_dim=TEXT_WIDTH,
        transformer_layers_per_block=1,
        attention_head_dim=(1, 2, 2, 2),
        use_linear_projection=True,
        norm_num_groups=8,
        addition_embed_type="text_time",
        addition_time_embed_dim=ADD_TIME_DIM,
        projection_class_embeddings_input_dim=5 * ADD_TIME_DIM + TEXT_WIDTH,
    )


def vae_config(scaling_factor: float = 1.0) -> VAEConfig:
    """4 levels: SDXL's 8x downsampling; `scaling_factor` is measured on the training latents after VAE training."""
    return VAEConfig(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(16, 32, 32, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,  # >= 4 channels per group: a flat colour must survive the normalisations
        sample_size=IMAGE_SIZE,
        scaling_factor=scaling_factor,
        force_upcast=False,
    )
