"""What the browser tests of the web page share: Debian's Chromium driven by Playwright, and small page helpers.

The browser is Debian's `chromium` (/usr/bin/chromium; never a browser downloaded by Playwright) driven by Playwright's
Python package. Importing this module without either skips the importing test module locally; under CI (CI=true) a
missing browser is an error, so the tests cannot silently stop running there.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import pytest
from server_helpers import wait_for_job

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
JOB_MS = 120_000  # the first job also loads the demo model


def _missing() -> str | None:
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing (apt-get install -y chromium)"
    for module in ("playwright", "fastapi", "uvicorn", "httpx"):
        try:
            __import__(module)
        except ImportError:
            return f"the Python package {module} is missing (pip install -e '.[test]')"
    return None


if (_why := _missing()) is not None:
    if os.environ.get("CI") == "true":
        raise RuntimeError(f"CI must run the browser tests of the web page, but {_why}")
    pytest.skip(f"browser tests of the web page skipped: {_why}", allow_module_level=True)

from playwright.sync_api import Page, expect

expect.set_options(timeout=15_000)  # page-side waits on a loaded 2-core machine (jobs get JOB_MS)


# ---- the server ----------------------------------------------------------------------------------------------------


def call(server, path: str, body: dict | None = None) -> dict:
    """A JSON request to the server (POST when `body` is given); a 4xx/5xx fails the test."""
    with server.client() as client:
        response = client.get(path) if body is None else client.post(path, json=body)
        response.raise_for_status()
        return response.json()


def finished(server, job_id: str) -> dict:
    with server.client() as client:
        return wait_for_job(client, job_id, timeout=JOB_MS / 1000)


# ---- the browser ---------------------------------------------------------------------------------------------------


@contextmanager
def browser(playwright, profile: Path, **options):
    """Debian's Chromium with a fresh profile folder."""
    context = playwright.chromium.launch_persistent_context(
        str(profile),
        executable_path=str(CHROMIUM),
        args=CHROMIUM_ARGS,
        headless=True,
        viewport={"width": 1280, "height": 900},
        **options,
    )
    try:
        yield context
    finally:
        context.close()


@contextmanager
def open_page(context, url: str):
    """The page at `url`, once it has read the server's capabilities; fails on any uncaught script error."""
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    try:
        page.goto(url)
        expect(page.locator("#model option")).not_to_have_count(0)
        yield page
        assert not errors, f"script errors in the page: {errors}"
    finally:
        page.close()


def fill(page: Page, **fields: str) -> None:
    for name, value in fields.items():
        page.locator(f"#{name}").fill(value)


def generate(page: Page, prompt: str, **fields: str) -> None:
    fill(page, prompt=prompt, **fields)
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#form-notice")).to_contain_text("Queued")


def card(page: Page, prompt: str):
    """The history card of the job with `prompt` (prompts are unique across a module's tests)."""
    return page.locator("#history article").filter(has_text=prompt)
