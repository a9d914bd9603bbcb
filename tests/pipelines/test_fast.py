"""`pipe.optimize()`: each switch keeps the images within 2.5/255 of the plain fp32 path on CPU (tiny fixture and the
demo model), takes effect (a test that checks the switch is really on), and undoes; the UNet runner's CUDA-graph logic
(signatures, cache, static buffers, fallbacks) runs here with a stand-in capture; real capture is checked on a GPU."""

from __future__ import annotations

import lora_files
import numpy as np
import pytest
import torch
from pipeline_parity import call, load_ours
from safetensors.torch import save_file

import sdxl
from sdxl.models.attention_processor import FusedAttnProcessor2_0
from sdxl.models.fp8 import is_quantized
from sdxl.models.lora import AdapterWeights, add_adapter
from sdxl.models.sdpa_kernels import AttentionKernels
from sdxl.pipelines.fast import CompileSettings, FastPath
from sdxl.pipelines.unet_runner import UNetRunner

FAST_TOL = 2.5 / 255
# fp8 is not float rounding: its stated bound against the bf16 pipeline on the tiny fixture (64 px, 3 steps).
# Measured over seeds 0-3: max 8.0-9.0/255, mean 1.11-1.18/255 (bf16 itself is 3.1/255 max, 0.57 mean from fp32).
FP8_MAX_DIFF, FP8_MEAN_DIFF = 12 / 255, 2 / 255
STEPS = 3
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def replay_by_rerunning(fn, static):
    """A stand-in for `capture_cuda_graph` on the CPU: the 'graph' re-runs fn on the static buffers into the static
    output, which is what a CUDA graph replay does."""
    out = fn(**static)
    captures.append(static)

    def replay():
        out.copy_(fn(**static))

    return replay, out


captures: list = []


def assert_close(images, baseline, tol=FAST_TOL):
    diff = float(np.abs(images - baseline).max())
    assert diff <= tol, f"max difference {diff * 255:.3f}/255"


@pytest.fixture(scope="module")
def plain(tiny_base):
    return call(load_ours("StableDiffusionXLPipeline", tiny_base[0]), num_inference_steps=STEPS)


@pytest.fixture
def pipe(tiny_base):
    return load_ours("StableDiffusionXLPipeline", tiny_base[0])


SWITCHES = {
    "fuse_projections": {"fuse_projections": True, "channels_last": False, "attention_kernels": False},
    "channels_last": {"fuse_projections": False, "channels_last": True, "attention_kernels": False},
    # a fixed kernel table: on a CPU nothing is tuned, so name one (the CPU's flash kernel) for every shape
    "attention_kernels": {
        "fuse_projections": False, "channels_last": False,
        "attention_kernels": AttentionKernels(default=[torch.nn.attention.SDPBackend.FLASH_ATTENTION]),
    },
    # fullgraph=True: a graph break (the kernel table's sdpa_kernel context included) would raise
    "compile": {
        "compile": CompileSettings(backend="eager"),
        "attention_kernels": AttentionKernels(default=[torch.nn.attention.SDPBackend.MATH]),
    },
    "vae_bfloat16": {"vae_dtype": torch.bfloat16},
    "defaults": {},
}


def _in_effect(pipe, name: str) -> bool:
    unet, vae = pipe.unet, pipe.vae
    checks = {
        "fuse_projections": lambda: isinstance(next(iter(unet.attn_processors.values())), FusedAttnProcessor2_0)
        and unet.down_blocks[1].attentions[0].transformer_blocks[0].attn1.to_qkv is not None,
        "channels_last": lambda: unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
        and not unet.conv_in.weight.is_contiguous(),
        "attention_kernels": lambda: len(pipe._fast.kernels.seen) > 0,
        "compile": lambda: pipe._fast.runner.predict is not unet.predict,
        "vae_bfloat16": lambda: vae.dtype == torch.bfloat16,
        "defaults": lambda: pipe.fast_path.fuse_projections and pipe.fast_path.channels_last,
    }
    return checks[name]()


