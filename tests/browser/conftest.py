"""A real JupyterLab server and headless Chromium, for tests that use the course as people do.

The browser is the distribution's Chromium (Playwright drives it; its own browser download
is not used). When it is missing and the tests run as root on a Debian-like system, it is
installed with apt-get; anywhere else the tests skip and say how to install it.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "browser"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def _find_chromium() -> str | None:
    return next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)


def _install_chromium() -> str:
    """Install Debian's chromium package when we may; return why not otherwise."""
    if not shutil.which("apt-get"):
        return "no apt-get here"
    if os.geteuid() != 0:
        return "installing it needs root"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        if result.returncode != 0:
            return f"{' '.join(command)} failed: {result.stderr.strip()[-300:]}"
    return ""


@pytest.fixture(scope="session")
def chromium_path() -> str:
    path = _find_chromium()
    if path is None:
        reason = _install_chromium()
        path = _find_chromium()
        if path is None:
            pytest.skip(f"no Chromium browser ({reason}); install your distribution's "
                        "chromium package to run the browser tests")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def course_copy(tmp_path_factory) -> Path:
    """The course as an instructor checks it out, in a scratch folder the tests may dirty."""
    root = tmp_path_factory.mktemp("course")
    for name in ("solutions", "notebooks"):
        shutil.copytree(REPO / name, root / name)
    shutil.copy(REPO / "nbgrader_config.py", root / "nbgrader_config.py")
    return root


@pytest.fixture(scope="session")
def lab_server(course_copy, tmp_path_factory):
    """A JupyterLab server on localhost serving ``course_copy``; stopped afterwards."""
    port, token = _free_port(), "gptcourse-browser-test"
    settings = tmp_path_factory.mktemp("lab-settings")
    news = settings / "@jupyterlab" / "apputils-extension"
    news.mkdir(parents=True)
    (news / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    # Render every cell, not only those in view, so the page can be inspected whole.
    tracker = settings / "@jupyterlab" / "notebook-extension"
    tracker.mkdir(parents=True)
    (tracker / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    command = [
        sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}",
        "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={token}",
        "--LabApp.expose_app_in_browser=True", f"--ServerApp.root_dir={course_copy}",
    ]
    if os.geteuid() == 0:
        command.append("--allow-root")
    exchange = tmp_path_factory.mktemp("exchange")
    # nbgrader runs some of its tools (alembic) as commands from the environment's bin.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = dict(os.environ, JUPYTERLAB_SETTINGS_DIR=str(settings), PATH=path,
               GPTCOURSE_EXCHANGE=str(exchange))
    log = open(tmp_path_factory.mktemp("lab-log") / "server.log", "w")
    server = subprocess.Popen(command, cwd=course_copy, env=env, stdout=log,
                              stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"JupyterLab did not start; see {log.name}") from None
                time.sleep(0.3)
        yield base, token
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


@pytest.fixture(scope="session")
def browser(chromium_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path, headless=True,
                                             args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, request):
    """A fresh page; its screenshot is saved as a test artifact whatever the outcome."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    yield page
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    name = request.node.name.replace("/", "_").replace("[", "-").replace("]", "")
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
    page.close()
