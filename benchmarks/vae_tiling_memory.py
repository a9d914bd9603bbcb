"""Peak CPU memory of a VAE decode, untiled against tiled (`vae.enable_tiling()`), each in its own process.

    python benchmarks/vae_tiling_memory.py --latent 64 --tile 256 --threads 2

The SDXL VAE architecture (random weights, fp32; `--channels` narrows it) decodes a (1, 4, L, L) latent into an
8L x 8L image. Each mode runs in a fresh subprocess that reports its resident-set high-water mark (Linux VmHWM,
the same figure as ru_maxrss) before and after the decode: the difference is the decode's own peak working memory
(activations; the weights and latents are already resident). The tiled image is compared with the untiled one
(tiles differ slightly through GroupNorm statistics and the blended seams). Results go to
benchmarks/results/vae_tiling-cpu.json, one entry per configuration. The recorded runs:

    python benchmarks/vae_tiling_memory.py --latent 64 --tile 256                           # SDXL VAE, 512 px
    python benchmarks/vae_tiling_memory.py --latent 256 --tile 1024 --channels 32,64,128,128  # 2048 px, 1/4 width
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "vae_tiling-cpu.json"


def _hwm_mib() -> tuple[float, float]:
    """(VmHWM, VmRSS) of this process in MiB."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            fields[key] = int(value.split()[0]) / 1024  # kB -> MiB
    return fields["VmHWM"], fields["VmRSS"]


def _reset_hwm() -> bool:
    """Reset the high-water mark to the current RSS (Linux: write 5 to /proc/self/clear_refs); False if refused."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def child(args: argparse.Namespace) -> None:
    """One decode in this process; prints a JSON line with the memory figures."""
    sys.path.insert(0, str(ROOT / "src"))
    import torch

    from sdxl.models.vae import AutoencoderKL, VAEConfig

    torch.set_num_threads(args.threads)
    channels = tuple(int(c) for c in args.channels.split(","))
    config = dataclasses.replace(VAEConfig.sdxl(), block_out_channels=channels)
    torch.manual_seed(0)
    vae = AutoencoderKL(config).eval()
    factor = 2 ** (len(channels) - 1)
    vae.tile_sample_min_size, vae.tile_latent_min_size = args.tile, args.tile // factor
    if args.mode == "tiled":
        vae.enable_tiling()
    z = torch.randn(1, config.latent_channels, args.latent, args.latent, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():  # warm the allocator and the kernels on a small input first
        vae.decode(z[:, :, :8, :8])
    reset = _reset_hwm()
    _, before_rss = _hwm_mib()
    start = time.perf_counter()
    with torch.inference_mode():
        image = vae.decode(z).sample
    seconds = time.perf_counter() - start
    after_hwm, _ = _hwm_mib()
    torch.save(image, args.out)
    print(json.dumps({
        "mode": args.mode,
        "hwm_reset": reset,
        "rss_before_mib": round(before_rss, 1),
        "peak_mib": round(after_hwm, 1),
        # with the mark reset, the peak counts from the pre-decode RSS (else it may be an earlier, larger peak)
        "decode_peak_over_baseline_mib": round(after_hwm - before_rss, 1),
        "seconds": round(seconds, 2),
        "image_shape": list(image.shape),
        "parameters": sum(p.numel() for p in vae.parameters()),
    }))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latent", type=int, default=64, help="latent side L (image side 8L)")
    parser.add_argument("--tile", type=int, default=256, help="tile_sample_min_size in pixels (SDXL default 1024)")
    parser.add_argument("--channels", default="128,256,512,512", help="block_out_channels (SDXL: 128,256,512,512)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--mode", choices=("untiled", "tiled"), help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--no-save", action="store_true", help="print the results only")
    args = parser.parse_args()
    if args.mode:
        child(args)
        return

    import tempfile

    import torch

    runs, images = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("untiled", "tiled"):
            out = str(Path(tmp) / f"{mode}.pt")
            cmd = [sys.executable, __file__, "--mode", mode, "--out", out, "--latent", str(args.latent),
                   "--tile", str(args.tile), "--channels", args.channels, "--threads", str(args.threads)]
            done = subprocess.run(cmd, capture_output=True, text=True, check=True)
            runs[mode] = json.loads(done.stdout.strip().splitlines()[-1])
            images[mode] = torch.load(out)
            print(mode, runs[mode], flush=True)
    a, b = images["untiled"].double(), images["tiled"].double()
    result = {
        "what": "peak CPU memory (VmHWM) of one VAE decode, untiled vs tiled, each in a fresh process",
        "command": "python benchmarks/vae_tiling_memory.py " + " ".join(sys.argv[1:]),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "torch": torch.__version__, "threads": args.threads},
        "vae": {"block_out_channels": [int(c) for c in args.channels.split(",")], "dtype": "float32",
                "weights": "random (seed 0)"},
        "latent": [1, 4, args.latent, args.latent],
        "image_px": args.latent * 2 ** (len(args.channels.split(",")) - 1),
        "tile_sample_min_size": args.tile,
        "runs": runs,
        "decode_peak_ratio_tiled_over_untiled": round(
            runs["tiled"]["decode_peak_over_baseline_mib"] / runs["untiled"]["decode_peak_over_baseline_mib"], 3
        ),
        "tiled_vs_untiled_relative_l2": round(((a - b).norm() / a.norm()).item(), 4),
        "tiled_vs_untiled_max_abs": round((a - b).abs().max().item(), 4),
    }
    print(json.dumps(result, indent=2))
    if not args.no_save:  # one entry per configuration, so several runs share the file
        saved = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
        saved[f"channels={args.channels} latent={args.latent} tile={args.tile}"] = result
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(saved, indent=2) + "\n")
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