@pytest.mark.parametrize("name", list(SWITCHES))
def test_each_switch_keeps_the_images(pipe, plain, name):
    torch._dynamo.reset()
    path = pipe.optimize(**SWITCHES[name])
    assert isinstance(path, FastPath) and not path.cuda_graphs  # a CPU pipeline: no graphs by default
    if name == "attention_kernels":
        pipe._fast.kernels.recording = True  # the table is consulted for every attention call
    images = call(pipe, num_inference_steps=STEPS)
    assert _in_effect(pipe, name), name
    assert_close(images, plain)
    pipe.unoptimize()
    assert pipe.fast_path is None
    assert np.array_equal(call(pipe, num_inference_steps=STEPS), plain)  # undone exactly


def test_cuda_graph_logic_with_a_stand_in_capture(pipe, plain):
    """Signatures are captured once and replayed every step (inputs copied into the static buffers, the output
    copied out); a new size captures again; the least recently used graph goes beyond max_graphs."""
    pipe.optimize(max_graphs=2)
    runner = pipe._fast.runner
    runner.cuda_graphs, runner.capture = True, replay_by_rerunning
    captures.clear()
    assert_close(call(pipe, num_inference_steps=STEPS), plain)
    assert len(captures) == 1 and len(runner.graphs) == 1 and runner.plain_calls == 0
    call(pipe, num_inference_steps=2)  # the same signature: replayed, not captured again
    assert len(captures) == 1
    call(pipe, num_inference_steps=2, height=32, width=32)
    call(pipe, num_inference_steps=2, height=48, width=48)
    assert len(captures) == 3 and len(runner.graphs) == 2  # 64 px evicted
    assert_close(call(pipe, num_inference_steps=STEPS), plain)
    assert len(captures) == 4
    static = captures[-1]
    assert static["sample"].is_contiguous(memory_format=torch.channels_last)
    assert static["sample"].shape[0] == 2 and static["timesteps"].dim() == 0  # CFG batch; the step's timestep


def test_runner_falls_back_to_the_plain_unet(pipe, plain, tmp_path):
    pipe.optimize()
    runner = pipe._fast.runner
    runner.cuda_graphs, runner.capture = True, replay_by_rerunning
    call(pipe, cross_attention_kwargs={"scale": 0.5}, num_inference_steps=2)
    assert runner.plain_calls == 2 * 1 and not runner.graphs
    other = sdxl.UNet2DConditionModel(pipe.unet.config).eval()
    assert runner.bind(other) is other and runner.bind(pipe.unet) is runner
    # LoRA adapters (unfused): the loop runs the plain UNet, and the fused projections use the separate ones
    encoders = {"lora_te1": pipe.text_encoder, "lora_te2": pipe.text_encoder_2}
    save_file(lora_files.kohya_lora(pipe.unet, encoders), tmp_path / "lora.safetensors")
    pipe.load_lora_weights(tmp_path / "lora.safetensors")
    assert runner.bind(pipe.unet) is pipe.unet
    with_lora = call(pipe, num_inference_steps=STEPS)
    assert not runner.graphs
    pipe.unoptimize()
    assert_close(with_lora, call(pipe, num_inference_steps=STEPS), tol=1e-5)
    assert np.abs(with_lora - plain).max() > FAST_TOL  # the LoRA did change the image
    pipe.unload_lora_weights()


def test_graphs_and_fused_views_follow_a_move(pipe, plain):
    """A `.to()` after optimize(): the captured graphs read the old weights' addresses, so they are captured again;
    the fused matrices and their views were copied apart, so the projections are fused again (one copy, and an
    in-place change reaches both)."""
    pipe.optimize()
    runner = pipe._fast.runner
    runner.cuda_graphs, runner.capture = True, replay_by_rerunning
    captures.clear()
    call(pipe, num_inference_steps=2)
    assert len(captures) == 1
    attn = pipe.unet.down_blocks[1].attentions[0].transformer_blocks[0].attn1
    pipe.to(torch.float64)
    pipe.to(torch.float32)
    assert attn.to_q.weight.data_ptr() != attn.to_qkv.weight.data_ptr()  # copied apart by the conversions
    assert_close(call(pipe, num_inference_steps=STEPS), plain)
    assert len(captures) == 2  # captured again, not replayed from freed weights
    attn = pipe.unet.down_blocks[1].attentions[0].transformer_blocks[0].attn1
    assert attn.to_q.weight.data_ptr() == attn.to_qkv.weight.data_ptr()  # fused again: views of one matrix
    call(pipe, num_inference_steps=2)
    assert len(captures) == 2  # nothing moved since: replayed


