"""One timestamp rule on every wire format: seconds, milliseconds and ISO 8601 read once.

A phone's fix time reaches tracker as unix seconds, milliseconds or an ISO
date, depending on the app. Each is read exactly once, so a date far in the
future is refused on every path (it used to be read as milliseconds a second
time on the OsmAnd and OwnTracks paths and stored as a date in the 1970s),
and microseconds, which no app sends, are refused rather than read as a
plausible time.
"""

from __future__ import annotations

import base64
import time

import pytest

from tests.conftest import bearer

FAR_FUTURE_ISO = ["9999-12-31T23:59:59Z", "6000-01-01T00:00:00Z"]


def _fix_time() -> float:
    return float(int(time.time()) - 120)


async def _post(client, fleet, wire: str, timestamp: object):
    """Post one fix at `timestamp` in the given wire format; the response."""
    tenant = fleet.a
    if wire == "native":
        return await client.post(
            f"/api/v1/devices/{tenant.device_token}/positions",
            json={"latitude": 51.5, "longitude": -0.12, "timestamp": timestamp},
            headers={"X-Ingest-Key": tenant.ingest_key},
        )
    if wire == "osmand-query":
        return await client.post(
            "/ingest/osmand",
            query_string={
                "id": tenant.ingest_key,
                "lat": 51.5,
                "lon": -0.12,
                "timestamp": timestamp,
            },
        )
    if wire == "traccar-json":
        body = {
            "device_id": tenant.ingest_key,
            "location": {
                "timestamp": timestamp,
                "coords": {"latitude": 51.5, "longitude": -0.12},
            },
        }
        return await client.post("/ingest/osmand", json=body)
    if wire == "owntracks":
        message = {"_type": "location", "lat": 51.5, "lon": -0.12, "tst": timestamp}
        credentials = base64.b64encode(f"{tenant.device_token}:{tenant.ingest_key}".encode())
        return await client.post(
            "/ingest/owntracks",
            json=message,
            headers={"Authorization": "Basic " + credentials.decode()},
        )
    raise AssertionError(wire)


async def _stored_time(client, fleet) -> float | None:
    response = await client.get(
        f"/api/v1/devices/{fleet.a.device_token}/position",
        query_string={"date_format": "unix"},
        headers=bearer(fleet.a.read_token),
    )
    if response.status_code == 404:
        return None
    body = await response.get_json()
    return float(body["Timestamp"] if "Timestamp" in body else body["timestamp"])


WIRES = ["native", "osmand-query", "traccar-json", "owntracks"]


@pytest.mark.parametrize("wire", WIRES)
@pytest.mark.parametrize("iso", FAR_FUTURE_ISO)
async def test_far_future_iso_date_is_refused_and_nothing_is_stored(client, fleet, wire, iso):
    response = await _post(client, fleet, wire, iso)
    assert response.status_code in (400, 422), await response.get_data()
    assert "future" in (await response.get_data(as_text=True))
    assert await _stored_time(client, fleet) is None


@pytest.mark.parametrize("wire", ["osmand-query", "traccar-json", "owntracks"])
async def test_microsecond_timestamp_is_refused_not_read_as_a_recent_time(client, fleet, wire):
    response = await _post(client, fleet, wire, int(_fix_time() * 1_000_000))
    assert response.status_code in (400, 422)
    assert await _stored_time(client, fleet) is None


@pytest.mark.parametrize("wire", WIRES)
async def test_seconds_are_stored_as_sent(client, fleet, wire):
    fix_time = _fix_time()
    response = await _post(client, fleet, wire, int(fix_time))
    assert response.status_code in (200, 201), await response.get_data()
    assert await _stored_time(client, fleet) == fix_time


@pytest.mark.parametrize("wire", WIRES)
async def test_milliseconds_are_stored_as_seconds(client, fleet, wire):
    fix_time = _fix_time()
    response = await _post(client, fleet, wire, int(fix_time * 1000))
    assert response.status_code in (200, 201), await response.get_data()
    assert await _stored_time(client, fleet) == fix_time


@pytest.mark.parametrize("wire", ["native", "osmand-query", "traccar-json"])
async def test_recent_iso_date_is_stored_at_that_time(client, fleet, wire):
    fix_time = _fix_time()
    iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(fix_time))
    response = await _post(client, fleet, wire, iso)
    assert response.status_code in (200, 201), await response.get_data()
    assert await _stored_time(client, fleet) == fix_time
