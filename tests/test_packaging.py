"""A self-hoster installs tracker's wheel, runs it from an empty directory and deploys it.

The wheel is built from a clean copy of the project (no stale build/ can fill
a gap) and installed into a fresh virtual environment. To stay fast and work
offline, the wheel goes in with `--no-deps` and the new environment borrows
the dependencies of the environment running the tests through a .pth line:
only the dependencies are borrowed, so `tracker` itself, its share page and
its assets can come only from the wheel (checked: `tracker.__file__` and the
share page's directory are inside the new environment). Then `tracker serve`
and `tracker demo` start from an empty directory with no tracker.toml, and
Chromium opens a share link on the installed server.

The same environment's `tracker` stands in for /opt/tracker/bin/tracker when
`systemd-analyze verify` checks deploy/tracker.service (verify refuses a unit
whose program does not exist), and the Dockerfile's HEALTHCHECK command is run
against the installed server. The image itself is built by .ci/run when a
container engine is there.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import site
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import expect, sync_playwright

from tests.conftest import bearer, free_port
from tests.test_share_page import CHROMIUM, CHROMIUM_ARGS, PHONE, grid_tile_png

ROOT = Path(__file__).resolve().parents[1]
# What a source tree has that a build must not see.
NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache",
    "test-artifacts", "*.db", "*.db-wal", "*.db-shm",
)  # fmt: skip


def needs(binary: str, package: str) -> None:
    """Fail in CI when a binary is missing, skip elsewhere."""
    if not Path(binary).exists():
        message = f"needs {binary} (Debian's {package} package; .ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def run(*args: str | Path, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(arg) for arg in args], capture_output=True, text=True, timeout=300, **kwargs
    )
    assert result.returncode == 0, f"{shlex.join(map(str, args))}:\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    source = tmp_path_factory.mktemp("source") / "tracker"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCE)
    out = tmp_path_factory.mktemp("wheel")
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--wheel-dir", out, source)
    (built,) = out.glob("tracker-*.whl")
    return built


@dataclass
class Installed:
    venv: Path

    @property
    def tracker(self) -> Path:
        return self.venv / "bin" / "tracker"

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Installed:
    venv = tmp_path_factory.mktemp("venv")
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    env = Installed(venv)
    run(sys.executable, "-m", "pip", "--python", env.python, "install", "-q", "--no-deps", wheel)
    purelib = run(env.python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))")
    borrowed = "\n".join(site.getsitepackages()) + "\n"
    (Path(purelib.stdout.strip()) / "borrowed-dependencies.pth").write_text(borrowed)
    return env


def clean_env(**settings: str) -> dict[str, str]:
    """This environment without any TRACKER_ setting or Python path, plus `settings`."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("TRACKER_") and name not in ("PYTHONPATH", "VIRTUAL_ENV")
    }
    return {**env, **settings}


# -- the wheel --------------------------------------------------------------------------


def test_wheel_carries_every_module_and_every_static_file(wheel):
    with zipfile.ZipFile(wheel) as archive:
        shipped = set(archive.namelist())
    modules = {
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / "tracker").rglob("*.py")
        if "__pycache__" not in path.parts
    }
    assets = {
        "tracker/static/" + path.relative_to(ROOT / "static").as_posix()
        for path in (ROOT / "static").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    assert {"tracker/static/share.html", "tracker/static/share.css"} <= assets
    missing = sorted((modules | assets) - shipped)
    assert not missing, f"not in the wheel (a package missing from pyproject.toml?): {missing}"


def test_installed_tracker_runs_from_the_wheel_not_the_checkout(installed, tmp_path):
    code = "import tracker, tracker.api.pages as p; print(tracker.__file__); print(p.STATIC_DIR)"
    result = run(installed.python, "-c", code, cwd=tmp_path, env=clean_env())
    module, static = result.stdout.split()
    assert Path(module).is_relative_to(installed.venv)
    assert Path(static).is_relative_to(installed.venv)
    assert (Path(static) / "share.js").is_file()


# -- tracker serve and tracker demo from an empty directory --------------------------------


@dataclass
class Server:
    process: subprocess.Popen
    url: str
    workdir: Path
    env: dict[str, str]


@pytest.fixture(scope="module")
def served(installed, tmp_path_factory) -> Iterator[Server]:
    """`tracker serve` of the wheel, started in an empty directory with no tracker.toml."""
    workdir = tmp_path_factory.mktemp("empty")
    assert list(workdir.iterdir()) == []
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = clean_env(TRACKER_SERVER_PORT=str(port), TRACKER_SERVER_PUBLIC_URL=url)
    with open(workdir.parent / f"{workdir.name}-serve.log", "wb") as log:
        process = subprocess.Popen(
            [installed.tracker, "serve"], cwd=workdir, env=env, stdout=log, stderr=log
        )
    server = Server(process, url, workdir, env)
    try:
        wait_until_healthy(server)
        yield server
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_until_healthy(server: Server) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert server.process.poll() is None, "tracker serve exited"
        try:
            if httpx.get(server.url + "/api/v1/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError("tracker serve did not answer /api/v1/health")


def test_tracker_serve_from_an_empty_directory_keeps_its_database_there(served):
    assert (served.workdir / "tracker.db").is_file()
    assert not (served.workdir / "tracker.toml").exists()


@pytest.mark.slow
@pytest.mark.browser
def test_share_link_of_the_installed_server_opens_on_a_phone(installed, served):
    def tracker(*args: str) -> str:
        return run(installed.tracker, *args, cwd=served.workdir, env=served.env).stdout

    instance_id = json.loads(tracker("instance", "create", "Wheel fleet", "--json"))["instance_id"]
    admin = bearer(
        tracker("token", "create", "--instance", instance_id, "--scope", "admin").strip()
    )
    with httpx.Client(base_url=served.url + "/api/v1", timeout=10) as http:
        device = http.post(
            "/devices",
            json={"instance_id": instance_id, "profile": {"full_name": "Sam Carter"}},
            headers=admin,
        ).json()
        session = http.post(
            "/sharing/sessions",
            json={
                "device_token": device["device_token"],
                "instance_id": instance_id,
                "recipient_name": "Jane Doe",
            },
            headers=admin,
        ).json()
        position = {"latitude": 51.5, "longitude": -0.12, "timestamp": time.time(), "speed": 9.0}
        response = http.post(
            f"/devices/{device['device_token']}/positions",
            json=position,
            headers={"X-Ingest-Key": device["ingest_key"]},
        )
        assert response.status_code == 201, response.text

    needs(CHROMIUM, "chromium")
    tile = grid_tile_png()
    errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=PHONE)
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda error: errors.append(str(error)))
            # The default OpenStreetMap tiles, answered here: no test reaches the internet.
            page.route(
                "https://tile.openstreetmap.org/**",
                lambda route: route.fulfill(body=tile, content_type="image/png"),
            )
            page.goto(session["links"]["map_url"])
            expect(page.locator("body")).to_have_attribute("data-connection", "live")
            expect(page.locator("#recipient-name")).to_have_text("Jane Doe")
            expect(page.locator("#status-line")).to_have_text("Sam Carter is on the way")
            expect(page.locator("#driver-marker")).to_be_visible()
            expect(page.locator("img.leaflet-tile-loaded").first).to_be_visible()  # leaflet.css
            expect(page.locator("body")).to_have_css("background-color", "rgb(243, 245, 248)")
        finally:
            browser.close()
    assert errors == []


