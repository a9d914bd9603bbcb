"""Noise schedulers with diffusers' class names and API, written as pure tensor math."""
