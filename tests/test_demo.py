"""`tracker demo` starts a working server with vans driving and a share link to open."""

import json
import os
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
    finally:
        demo.send_signal(signal.SIGINT)
        assert demo.wait(timeout=15) == 0