@pytest.mark.slow
def test_tracker_demo_from_an_empty_directory_serves_its_share_link(installed, tmp_path):
    port = free_port()
    env = clean_env(
        TRACKER_SERVER_PORT=str(port), TRACKER_SERVER_PUBLIC_URL=f"http://127.0.0.1:{port}"
    )
    demo = subprocess.Popen(
        [installed.tracker, "demo", "--json"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        info = json.loads(demo.stdout.readline())
        page = httpx.get(info["share_url"], timeout=10)
        assert page.status_code == 200
        assets = re.findall(r'(?:src|href)="(/static/[^"]+)"', page.text)
        assert len(assets) == 5  # share.css, pages.js, share.js, leaflet.css, leaflet.js
        for asset in assets:
            assert httpx.get(info["server"] + asset, timeout=10).status_code == 200, asset
    finally:
        demo.send_signal(signal.SIGINT)
        assert demo.wait(timeout=30) == 0
    assert (tmp_path / "tracker.db").is_file()


# -- deploy/ -----------------------------------------------------------------------------


def test_systemd_unit_passes_systemd_analyze_verify(installed, tmp_path):
    needs("/usr/bin/systemd-analyze", "systemd")
    unit = (ROOT / "deploy" / "tracker.service").read_text()
    assert "ExecStart=/opt/tracker/bin/tracker serve" in unit
    # verify refuses a unit whose program is missing: the wheel's tracker stands in.
    (tmp_path / "tracker.service").write_text(
        unit.replace("/opt/tracker/bin/tracker", str(installed.tracker))
    )
    verify = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", tmp_path / "tracker.service"],
        capture_output=True,
        text=True,
    )
    assert (verify.returncode, verify.stdout + verify.stderr) == (0, "")  # not even a warning
    # Hardening stays in systemd's "OK" band: an exposure level of 2.0 at most (threshold 20).
    security = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--threshold=20"]
        + [tmp_path / "tracker.service"],
        capture_output=True,
        text=True,
    )
    assert security.returncode == 0, security.stdout[-2000:]


def test_dockerfile_healthcheck_passes_on_a_running_server(installed, served):
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    healthcheck = re.search(r"HEALTHCHECK .*?CMD (\[[^\n]*\])$", dockerfile, re.S | re.M)
    command = json.loads(healthcheck.group(1))
    assert command[0] == "python"  # the slim image has no curl
    port = served.url.rsplit(":", 1)[1]
    run(installed.python, *command[1:], env=clean_env(TRACKER_SERVER_PORT=port))
    served.process.send_signal(signal.SIGSTOP)  # a hung server fails it
    try:
        hung = subprocess.run(
            [installed.python, *command[1:]],
            env=clean_env(TRACKER_SERVER_PORT=port),
            capture_output=True,
            timeout=30,
        )
    finally:
        served.process.send_signal(signal.SIGCONT)
    assert hung.returncode != 0
