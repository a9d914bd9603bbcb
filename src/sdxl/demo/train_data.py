"""What the demo model's training stages draw from: caption tokens, the two training-time corruptions (caption dropout
and the synthetic aesthetic score's pixel noise) and the batches of a stage's data stream (optionally rendered by
worker processes). The stream is a pure function of (seed, stage, step); the corruptions draw only from the generator
they are given."""

from __future__ import annotations

import torch

from sdxl.demo import configs, shapes


class Tokens:
    """Caption -> (ids for tokenizer, ids for tokenizer_2), cached (the captions come from a finite set)."""

    def __init__(self):
        from sdxl.tokenizer import CLIPTokenizer

        self.tokenizer = CLIPTokenizer.from_shipped_vocab(pad_token="<|endoftext|>")
        self.tokenizer_2 = CLIPTokenizer.from_shipped_vocab(pad_token="!")
        self.cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        for c in captions:
            if c not in self.cache:
                kw = {"padding": "max_length", "max_length": 77, "truncation": True, "return_tensors": "pt"}
                self.cache[c] = (self.tokenizer(c, **kw).input_ids[0], self.tokenizer_2(c, **kw).input_ids[0])
        return (torch.stack([self.cache[c][0] for c in captions]), torch.stack([self.cache[c][1] for c in captions]))


def drop_captions(context: torch.Tensor, pooled: torch.Tensor, p: float, generator: torch.Generator):
    """Zero the text conditioning of a random fraction p of the batch: the pipelines' negative conditioning with
    force_zeros_for_empty_prompt, so classifier-free guidance has an unconditional model to push away from."""
    keep = (torch.rand(context.shape[0], generator=generator) >= p).float().to(context.device)
    return context * keep[:, None, None], pooled * keep[:, None]


def degrade(images: torch.Tensor, generator: torch.Generator, max_noise: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The synthetic aesthetic score: half the images are clean (score 6, the pipelines' default), the others get
    pixel noise of std max_noise * d for d ~ U(0, 1) and score 6 - 5 d (2.5, the default negative, is d = 0.7)."""
    b = images.shape[0]
    d = torch.rand(b, generator=generator) * (torch.rand(b, generator=generator) < 0.5)
    noise = torch.randn(images.shape, generator=generator) * (max_noise * d)[:, None, None, None]
    return (images + noise.to(images.device)).clamp(-1, 1), 6.0 - 5.0 * d


class Stream:
    """Batches of stage `stage`'s data stream, optionally rendered by worker processes (same data either way)."""

    def __init__(self, seed: int, stage: int, batch: int, steps: int, workers: int):
        self.args = (seed * 1000 + stage, batch)
        self.steps, self.workers = steps, workers
        self.triples = shapes.training_triples()

    def batch(self, step: int) -> tuple[torch.Tensor, list[str], torch.Tensor]:
        seed, b = self.args
        return shapes.make_batch(seed, step * b, b, configs.IMAGE_SIZE, self.triples)

    def __iter__(self):
        if self.workers == 0:
            return (self.batch(i) for i in range(self.steps))
        loader = torch.utils.data.DataLoader(
            _Steps(self), batch_size=None, num_workers=self.workers, worker_init_fn=_one_thread, prefetch_factor=4
        )
        return iter(loader)


def _one_thread(_: int) -> None:
    torch.set_num_threads(1)  # workers render with numpy; torch threads in each would oversubscribe the cores


class _Steps(torch.utils.data.Dataset):
    def __init__(self, stream: Stream):
        self.stream = stream

    def __len__(self) -> int:
        return self.stream.steps

    def __getitem__(self, i: int):
        return self.stream.batch(i)
