"""Servers for the tests: in-process (a uvicorn thread on a Service we can reach into) or a real `sdxl serve`
subprocess (to kill and restart). Both listen on 127.0.0.1 only, on a free port, and are always stopped."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

STARTUP_SECONDS = 60


@dataclass
class RunningServer:
    """A started server: its base URL and, in-process, its Service."""

    url: str
    service: object = None
    process: subprocess.Popen | None = None

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=120, **kwargs)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url: str, process: subprocess.Popen | None = None, headers: dict | None = None) -> None:
    """Poll GET /v1/capabilities until it answers (bounded)."""
    deadline = time.time() + STARTUP_SECONDS
    while time.time() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}: {process.stdout.read()}")
        try:
            if httpx.get(f"{url}/v1/capabilities", timeout=2, headers=headers).status_code in (200, 401):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the server at {url} did not come up within {STARTUP_SECONDS} s")


@pytest.fixture(scope="session")
def start_server(tmp_path_factory):
    """start_server(**config overrides, runner=None) -> RunningServer, in this process (uvicorn in a thread); each
    call gets a fresh data folder. Servers stop at the end of the session."""
    import uvicorn

    from sdxl.server.app import create_app
    from sdxl.server.config import ServerConfig
    from sdxl.server.service import Service

    started = []

    def start(runner=None, limits=None, **overrides) -> RunningServer:
        config = ServerConfig(model="demo", data_dir=tmp_path_factory.mktemp("server-data"), device="cpu",
                              dtype="float32", **overrides)
        if limits is not None:
            config = replace(config, limits=limits)
        service = Service(config, runner=runner)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(create_app(service), log_level="warning", lifespan="on"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        url = f"http://127.0.0.1:{port}"
        headers = {"Authorization": f"Bearer {config.token}"} if config.token else None
        wait_until_up(url, headers=headers)
        started.append((server, thread, sock))
        return RunningServer(url, service=service)

    yield start
    for server, thread, sock in started:
        server.should_exit = True
        thread.join(30)
        sock.close()


def serve_command(data: Path, port: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "sdxl.cli", "serve", "--model", "demo", "--data", str(data), "--port", str(port),
            "--device", "cpu", "--threads", "1", "--log-level", "warning", *extra]


@pytest.fixture(scope="session")
def demo_server(start_server) -> RunningServer:
    """One in-process server on the demo model shared by the tests that do not need an empty queue."""
    return start_server()


@contextmanager
def spawned_servers():
    """Yields spawn(data_dir, *extra flags) -> RunningServer of a real `sdxl serve` process; all killed at the end."""
    processes = []

    def spawn(data: Path, *extra: str, port: int | None = None) -> RunningServer:
        port = port or free_port()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        process = subprocess.Popen(serve_command(data, port, *extra), stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, env=env)
        processes.append(process)
        url = f"http://127.0.0.1:{port}"
        wait_until_up(url, process)
        return RunningServer(url, process=process)

    try:
        yield spawn
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
            process.wait(30)


@pytest.fixture
def spawn_server():
    """spawn_server(data_dir, *extra flags) -> RunningServer of a real `sdxl serve` process (killed at the end)."""
    with spawned_servers() as spawn:
        yield spawn


@pytest.fixture(scope="module")
def spawn_module_server():
    """spawn_server for servers a whole test module shares (killed after the module)."""
    with spawned_servers() as spawn:
        yield spawn


# ---- the web page's browser tests (test_page*.py; page_helpers.py skips them without Chromium) ----------------------


@pytest.fixture(scope="module")
def playwright():
    """Playwright's driver, one per browser-test module."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        yield pw


@pytest.fixture(scope="module")
def context(playwright, tmp_path_factory):
    """Debian's Chromium with a fresh profile, one per browser-test module."""
    from page_helpers import browser

    with browser(playwright, tmp_path_factory.mktemp("chromium-profile")) as ctx:
        yield ctx


@pytest.fixture
def page(context, server):
    """The page served by the requesting module's own `server` fixture, loaded and checked for script errors."""
    from page_helpers import open_page

    with open_page(context, server.url + "/") as p:
        yield p
