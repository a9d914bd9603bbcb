"""Pipelines with diffusers' names, arguments and outputs, over one shared denoising loop."""
