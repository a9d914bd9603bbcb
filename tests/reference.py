"""Builders for tiny random SDXL checkpoints made with the reference libraries (test-only).

Every checkpoint is built in the test session and saved under a temporary folder; nothing is committed.
The tokenizers use the real CLIP vocabulary that the package ships, written out as the official hub
layout (vocab.json + merges.txt), so transformers' CLIPTokenizer and ours read the same files.
"""

from __future__ import annotations

import gzip
import json
from importlib import resources
from pathlib import Path

import torch

# Tiny dimensions shared by the fixtures. The UNet's pooled-embedding input is
# addition_time_embed_dim * n_time_ids + projection_dim of text_encoder_2.
TEXT_HIDDEN = 32
TEXT2_HIDDEN = 32
TEXT2_PROJECTION = 32
TIME_EMBED = 8


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable-unicode table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def write_clip_vocab(folder: Path) -> Path:
    """Write vocab.json + merges.txt built from the shipped bpe_simple_vocab_16e6.txt.gz (as open_clip does)."""
    folder.mkdir(parents=True, exist_ok=True)
    raw = resources.files("sdxl").joinpath("data/bpe_simple_vocab_16e6.txt.gz").read_bytes()
    lines = gzip.decompress(raw).decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    base = list(_bytes_to_unicode().values())
    vocab = base + [b + "</w>" for b in base] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return folder


def make_tokenizer(folder: Path, pad_token: str = "<|endoftext|>"):
    """A transformers CLIPTokenizer over the shipped vocabulary (SDXL's second tokenizer pads with "!")."""
    from transformers import CLIPTokenizer

    write_clip_vocab(folder)
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token=pad_token, model_max_length=77)


def text_encoder_config(hidden: int, layers: int, act: str, projection_dim: int = 32, heads: int = 4):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=1,
        hidden_size=hidden,
        intermediate_size=37,
        num_attention_heads=heads,
        num_hidden_layers=layers,
        vocab_size=49408,
        hidden_act=act,
        projection_dim=projection_dim,
        max_position_embeddings=77,
    )


def make_text_encoders(seed: int = 0):
    """(CLIPTextModel quick_gelu, CLIPTextModelWithProjection gelu), eager attention, fp32, eval mode."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    te1 = CLIPTextModel(text_encoder_config(TEXT_HIDDEN, 3, "quick_gelu"))
    te2 = CLIPTextModelWithProjection(text_encoder_config(TEXT2_HIDDEN, 3, "gelu", TEXT2_PROJECTION))
    for m in (te1, te2):
        m.config._attn_implementation = "eager"
        m.eval()
    return te1, te2


def unet_kwargs(kind: str = "base") -> dict:
    """diffusers UNet2DConditionModel kwargs for a tiny base, refiner or 9-channel inpainting UNet."""
    common = dict(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=32,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_EMBED,
        transformer_layers_per_block=(1, 2),
        norm_num_groups=8,
    )
    if kind == "base":
        return dict(common, in_channels=4, cross_attention_dim=TEXT_HIDDEN + TEXT2_HIDDEN,
                    projection_class_embeddings_input_dim=TIME_EMBED * 6 + TEXT2_PROJECTION)
    if kind == "inpaint":
        return dict(common, in_channels=9, cross_attention_dim=TEXT_HIDDEN + TEXT2_HIDDEN,
                    projection_class_embeddings_input_dim=TIME_EMBED * 6 + TEXT2_PROJECTION)
    if kind == "refiner":
        # The refiner reads only text_encoder_2 and has 5 time ids (aesthetic score instead of target size).
        return dict(common, in_channels=4, cross_attention_dim=TEXT2_HIDDEN,
                    projection_class_embeddings_input_dim=TIME_EMBED * 5 + TEXT2_PROJECTION)
    raise ValueError(kind)


def make_unet(kind: str = "base", seed: int = 0):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**unet_kwargs(kind))
    unet.set_default_attn_processor()
    return unet.eval()


def unet_pair(kind: str = "base", seed: int = 0):
    """(diffusers' tiny UNet, ours) with the same weights, both in eval mode."""
    import sdxl

    theirs = make_unet(kind, seed)
    ours = sdxl.UNet2DConditionModel(**unet_kwargs(kind)).eval()
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


def tiny_unet_inputs(batch: int = 2, dtype: torch.dtype = torch.float32, seed: int = 0):
    """Seeded random (sample, timestep, context, added_cond_kwargs) for the tiny base UNet, in `dtype`."""
    g = torch.Generator().manual_seed(seed)
    x, context = torch.randn(batch, 4, 16, 16, generator=g), torch.randn(batch, 7, 64, generator=g)
    added = {"text_embeds": torch.randn(batch, 32, generator=g), "time_ids": torch.rand(batch, 6, generator=g) * 64}
    return x.to(dtype), torch.tensor(321.0), context.to(dtype), {k: v.to(dtype) for k, v in added.items()}


def make_vae(seed: int = 0):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=128,
    )
    vae.set_default_attn_processor()
    return vae.eval()


# SDXL base's scheduler/scheduler_config.json as published (keys of DDIM/PNDM included, as diffusers wrote it).
SDXL_SCHEDULER_JSON = {
    "_class_name": "EulerDiscreteScheduler",
    "_diffusers_version": "0.19.0.dev0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "use_karras_sigmas": False,
}


def make_scheduler():
    """diffusers' EulerDiscreteScheduler from SDXL's own published scheduler config."""
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler.from_config(SDXL_SCHEDULER_JSON)


def make_base_pipeline(folder: Path, seed: int = 0):
    """A tiny diffusers StableDiffusionXLPipeline (random weights), saved to `folder`; returns the pipeline."""
    from diffusers import StableDiffusionXLPipeline

    te1, te2 = make_text_encoders(seed)
    pipe = StableDiffusionXLPipeline(
        vae=make_vae(seed),
        text_encoder=te1,
        text_encoder_2=te2,
        tokenizer=make_tokenizer(folder / "_vocab1"),
        tokenizer_2=make_tokenizer(folder / "_vocab2", pad_token="!"),
        unet=make_unet("base", seed),
        scheduler=make_scheduler(),
        add_watermarker=False,
    )
    pipe.save_pretrained(folder)
    return pipe


def make_refiner_pipeline(folder: Path, seed: int = 0):
    """A tiny diffusers refiner (StableDiffusionXLImg2ImgPipeline without text_encoder/tokenizer), saved to `folder`."""
    from diffusers import StableDiffusionXLImg2ImgPipeline

    _, te2 = make_text_encoders(seed)
    pipe = StableDiffusionXLImg2ImgPipeline(
        vae=make_vae(seed),
        text_encoder=None,
        text_encoder_2=te2,
        tokenizer=None,
        tokenizer_2=make_tokenizer(folder / "_vocab2", pad_token="!"),
        unet=make_unet("refiner", seed),
        scheduler=make_scheduler(),
        requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=False,
        add_watermarker=False,
    )
    pipe.save_pretrained(folder)
    return pipe
