"""Fixtures of the browser tests: the console served by uvicorn on loopback, Debian's chromium under
playwright, console accounts, and screenshots under var/screenshots/."""

from __future__ import annotations

import dataclasses
import socket
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "var" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ADMIN, VIEWER, PASSWORD = "ada", "vic", "correct horse battery"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def console_config():
    """The console's settings for a test (a test module may override this fixture)."""
    from deskmail.producers.console.config import ConsoleConfig
    return ConsoleConfig()


@pytest.fixture
def console(runtime, console_config) -> Iterator[str]:
    """The console app on a free loopback port, with an admin and a viewer account; yields its base URL."""
    import uvicorn
    from deskmail.producers.console.app import SecurityHeaders, create_app
    from deskmail.producers.console.auth import hash_password
    runtime.store.add_console_user(ADMIN, hash_password(PASSWORD), "admin")
    runtime.store.add_console_user(VIEWER, hash_password(PASSWORD), "viewer")
    port = _free_port()
    app = SecurityHeaders(create_app(runtime, dataclasses.replace(console_config, port=port)), hsts=False)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the console did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="session")
def browser():
    """Debian's chromium, headless, driven by playwright (no browser download)."""
    from playwright.sync_api import sync_playwright
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run does)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def login(browser, base: str, username: str):
    """A fresh browser context logged in as `username`; returns its page."""
    context = browser.new_context(base_url=base, viewport={"width": 1360, "height": 900})
    page = context.new_page()
    page.goto("/login")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(base + "/")
    return page


def shot(page, name: str) -> Path:
    """Save a full-page screenshot as var/screenshots/NAME.png."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
