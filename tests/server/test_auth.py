"""Binding and authentication: loopback by default, a token required anywhere else, Bearer or HTTP Basic."""

from __future__ import annotations

import base64
import subprocess
import sys
from urllib.parse import urlparse

import httpx
import pytest

from sdxl.server.config import ServerConfig, is_loopback

TOKEN = "s3cret-token-123"


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.5", "::1", "localhost"])
def test_loopback_addresses(host):
    assert is_loopback(host)
    ServerConfig(host=host).check()


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "::", "example.com"])
def test_other_addresses_need_a_token(host):
    with pytest.raises(ValueError, match="not a loopback address.*--token"):
        ServerConfig(host=host).check()
    ServerConfig(host=host, token=TOKEN).check()


def test_short_tokens_are_refused():
    with pytest.raises(ValueError, match="at least 8 characters"):
        ServerConfig(token="abc").check()


def test_the_command_refuses_to_listen_off_loopback_without_a_token(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "sdxl.cli", "serve", "--host", "0.0.0.0", "--data", str(tmp_path)],
        capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert result.returncode == 2
    assert "not a loopback address" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "jobs.sqlite3").exists()


def test_requests_need_the_token(start_server):
    server = start_server(token=TOKEN)
    with httpx.Client(base_url=server.url, timeout=60) as client:
        refused = client.get("/v1/capabilities")
        assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Basic")
        assert client.get("/", follow_redirects=False).status_code == 401
        assert client.get("/v1/capabilities", headers={"Authorization": "Bearer wrong-token"}).status_code == 401
        assert client.get("/v1/capabilities", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        basic = base64.b64encode(f"anyone:{TOKEN}".encode()).decode()
        assert client.get("/v1/capabilities", headers={"Authorization": f"Basic {basic}"}).status_code == 200
        assert client.get("/v1/capabilities", headers={"Authorization": "Basic !!!"}).status_code == 401
        flags = client.get("/sdapi/v1/cmd-flags", headers={"Authorization": f"Bearer {TOKEN}"})
        assert flags.status_code == 200 and TOKEN not in flags.text and flags.json()["api_auth"] == "<set>"


def test_real_clients_authenticate_with_basic(start_server):
    webuiapi = pytest.importorskip("webuiapi")
    aaa1111 = pytest.importorskip("aaa1111")
    server = start_server(token=TOKEN)
    parsed = urlparse(server.url)
    api = webuiapi.WebUIApi(host=parsed.hostname, port=parsed.port, steps=2)
    api.set_auth("user", TOKEN)
    result = api.txt2img(prompt="a red circle on a blue background", width=128, height=128, seed=1)
    assert result.images and result.info["all_seeds"] == [1]
    strict = aaa1111.AAA1111(host=parsed.hostname, port=parsed.port, username="user", password=TOKEN)
    assert strict.sd_models()[0].model_name == "demo"
    anonymous = aaa1111.AAA1111(host=parsed.hostname, port=parsed.port)
    with pytest.raises(httpx.HTTPStatusError):
        anonymous.sd_models()