def test_inactive_lora_adapters_keep_the_graphs(pipe, tmp_path):
    """Adapters loaded but switched off (what the server's runner leaves between jobs) change nothing a graph reads."""
    pipe.optimize()
    runner = pipe._fast.runner
    save_file(lora_files.kohya_lora(pipe.unet, {}), tmp_path / "lora.safetensors")
    pipe.load_lora_weights(tmp_path / "lora.safetensors", adapter_name="style")
    assert runner.bind(pipe.unet) is pipe.unet  # active: the plain UNet
    pipe.disable_lora()
    assert runner.bind(pipe.unet) is runner
    pipe.enable_lora()
    assert runner.bind(pipe.unet) is pipe.unet
    pipe.set_adapters([], [])  # loaded, none active
    assert runner.bind(pipe.unet) is runner
    pipe.unload_lora_weights()


def test_unoptimize_from_a_pipeline_made_by_from_pipe(pipe, plain):
    """Either pipeline undoes the shared fast path on the shared models, and neither uses it afterwards."""
    pipe.optimize()
    img2img = sdxl.StableDiffusionXLImg2ImgPipeline.from_pipe(pipe)
    img2img.unoptimize()
    assert pipe.fast_path is None and img2img.fast_path is None
    assert pipe.unet.original_attn_processors is None  # unfused, though `pipe` fused it
    attn = pipe.unet.down_blocks[1].attentions[0].transformer_blocks[0].attn1
    assert not attn.fused_projections and attn.to_qkv is None
    assert np.array_equal(call(pipe, num_inference_steps=STEPS), plain)
    pipe.unoptimize()  # nothing left to undo
    assert pipe.optimize().fuse_projections  # and it can be turned on again


def test_unoptimize_keeps_a_dtype_chosen_since(pipe):
    """optimize() on a float16 pipeline decodes in bfloat16; a `.to(float32)` since then is the user's choice, which
    unoptimize() keeps (weights back from before optimize(), in float32)."""
    pipe.to(torch.float16)
    assert pipe.optimize().vae_dtype == torch.bfloat16
    pipe.to(torch.float32)
    pipe.unoptimize()
    assert pipe.vae.dtype == torch.float32 and pipe.unet.dtype == torch.float32


def test_lora_into_an_fp8_unet_is_refused_before_anything_changes(tiny_base, tmp_path):
    pipe = load_ours("StableDiffusionXLPipeline", tiny_base[0])
    save_file(lora_files.kohya_lora(pipe.unet, {}), tmp_path / "lora.safetensors")
    pipe.optimize(fp8=True)
    with pytest.raises(ValueError, match="holds fp8 layers.*before optimize\\(fp8=True\\).*fuse_lora"):
        pipe.load_lora_weights(tmp_path / "lora.safetensors")
    assert pipe.get_list_adapters() == {}
    assert not any(type(m).__name__.startswith("Lora") for m in pipe.unet.modules())


def test_from_pipe_keeps_the_fast_path(pipe):
    pipe.optimize()
    img2img = sdxl.StableDiffusionXLImg2ImgPipeline.from_pipe(pipe)
    assert img2img._fast is pipe._fast and img2img.fast_path.fuse_projections


