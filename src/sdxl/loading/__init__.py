"""Loading weights and configs: the diffusers folder layout, hub ids, safetensors files."""
