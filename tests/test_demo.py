"""`tracker demo` starts a working server with vans driving and a share link to open."""

import json
import os
import shlex
import signal
import subprocess
import sys
import time

import httpx

from tests.conftest import free_port


def test_demo_drives_vans_through_the_real_ingest_path(tmp_path):
    port = free_port()
    env = {
        **os.environ,
        "TRACKER_SERVER_PORT": str(port),
        "TRACKER_SERVER_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "TRACKER_STORAGE_PATH": str(tmp_path / "demo.db"),
    }
    demo = subprocess.Popen(
        [sys.executable, "-m", "tracker", "demo", "--json"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        info = json.loads(demo.stdout.readline())
        api = f"{info['server']}/api/v1"
        headers = {"Authorization": f"Bearer {info['admin_token']}"}
        share = info["share_url"].rsplit("/", 1)[1]

        def van_1() -> dict:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                response = httpx.get(f"{api}/devices/demo-van-1/position", headers=headers)
                if response.status_code == 200:
                    return response.json()
                time.sleep(0.2)
            raise AssertionError("van 1 never reported")

        first = van_1()
        time.sleep(4.5)
        later = van_1()
        assert later["timestamp"] > first["timestamp"]
        assert (later["latitude"], later["longitude"]) != (first["latitude"], first["longitude"])
        public = httpx.get(f"{api}/share/{share}").json()
        assert public["status"] == "active"
        assert public["driver_display_name"] == "Alice Martin"
        assert public["destination"]["label"] == "Finsbury Square, London"
        assert public["eta_seconds"] > 0

        # The console's demo user signs in and sees the vans.
        assert info["console_url"] == f"{info['server']}/"
        assert httpx.get(info["console_url"]).headers["Content-Type"].startswith("text/html")
        signed_in = httpx.post(
            f"{api}/auth/login",
            json={"username": info["username"], "password": info["password"]},
        )
        assert signed_in.status_code == 200, signed_in.text
        fleet = httpx.get(
            f"{api}/devices",
            params={"instance_id": info["instance_id"]},
            headers={"Authorization": f"Bearer {signed_in.json()['token']}"},
        ).json()
        assert {item["device_token"] for item in fleet["items"]} == set(info["devices"])
    finally:
        demo.send_signal(signal.SIGINT)
        assert demo.wait(timeout=15) == 0


def test_demo_prints_commands_that_work_as_pasted_and_stops_at_once(tmp_path):
    port = free_port()
    env = {**os.environ, "TRACKER_STORAGE_PATH": str(tmp_path / "demo.db")}
    demo = subprocess.Popen(
        [sys.executable, "-m", "tracker", "demo", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        printed = []
        for line in demo.stdout:
            printed.append(line.strip())
            if line.strip().startswith("curl "):
                break
        watch_line = next(line for line in printed if line.startswith("tracker watch "))
        curl_line = next(line for line in printed if line.startswith("curl "))
        share_url = next(line for line in printed if "/share/" in line)
        assert share_url.startswith(f"http://127.0.0.1:{port}/share/")  # --port reaches links

        # curl -H "Authorization: Bearer <jwt>" <url>, as printed: no variable to fill in.
        curl = shlex.split(curl_line)
        assert "$" not in curl_line
        header, url = curl[2], curl[3]
        name, _, value = header.partition(": ")
        deadline = time.monotonic() + 10
        while (response := httpx.get(url, headers={name: value})).status_code == 404:
            assert time.monotonic() < deadline, "van 1 never reported"
            time.sleep(0.2)
        assert response.status_code == 200 and response.json()["device_token"] == "demo-van-1"

        watch = subprocess.Popen(
            [sys.executable, "-m", "tracker", *shlex.split(watch_line)[1:]],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert json.loads(watch.stdout.readline())["type"] == "welcome"
            assert json.loads(watch.stdout.readline())["type"] == "position"
        finally:
            watch.terminate()
            watch.wait(timeout=10)
    finally:
        stopped_at = time.monotonic()
        demo.send_signal(signal.SIGINT)
        assert demo.wait(timeout=15) == 0
    assert time.monotonic() - stopped_at < 4  # the issue asks 2 s; room for a loaded machine
