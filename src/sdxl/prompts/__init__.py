"""Prompt encoding (two CLIP encoders, pooled vector) and SDXL micro-conditioning time ids."""
