"""`pipe.unet = torch.compile(pipe.unet, fullgraph=True)` (the seed's recipe; "reduce-overhead" needs CUDA and is
checked on a GPU): our UNet traces without graph breaks in the pipeline's own call form, and the compiled pipeline
draws the same image. The eager/aot_eager backends check tracing without inductor's compile time."""

from __future__ import annotations

import pytest
import torch
from pipeline_parity import assert_images_match, call

from sdxl.pipelines.text2img import StableDiffusionXLPipeline


@pytest.fixture
def fresh(tiny_base):
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_base[0], torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_compiled_unet_in_the_pipeline(fresh, ours, backend):
    torch._dynamo.reset()
    fresh.unet = torch.compile(fresh.unet, fullgraph=True, backend=backend)  # a graph break raises
    images = call(fresh, num_inference_steps=3)
    assert_images_match(images, call(ours, num_inference_steps=3))
    # the pipeline still reads the UNet's config, dtype and device through the compiled wrapper
    assert fresh.dtype == torch.float32 and fresh.device == torch.device("cpu")


def test_no_graph_breaks_and_one_graph_for_all_steps(fresh):
    """dynamo's explain on the loop's call form: one graph, no breaks; new timestep values do not recompile."""
    torch._dynamo.reset()
    captured = {}

    def capture(module, args, kwargs):
        captured.setdefault("call", (args, kwargs))

    handle = fresh.unet.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        call(fresh, num_inference_steps=1)
    finally:
        handle.remove()
    args, kwargs = captured["call"]
    explanation = torch._dynamo.explain(fresh.unet)(*args, **kwargs)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1

    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    compiled = torch.compile(fresh.unet, fullgraph=True, backend=counting_backend)
    t0 = args[1]
    with torch.no_grad():
        for t in (999.0, 500.0, 1.0):
            compiled(args[0], torch.full_like(t0, t), *args[2:], **kwargs)
    assert len(graphs) == 1, f"{len(graphs)} graphs compiled for 3 timestep values"
