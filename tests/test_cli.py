"""The command line makes instances, devices and tokens that a running server accepts."""

import json
import signal

import httpx
import pytest

from tests.conftest import ServerProcess, bearer


@pytest.fixture
def process(tmp_path):
    server = ServerProcess(tmp_path)
    yield server
    if server.process and server.process.poll() is None:
        server.process.kill()
        server.process.wait()


def test_cli_made_instance_device_and_token_work_against_the_server(process):
    process.start()
    instance_id = json.loads(process.cli("instance", "create", "Acme Deliveries", "--json"))[
        "instance_id"
    ]
    added = json.loads(
        process.cli("device", "add", "--instance", instance_id, "--name", "John Smith", "--json")
    )
    assert len(added["ingest_key"]) >= 22
    token = process.cli("token", "create", "--instance", instance_id, "--scope", "admin").strip()
    assert token.count(".") == 2 and "\n" not in token

    # The running server sees what the CLI wrote, at once.
    response = httpx.get(f"{process.url}/api/v1/instances/{instance_id}", headers=bearer(token))
    assert response.status_code == 200
    assert response.json() == {
        "instance_id": instance_id,
        "name": "Acme Deliveries",
        "created_at": response.json()["created_at"],
        "device_count": 1,
    }
    assert process.stop(signal.SIGTERM) == 0


def test_plain_output_is_the_bare_value(process):
    instance_id = process.cli("instance", "create", "Plain").strip()
    assert len(instance_id) == 36
    token = process.cli(
        "token", "create", "--instance", instance_id, "--scope", "read", "--ttl", "1h"
    )
    assert token.strip().count(".") == 2


def test_token_for_an_unknown_instance_is_refused(process):
    import subprocess
    import sys

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tracker",
            "token",
            "create",
            "--instance",
            "nope",
            "--scope",
            "admin",
        ],
        cwd=process.workdir,
        env=process.env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "no instance" in result.stderr


def test_server_refuses_to_start_on_a_bad_config_value(process):
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "tracker", "serve"],
        cwd=process.workdir,
        env={**process.env, "TRACKER_SERVER_PORT": "abc"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "server.port" in result.stderr


def test_sigint_stops_the_server_cleanly(process):
    process.start()
    assert process.stop(signal.SIGINT) == 0
