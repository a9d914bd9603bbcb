"""Our own SDXL models: UNet, VAE and the two CLIP text encoders (plain PyTorch, config-driven)."""
