"""Several text-to-image requests as one pipeline call: what the server's worker does with jobs that arrive together.

Requests batch together when everything that shapes the call is the same (model, size, steps, sampler, prompt
options, whether they have a negative prompt or a second prompt, whether guidance is on); each keeps its own prompt,
negative prompt, seed, CFG scale and image count. Each image comes out as it would alone: one CPU generator per
image draws the same noise, and the pipeline guides each image with its own scale by the same operations. Prompts
that could need more than one 77-token window (over 75 UTF-8 bytes) never batch, because the windows of one prompt
would change the context length of the others.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from sdxl.generation import (
    TEXT2IMG,
    GeneratedImage,
    Progress,
    StepCallback,
    check_images,
    check_params,
    resolve_seed,
)
from sdxl.params import GenerationParams, find_schedule
from sdxl.runner import Runner

ONE_WINDOW_BYTES = 75  # 77 tokens minus BOS and EOS; every token covers at least one byte


def batch_key(params: GenerationParams) -> str | None:
    """What must be equal for requests to share a call (a string), or None when this one must run alone (a refiner,
    a long prompt)."""
    texts = (params.prompt, params.negative_prompt, params.prompt_2 or "")
    if params.refiner or any(len(t.encode("utf-8")) > ONE_WINDOW_BYTES for t in texts):
        return None
    if params.hires_scale is not None or params.subseed_strength:  # a second pass / own initial noise: alone
        return None
    if params.loras or (params.prompt_syntax == "a1111" and any("<lora:" in t for t in texts)):  # LoRAs: alone
        return None
    return json.dumps([
        params.model, params.width, params.height, params.steps, params.sampler, params.prompt_syntax,
        params.long_prompts, bool(params.negative_prompt), bool(params.prompt_2), params.guidance_scale > 1,
        find_schedule(params.schedule).name,
    ])


def run_batch(
    runner: Runner, requests: Sequence[GenerationParams], *, on_step: StepCallback | None = None
) -> list[list[GeneratedImage]]:
    """Run text-to-image `requests` that share a batch key as one call; each request's images, in order."""
    import torch

    first = requests[0]
    key = batch_key(first)
    for params in requests:
        check_params(params, TEXT2IMG)
        if key is None or batch_key(params) != key:
            raise ValueError("these requests cannot share a call (model, size, steps, sampler or prompt options "
                             "differ, or one needs a refiner or long prompts); run them one by one")
    if len(requests) == 1:
        return [runner.run(first, on_step=on_step)]
    seeds = [resolve_seed(p.seed) for p in requests]
    pipe = runner.task_pipe(runner.load(first.model), TEXT2IMG)
    sampler = runner.set_sampler(pipe, first.sampler, first.schedule)
    runner.apply_loras(pipe, first)  # none: a LoRA job before this batch must not stay active
    schedule = find_schedule(first.schedule)
    schedule = None if schedule.name == "automatic" else schedule.label
    # one row per image: (request index, its params, its seed)
    rows = [(n, p, seed + i) for n, (p, seed) in enumerate(zip(requests, seeds)) for i in range(p.batch_size)]
    call: dict[str, Any] = dict(
        prompt=[p.prompt for _, p, _ in rows],
        prompt_2=[p.prompt_2 for _, p, _ in rows] if first.prompt_2 else None,
        negative_prompt=[p.negative_prompt for _, p, _ in rows] if first.negative_prompt else None,
        guidance_scale=[p.guidance_scale for _, p, _ in rows],
        generator=[torch.Generator("cpu").manual_seed(seed) for _, _, seed in rows],
        num_inference_steps=first.steps,
        num_images_per_prompt=1,
        width=first.width,
        height=first.height,
        prompt_syntax=first.prompt_syntax,
        long_prompts=first.long_prompts,
    )
    progress = Progress(on_step)
    images = pipe(**call, callback_on_step_end=progress.callback("base")).images
    check_images(images)
    out: list[list[GeneratedImage]] = [[] for _ in requests]
    for image, (n, params, seed) in zip(images, rows):
        used = replace(params, seed=seed, sampler=sampler, schedule=schedule, width=image.width, height=image.height,
                       batch_size=1)
        out[n].append(GeneratedImage(image, used))
    return out
