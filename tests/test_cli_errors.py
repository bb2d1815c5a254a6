"""Each usual mistake with the command line gets one line that says what to do, and no traceback.

Exit status 2 for a mistake in what was asked (a bad value, an unreadable
config, a database path that cannot be opened), 1 for a failure at run time
(the port is taken, no server answers).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import httpx
import pytest

from tests.conftest import free_port


def tracker(*args: str, cwd, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tracker", *args],
        cwd=cwd,
        env={**os.environ, "TRACKER_STORAGE_PATH": str(cwd / "tracker.db"), **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def one_line(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("tracker: ")]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_port_in_use_is_one_line_naming_the_port_and_the_way_out(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = tracker("serve", "--port", str(port), cwd=tmp_path)
    assert result.returncode == 1
    line = one_line(result)
    assert f"127.0.0.1:{port}" in line and "--port" in line


def test_database_directory_that_cannot_be_used_is_one_line(tmp_path):
    result = tracker(
        "serve", cwd=tmp_path, env={"TRACKER_STORAGE_PATH": str(tmp_path / "missing" / "t.db")}
    )
    assert result.returncode == 2
    line = one_line(result)
    assert "missing" in line and "storage.path" in line
    missing = {"TRACKER_STORAGE_PATH": str(tmp_path / "missing" / "t.db")}
    assert tracker("instance", "create", "Acme", cwd=tmp_path, env=missing).returncode == 2


def test_config_file_that_is_not_utf8_is_one_line(tmp_path):
    (tmp_path / "tracker.toml").write_bytes(b"[server]\nport = 8080  # caf\xe9\n")
    result = tracker("serve", cwd=tmp_path)
    assert result.returncode == 2
    assert "UTF-8" in one_line(result)


def test_watch_with_no_server_is_one_line(tmp_path):
    port = free_port()
    result = tracker(
        "watch",
        "--instance",
        "x",
        "--token",
        "y",
        "--url",
        f"ws://127.0.0.1:{port}/ws",
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert "tracker serve" in one_line(result)


@pytest.fixture(scope="module")
def fleet_dir(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("fleet")
    instance = tracker("instance", "create", "Acme", "--json", cwd=workdir)
    instance_id = json.loads(instance.stdout)["instance_id"]
    device = tracker("device", "add", "--instance", instance_id, "--json", cwd=workdir)
    return workdir, instance_id, json.loads(device.stdout)["device_token"]


@pytest.mark.parametrize(
    "args",
    [
        ("instance", "create", ""),
        ("instance", "create", "   "),
        ("instance", "create", "x" * 300),
        ("device", "add", "--instance", "{instance}", "--name", "y" * 300),
        ("device", "add", "--instance", "{instance}", "--token", "z" * 200),
        ("token", "create", "--instance", "{instance}", "--scope", "read", "--device", "{device}"),
    ],
)
def test_names_the_rest_api_refuses_are_refused_by_the_cli_too(fleet_dir, args):
    workdir, instance_id, device_token = fleet_dir
    args = [arg.format(instance=instance_id, device=device_token) for arg in args]
    result = tracker(*args, cwd=workdir)
    assert result.returncode == 2
    one_line(result)


def test_serve_takes_host_and_port_and_names_a_health_url_that_answers(tmp_path):
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tracker", "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=tmp_path,
        env={**os.environ, "TRACKER_STORAGE_PATH": str(tmp_path / "tracker.db")},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        health_url = None
        for line in server.stderr:
            if "serving on" in line:
                health_url = line.rsplit("health: ", 1)[1].rstrip(")\n")
                break
        assert health_url == f"http://127.0.0.1:{port}/api/v1/health"
        assert httpx.get(health_url).json()["status"] == "ok"
    finally:
        server.terminate()
        assert server.wait(timeout=15) == 0
