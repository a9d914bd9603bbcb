"""A tiny random-weight SDXL checkpoint in the diffusers layout, written with our own code.

It has the full SDXL structure (two CLIP text encoders on the real vocabulary, a UNet with micro-conditioning and
the pooled embedding, an AutoencoderKL with 8x downsampling) at toy width, so the whole pipeline and the `sdxl`
command run on a machine without the real weights. Its images are noise-like: it proves plumbing, not quality.
"""

from __future__ import annotations

from pathlib import Path

# Tiny dimensions; the UNet's pooled-embedding input is addition_time_embed_dim * 6 + text_encoder_2 projection_dim.
_TEXT = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=3, vocab_size=49408,
             max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=1, projection_dim=32,
             layer_norm_eps=1e-5)
_UNET = dict(block_out_channels=[32, 64], layers_per_block=2, sample_size=32, in_channels=4, out_channels=4,
             down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"], up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"],
             attention_head_dim=[2, 4], use_linear_projection=True, addition_embed_type="text_time",
             addition_time_embed_dim=8, transformer_layers_per_block=[1, 2], norm_num_groups=8, cross_attention_dim=64,
             projection_class_embeddings_input_dim=8 * 6 + 32)
# The refiner's UNet: conditioned on text_encoder_2 only (width 32) and on 5 time ids (aesthetic score, no target)
_REFINER_UNET = dict(_UNET, cross_attention_dim=32, projection_class_embeddings_input_dim=8 * 5 + 32)
# Four VAE levels: the SDXL 8x downsampling, so the default image is 32 * 8 = 256 px.
_VAE = dict(block_out_channels=[16, 32, 64, 64], in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=8,
            down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4, sample_size=256,
            layers_per_block=1, scaling_factor=0.13025)


def write_tiny_checkpoint(folder: str | Path, seed: int = 0, refiner: bool = False) -> Path:
    """Write a tiny random-weight SDXL base checkpoint (diffusers layout) to `folder` and return its path.

    With `refiner=True`, a refiner instead: an img2img checkpoint with only the second text encoder and a UNet
    conditioned on the aesthetic score (model_index.json `requires_aesthetics_score`), as SDXL's refiner.
    """
    import torch

    from sdxl.loading.single_file import SDXL_SCHEDULER_CONFIG
    from sdxl.models.clip import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection
    from sdxl.models.unet import UNet2DConditionModel, UNetConfig
    from sdxl.models.vae import AutoencoderKL, VAEConfig
    from sdxl.pipelines.text2img import StableDiffusionXLPipeline
    from sdxl.schedulers.euler import EulerDiscreteScheduler
    from sdxl.tokenizer import CLIPTokenizer

    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise FileExistsError(f"{folder} exists and is not empty; pass a new folder name")
    torch.manual_seed(seed)
    if refiner:
        from sdxl.loading.save import save_pretrained

        components = {
            "vae": AutoencoderKL(VAEConfig.from_dict(_VAE)),
            "text_encoder": None,
            "text_encoder_2": CLIPTextModelWithProjection(CLIPTextConfig.from_dict(dict(_TEXT, hidden_act="gelu"))),
            "tokenizer": None,
            "tokenizer_2": CLIPTokenizer.from_shipped_vocab(pad_token="!"),
            "unet": UNet2DConditionModel(UNetConfig.from_dict(_REFINER_UNET)),
            "scheduler": EulerDiscreteScheduler.from_config(SDXL_SCHEDULER_CONFIG),
        }
        options = {"requires_aesthetics_score": True, "force_zeros_for_empty_prompt": False}
        return save_pretrained(components, folder, class_name="StableDiffusionXLImg2ImgPipeline", options=options)
    pipe = StableDiffusionXLPipeline(
        vae=AutoencoderKL(VAEConfig.from_dict(_VAE)),
        text_encoder=CLIPTextModel(CLIPTextConfig.from_dict(dict(_TEXT, hidden_act="quick_gelu"))),
        text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig.from_dict(dict(_TEXT, hidden_act="gelu"))),
        tokenizer=CLIPTokenizer.from_shipped_vocab(pad_token="<|endoftext|>"),
        tokenizer_2=CLIPTokenizer.from_shipped_vocab(pad_token="!"),
        unet=UNet2DConditionModel(UNetConfig.from_dict(_UNET)),
        scheduler=EulerDiscreteScheduler.from_config(SDXL_SCHEDULER_CONFIG),
        add_watermarker=False,
    )
    pipe.save_pretrained(folder)
    return folder
