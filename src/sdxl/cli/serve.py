"""`sdxl serve`: the HTTP server (native job API, AUTOMATIC1111-compatible API, web page)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from sdxl.cli.common import DTYPES, UsageError


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register `serve`."""
    serve = sub.add_parser(
        "serve",
        help="run the HTTP server: job API, A1111-compatible API and a web page",
        description="Serve SDXL over HTTP on 127.0.0.1:7860: a native async job API (/v1, docs at /docs), an "
        "AUTOMATIC1111-compatible API (/sdapi/v1) and a web page (/). Jobs, their history and images persist in "
        "--data (SQLite and PNG files). Needs the server extra: pip install -e '.[server]'.",
    )
    serve.add_argument("--model", "-m", default="demo",
                       help="the model to serve by default: demo, a folder, a .safetensors file or a cached hub id "
                       "(default: demo)")
    serve.add_argument("--models-dir", default=None,
                       help="a folder of checkpoints clients may choose by name (diffusers folders, .safetensors)")
    serve.add_argument("--lora-dir", default=None,
                       help="a folder of LoRA .safetensors files clients may apply by name (<lora:NAME:WEIGHT>)")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default 127.0.0.1; any other needs --token)")
    serve.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    serve.add_argument("--data", default="sdxl-data", help="folder for the job database and images (default "
                       "./sdxl-data)")
    serve.add_argument("--token", default=os.environ.get("SDXL_TOKEN"),
                       help="require this token (Bearer, or HTTP Basic password); default $SDXL_TOKEN")
    serve.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, mps (default: auto)")
    serve.add_argument("--dtype", choices=DTYPES, default="auto", help="auto = float16 on GPU, float32 on CPU")
    serve.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's own)")
    serve.add_argument("--preview-every", type=int, default=2, help="a live preview every N steps (0: none)")
    serve.add_argument("--max-size", type=int, default=2048, help="largest width or height a job may ask for")
    serve.add_argument("--max-steps", type=int, default=150, help="most denoising steps a job may ask for")
    serve.add_argument("--max-batch", type=int, default=8, help="most images in one job")
    serve.add_argument("--max-queue", type=int, default=100, help="most jobs waiting at once")
    serve.add_argument("--batch", action=argparse.BooleanOptionalAction, default=True,
                       help="run text-to-image jobs queued together with the same model, size, steps and sampler as "
                       "one batch of up to --max-batch images (default: on)")
    serve.add_argument("--fast", action="store_true",
                       help="the fast path on every model loaded (pipe.optimize(), as `sdxl generate --fast`)")
    serve.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))


def config_from_args(args: argparse.Namespace):
    """The ServerConfig of the command line (checked: unsafe or impossible settings are a UsageError)."""
    from sdxl.loading.hub import DEMO_MODELS, looks_like_hub_id
    from sdxl.server.config import Limits, ServerConfig

    if args.model not in DEMO_MODELS and not Path(args.model).exists() and not looks_like_hub_id(args.model):
        raise UsageError(f"--model {args.model!r} is not a demo alias, a local folder or file, or a hub id")
    config = ServerConfig(
        model=args.model,
        models_dir=Path(args.models_dir) if args.models_dir else None,
        lora_dir=Path(args.lora_dir) if args.lora_dir else None,
        data_dir=Path(args.data),
        host=args.host,
        port=args.port,
        token=args.token or None,
        device=args.device,
        dtype=args.dtype,
        preview_every=args.preview_every,
        batch_jobs=args.batch,
        fast=args.fast,
        limits=Limits(max_width=args.max_size, max_height=args.max_size, max_steps=args.max_steps,
                      max_batch=args.max_batch, max_queue=args.max_queue),
    )
    try:
        config.check()
    except ValueError as err:
        raise UsageError(str(err)) from None
    return config


def run(args: argparse.Namespace) -> int:
    """Start the server and serve until interrupted."""
    config = config_from_args(args)
    try:
        import uvicorn

        from sdxl.server.app import create_app
        from sdxl.server.service import Service
    except ImportError as err:
        raise UsageError(f"the server needs its extra dependencies ({err.name} is missing): "
                         "pip install -e '.[server]'") from None
    if args.threads is not None:
        import torch

        if args.threads < 1:
            raise UsageError(f"--threads must be at least 1 (got {args.threads})")
        torch.set_num_threads(args.threads)
    service = Service(config)
    if service.requeued or service.failed_on_start:
        print(f"sdxl: queued again after a restart: {len(service.requeued)} job(s); failed after repeated "
              f"restarts: {len(service.failed_on_start)}")
    print(f"sdxl: serving {config.model!r} on http://{config.host}:{config.port} (API docs: /docs, data: "
          f"{config.data_dir})", flush=True)
    uvicorn.run(create_app(service), host=config.host, port=config.port, log_level=args.log_level)
    return 0
