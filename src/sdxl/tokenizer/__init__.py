"""CLIP's BPE tokenizer with transformers' `CLIPTokenizer` surface (clip.py), and its files (files.py)."""

from sdxl.tokenizer.clip import BatchEncoding, CLIPTokenizer

__all__ = ["BatchEncoding", "CLIPTokenizer"]
