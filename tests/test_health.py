"""The health endpoint answers over a real socket, with the API prefix from the config."""

import httpx

from tests.conftest import start_server
from tracker import __version__
from tracker.app import create_app


async def test_health_reports_ok_database_and_version(http):
    response = await http.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["database"] == "ok"
    assert body["version"] == __version__
    assert body["uptime_seconds"] >= 0


async def test_api_prefix_comes_from_the_config(nursery, settings):
    settings = settings.replace(server={"api_prefix": "/tracking/v2"})
    server = await start_server(nursery, create_app(settings), settings)
    async with httpx.AsyncClient(base_url=server.url) as client:
        assert (await client.get("/tracking/v2/health")).json()["status"] == "ok"
        missing = await client.get("/api/v1/health")
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "not_found"
