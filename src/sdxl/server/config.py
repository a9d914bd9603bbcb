"""The server's settings: where it listens, what it may load, where it keeps its data, and its limits."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Limits:
    """Bounds every request is checked against (a 4xx names the bound that was crossed)."""

    max_width: int = 2048
    max_height: int = 2048
    max_steps: int = 150
    max_batch: int = 8
    max_body_bytes: int = 64 * 1024 * 1024
    max_image_pixels: int = 4096 * 4096  # input images (init image, mask)
    max_queue: int = 100  # jobs waiting (queued) at once
    max_prompt_chars: int = 20_000


@dataclass(frozen=True)
class ServerConfig:
    """Everything `sdxl serve` is started with."""

    model: str = "demo"
    models_dir: Path | None = None
    lora_dir: Path | None = None
    data_dir: Path = Path("sdxl-data")
    host: str = "127.0.0.1"
    port: int = 7860
    token: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    preview_every: int = 2  # a live preview every N denoising steps (0: none)
    preload: bool = True  # load the model when the server starts, not with the first job
    batch_jobs: bool = True  # run compatible text-to-image jobs queued together as one batch (up to max_batch images)
    fast: bool = False  # pipe.optimize() on every model loaded (`--fast`)
    limits: Limits = field(default_factory=Limits)

    def check(self) -> None:
        """Refuse settings that would be unsafe or cannot work (ValueError saying what to change)."""
        if not is_loopback(self.host) and not self.token:
            raise ValueError(
                f"--host {self.host} is not a loopback address: anyone who can reach it could use the server. "
                "Pass --token SECRET (clients send `Authorization: Bearer SECRET` or HTTP Basic with that password), "
                "or keep the default --host 127.0.0.1."
            )
        if self.token is not None and len(self.token) < 8:
            raise ValueError("--token must be at least 8 characters long")
        if not 0 < self.port < 65536:
            raise ValueError(f"--port must be between 1 and 65535 (got {self.port})")
        if self.preview_every < 0:
            raise ValueError(f"--preview-every must be 0 (off) or more steps (got {self.preview_every})")
        for flag, folder in (("--models-dir", self.models_dir), ("--lora-dir", self.lora_dir)):
            if folder is not None and not Path(folder).is_dir():
                raise ValueError(f"{flag} {folder} is not a folder")


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and "localhost" only: those are reachable from this machine alone."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