def test_errors_say_what_to_do(pipe):
    with pytest.raises(ValueError, match="needs the pipeline on a CUDA GPU.*pipe.to\\('cuda'\\)"):
        pipe.optimize(cuda_graphs=True)
    with pytest.raises(TypeError, match="compile must be True, False or a CompileSettings"):
        pipe.optimize(compile="max-autotune")
    with pytest.raises(ValueError, match="vae_dtype must be 'auto', None or one of"):
        pipe.optimize(vae_dtype=torch.int8)
    with pytest.raises(ValueError, match="backend 'eager' takes none"):
        pipe.optimize(compile=CompileSettings(backend="eager", mode="max-autotune"))
    with pytest.raises(ValueError, match="optimize\\(\\) needs the pipeline's unet"):
        sdxl.StableDiffusionXLPipeline(**{**pipe.components, "unet": None}).optimize()
    with pytest.raises(ValueError, match="max_graphs must be at least 1"):
        UNetRunner(pipe.unet, max_graphs=0)
    assert pipe.fast_path is None and pipe.unet.original_attn_processors is None  # checked before anything changed
    pipe._enable_model_offload("cpu")  # offload hooks (any device here): graphs are refused, not silently on
    with pytest.raises(ValueError, match="cuda_graphs=True with CPU offload"):
        pipe.optimize(cuda_graphs=True)


def test_vae_float16_decodes_without_the_upcast(pipe):
    """vae_dtype=float16 clears force_upcast (the NaN guard redoes an overflowing decode in float32); unoptimize puts
    the config back."""
    pipe.vae.config = type(pipe.vae.config)(**{**pipe.vae.config.__dict__, "force_upcast": True})
    pipe.to(torch.float16)
    path = pipe.optimize(vae_dtype=torch.float16)
    assert path.vae_dtype == torch.float16 and pipe.vae.config.force_upcast is False
    assert pipe.optimize().vae_dtype == torch.bfloat16  # "auto" for a float16 VAE
    pipe.unoptimize()
    assert pipe.vae.config.force_upcast is True and pipe.vae.dtype == torch.float16


def test_demo_model_keeps_its_images():
    """The shipped demo model (128 px, 20 steps, two prompts): the defaults and the bfloat16 VAE decode."""
    prompts = ["a red circle on a blue background", "a large yellow star on a purple background"]

    def run(pipe):
        gens = [torch.Generator().manual_seed(i) for i in range(2)]
        return pipe(prompts, num_inference_steps=20, output_type="np", generator=gens).images

    pipe = sdxl.StableDiffusionXLPipeline.from_pretrained("demo", torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    plain = run(pipe)
    pipe.optimize()
    assert_close(run(pipe), plain)
    pipe.optimize(vae_dtype=torch.bfloat16)
    assert_close(run(pipe), plain)


def test_fp8_pipeline_within_the_stated_bound(tiny_base):
    bf16 = load_ours("StableDiffusionXLPipeline", tiny_base[0]).to(torch.bfloat16)
    reference = call(bf16, num_inference_steps=3)
    bf16.optimize(fp8=True)
    assert bf16.fast_path.fp8
    images = call(bf16, num_inference_steps=3)
    diff = np.abs(images - reference)
    assert diff.max() <= FP8_MAX_DIFF and diff.mean() <= FP8_MEAN_DIFF, (diff.max() * 255, diff.mean() * 255)
    assert diff.max() > 0  # fp8 did run
    bf16.unoptimize()
    assert is_quantized(bf16.unet)  # one-way
    # LoRA on an fp8 UNet: refused with what to do
    fresh = load_ours("StableDiffusionXLPipeline", tiny_base[0])
    layer = fresh.unet.down_blocks[1].attentions[0].transformer_blocks[0].attn1.to_q
    add_adapter(layer, "a", AdapterWeights("lora", {"down": torch.zeros(2, 64), "up": torch.zeros(64, 2)}))
    with pytest.raises(ValueError, match="fuse_lora\\(\\) then .*unload_lora_weights"):
        fresh.optimize(fp8=True)


@needs_cuda
def test_cuda_graphs_on_a_gpu(tiny_base):
    """Real capture and replay (and tuned kernels) on a CUDA GPU: the image of the eager fp32 pipeline."""
    pipe = load_ours("StableDiffusionXLPipeline", tiny_base[0]).to("cuda")
    eager = call(pipe, num_inference_steps=STEPS)
    path = pipe.optimize()
    assert path.cuda_graphs
    assert_close(call(pipe, num_inference_steps=STEPS), eager)
    assert len(pipe._fast.runner.graphs) == 1 and pipe._fast.kernels.choices
    assert_close(call(pipe, num_inference_steps=STEPS), eager)  # replayed
