"""Give me the GPX of that job: exports in three formats, read back by other libraries, and import.

A dispatcher downloads a trip, or a time range, as GPX, GeoJSON or CSV from
the real server and opens it with independent tools (gpxpy and the official
GPX 1.1 schema through lxml; json; csv): the same points and times come
back. A GPX export imported into another device gives the same trip. Hostile
XML is refused with a clear 4xx, and a million-position range streams
through a server whose memory stays flat (measured on `tracker serve` in its
own process).
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import gpxpy
import gpxpy.gpx
import httpx
import pytest
from lxml import etree

from tests.conftest import ServerProcess, bearer
from tracker.exports import GPXTPX_NS, TRACKER_NS
from tracker.models import Position
from tracker.store import Database, devices, instances
from tracker.store import positions as positions_store
from tracker.store import trips as trips_store
from tracker.trips import recount

NOW = time.time()
GPX_SCHEMA = etree.XMLSchema(etree.parse(str(Path(__file__).parent / "data" / "gpx-1.1.xsd")))


def utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def known_route(start: float, fixes: int, north: float = 0.0) -> list[Position]:
    """A drive with every kind of value: fractions of seconds, and some unknowns."""
    return [
        Position.build(
            latitude=51.5 + north + i * 0.0005,
            longitude=-0.12 + i * 0.00001,
            timestamp=start + i * 7 + (0.25 if i % 3 == 0 else 0),
            speed=None if i % 5 == 4 else 3.5 + i / 10,
            heading=None if i % 4 == 3 else (i * 11) % 360,
            accuracy=None if i % 6 == 5 else 4.0 + i % 3,
            altitude=None if i % 7 == 6 else 20.5 + i,
            now=NOW,
        )
        for i in range(fixes)
    ]


@pytest.fixture
async def route(tracker, fleet) -> list[Position]:
    """Two trips of device A, an hour apart: 30 fixes, then 20."""
    first = known_route(NOW - 7200, 30)
    second = known_route(NOW - 3600, 20, north=0.1)
    await tracker.writer.submit(fleet.a.device_token, first + second)
    return first + second


async def trip_tokens(http, fleet) -> list[str]:
    trips = await http.get(
        f"/devices/{fleet.a.device_token}/trips", headers=bearer(fleet.a.read_token)
    )
    return [t["track_token"] for t in reversed(trips.json()["items"])]  # oldest first


def range_params(**extra) -> dict:
    return {"from": str(NOW - 3 * 3600), "to": str(NOW), **extra}


async def export(http, fleet, path: str, **params) -> httpx.Response:
    response = await http.get(
        f"/devices/{fleet.a.device_token}{path}", params=params, headers=bearer(fleet.a.read_token)
    )
    assert response.status_code == 200, response.text
    return response


def same_time(text_or_dt, ts: float) -> bool:
    value = text_or_dt
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return abs(value.timestamp() - ts) < 1e-6


# -- GPX ---------------------------------------------------------------------------


async def test_a_gpx_range_validates_and_gpxpy_reads_back_every_point(http, fleet, route):
    response = await export(http, fleet, "/positions/export", **range_params(format="gpx"))
    assert response.headers["content-type"].startswith("application/gpx+xml")
    disposition = response.headers["content-disposition"]
    assert disposition.startswith('attachment; filename="alpha-truck-1_')
    assert disposition.endswith('.gpx"')

    GPX_SCHEMA.assertValid(etree.fromstring(response.content))
    gpx = gpxpy.parse(response.text)
    assert gpx.name == "Alpha Driver"
    assert fleet.a.device_token in gpx.description
    (track,) = gpx.tracks
    assert [len(s.points) for s in track.segments] == [30, 20]  # one trkseg per trip
    points = [p for s in track.segments for p in s.points]
    for point, fix in zip(points, route, strict=True):
        assert (point.latitude, point.longitude) == (fix.latitude, fix.longitude)
        assert same_time(point.time, fix.timestamp)
        assert point.elevation == fix.altitude
        values = {}
        for extension in point.extensions:
            values.update({child.tag: float(child.text) for child in extension} or {})
            if extension.tag == f"{{{TRACKER_NS}}}accuracy":
                values["accuracy"] = float(extension.text)
        assert values.get(f"{{{GPXTPX_NS}}}speed") == fix.speed
        assert values.get(f"{{{GPXTPX_NS}}}course") == fix.heading
        assert values.get("accuracy") == fix.accuracy


async def test_a_one_trip_gpx_names_the_trip_in_its_metadata(http, fleet, route):
    first, second = await trip_tokens(http, fleet)
    response = await export(http, fleet, f"/trips/{second}/export")  # gpx by default
    GPX_SCHEMA.assertValid(etree.fromstring(response.content))
    gpx = gpxpy.parse(response.text)
    assert second in gpx.description and first not in response.text
    (segment,) = gpx.tracks[0].segments
    assert [(p.latitude, p.longitude) for p in segment.points] == [
        (f.latitude, f.longitude) for f in route[30:]
    ]


# -- GeoJSON -----------------------------------------------------------------------


async def test_geojson_has_a_linestring_per_trip_with_its_stats_and_times(http, fleet, route):
    response = await export(http, fleet, "/positions/export", **range_params(format="geojson"))
    assert response.headers["content-type"].startswith("application/geo+json")
    collection = json.loads(response.content)
    assert collection["type"] == "FeatureCollection"
    assert [f["geometry"]["type"] for f in collection["features"]] == ["LineString"] * 2
    stats = await http.get(
        f"/devices/{fleet.a.device_token}/stats", headers=bearer(fleet.a.read_token)
    )
    second = collection["features"][1]["properties"]
    assert second["distance_meters"] == stats.json()["distance_meters"]
    assert second["track_token"] == stats.json()["track_token"]
    coordinates = [c for f in collection["features"] for c in f["geometry"]["coordinates"]]
    times = [t for f in collection["features"] for t in f["properties"]["coordTimes"]]
    assert coordinates == [[f.longitude, f.latitude] for f in route]
    assert all(same_time(t, f.timestamp) for t, f in zip(times, route, strict=True))


async def test_geojson_points_carry_each_fixs_values(http, fleet, route):
    response = await export(
        http, fleet, "/positions/export", **range_params(format="geojson", points="true")
    )
    features = json.loads(response.content)["features"]
    assert len(features) == len(route)
    for feature, fix in zip(features, route, strict=True):
        assert feature["type"] == "Feature"
        assert feature["geometry"] == {
            "type": "Point",
            "coordinates": [fix.longitude, fix.latitude],
        }
        properties = feature["properties"]
        assert same_time(properties["time"], fix.timestamp)
        assert (properties["speed"], properties["heading"]) == (fix.speed, fix.heading)
        assert (properties["accuracy"], properties["altitude"]) == (fix.accuracy, fix.altitude)


async def test_a_one_fix_trip_is_a_point_in_geojson(http, tracker, fleet):
    await tracker.writer.submit(
        fleet.a.device_token, [Position.build(latitude=1.5, longitude=2.5, timestamp=NOW - 60)]
    )
    response = await export(http, fleet, "/positions/export", format="geojson")
    (feature,) = json.loads(response.content)["features"]
    assert feature["geometry"] == {"type": "Point", "coordinates": [2.5, 1.5]}


# -- CSV ---------------------------------------------------------------------------


async def test_csv_has_a_header_and_one_row_per_fix_in_utc(http, fleet, route):
    response = await export(http, fleet, "/positions/export", **range_params(format="csv"))
    assert response.headers["content-type"].startswith("text/csv")
    assert response.headers["content-disposition"].endswith('.csv"')
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert list(rows[0]) == [
        "time",
        "latitude",
        "longitude",
        "speed",
        "heading",
        "accuracy",
        "altitude",
        "track_token",
    ]
    first, second = await trip_tokens(http, fleet)
    assert [r["track_token"] for r in rows] == [first] * 30 + [second] * 20

    def number(text: str) -> float | None:
        return float(text) if text else None

    for row, fix in zip(rows, route, strict=True):
        assert row["time"].endswith("Z") and same_time(row["time"], fix.timestamp)
        assert (float(row["latitude"]), float(row["longitude"])) == (fix.latitude, fix.longitude)
        assert number(row["speed"]) == fix.speed and number(row["heading"]) == fix.heading
        assert number(row["accuracy"]) == fix.accuracy
        assert number(row["altitude"]) == fix.altitude


async def test_export_options_are_checked(http, fleet, route):
    for params in ({"format": "kml"}, {"points": "maybe"}, {"from": "yesterday"}):
        response = await http.get(
            f"/devices/{fleet.a.device_token}/positions/export",
            params=params,
            headers=bearer(fleet.a.read_token),
        )
        assert response.status_code == 400, params
    unknown = await http.get(
        f"/devices/{fleet.a.device_token}/trips/nope/export", headers=bearer(fleet.a.read_token)
    )
    assert unknown.status_code == 404


async def test_the_command_line_writes_the_same_file_as_the_server(http, fleet, route, settings):
    params = range_params(format="csv")
    served = await export(http, fleet, "/positions/export", **params)
    env = {
        **os.environ,
        "TRACKER_STORAGE_PATH": settings.storage.path,
        "TRACKER_STORAGE_URL": settings.storage.url,
    }
    command = [sys.executable, "-m", "tracker", "export", "--device", fleet.a.device_token]
    written = subprocess.run(
        [*command, "--from", params["from"], "--to", params["to"], "--format", "csv"],
        capture_output=True,
        env=env,
        timeout=60,
    )
    assert written.returncode == 0, written.stderr
    assert written.stdout == served.content
    gpx = subprocess.run([*command, "--from", params["from"]], capture_output=True, env=env)
    assert len(gpxpy.parse(gpx.stdout.decode()).tracks[0].segments) == 2
    missing = subprocess.run(
        [*command[:-1], "no-such-device"], capture_output=True, text=True, env=env
    )
    assert missing.returncode == 2 and "no-such-device" in missing.stderr


# -- import ------------------------------------------------------------------------


async def new_device(tracker, fleet, token: str) -> str:
    device, _ = await tracker.db.write(devices.create, fleet.a.instance_id, token, {})
    return device.token


def import_gpx(http, token: str, device: str, body: bytes, content_type="application/gpx+xml"):
    return http.post(
        f"/devices/{device}/positions/import",
        content=body,
        headers={**bearer(token), "Content-Type": content_type},
    )


async def test_a_gpx_export_imported_into_another_device_gives_the_same_trip(
    http, tracker, fleet, route
):
    first, second = await trip_tokens(http, fleet)
    exported = await export(http, fleet, "/positions/export", **range_params())
    copy = await new_device(tracker, fleet, "alpha-truck-2")

    imported = await import_gpx(http, fleet.a.admin_token, copy, exported.content)
    assert imported.status_code == 201, imported.text
    assert imported.json() == {"accepted": 50, "duplicates": 0}
    again = await import_gpx(http, fleet.a.admin_token, copy, exported.content)
    assert again.json() == {"accepted": 0, "duplicates": 50}

    read = bearer(fleet.a.read_token)
    original = (await http.get(f"/devices/{fleet.a.device_token}/trips", headers=read)).json()
    copied = (await http.get(f"/devices/{copy}/trips", headers=read)).json()
    for trip in original["items"] + copied["items"]:
        del trip["device_token"]
    assert copied == original
    assert [t["track_token"] for t in copied["items"]] == [second, first]


async def test_an_imported_backlog_does_not_become_the_live_position(http, tracker, fleet, route):
    exported = await export(http, fleet, "/positions/export", **range_params())
    copy = await new_device(tracker, fleet, "alpha-truck-3")
    await tracker.writer.submit(copy, [Position.build(latitude=10.0, longitude=20.0)])
    imported = await import_gpx(http, fleet.a.admin_token, copy, exported.content)
    assert imported.json()["accepted"] == 50
    live = await http.get(f"/devices/{copy}/position", headers=bearer(fleet.a.read_token))
    assert (live.json()["latitude"], live.json()["longitude"]) == (10.0, 20.0)


async def test_a_gpx_file_from_another_app_is_imported_as_a_trip(http, tracker, fleet):
    written = gpxpy.gpx.GPX()
    track = gpxpy.gpx.GPXTrack()
    segment = gpxpy.gpx.GPXTrackSegment()
    start = int(NOW - 5000)
    for i in range(12):
        segment.points.append(
            gpxpy.gpx.GPXTrackPoint(
                48.85 + i * 0.001, 2.35, elevation=35 + i, time=utc(start + 15 * i)
            )
        )
    track.segments.append(segment)
    written.tracks.append(track)
    device = await new_device(tracker, fleet, "alpha-truck-5")

    imported = await import_gpx(http, fleet.a.admin_token, device, written.to_xml().encode())
    assert imported.json() == {"accepted": 12, "duplicates": 0}
    read = bearer(fleet.a.read_token)
    (trip,) = (await http.get(f"/devices/{device}/trips", headers=read)).json()["items"]
    assert trip["waypoint_count"] == 12 and trip["started_at"] == start
    assert trip["start"] == {"latitude": 48.85, "longitude": 2.35}
    detail = await http.get(f"/devices/{device}/trips/{trip['track_token']}", headers=read)
    assert [w["altitude"] for w in detail.json()["waypoints"]] == [35 + i for i in range(12)]


def gpx_document(points: str, prolog: str = "") -> bytes:
    return (
        f'<?xml version="1.0"?>{prolog}<gpx version="1.1" creator="t"'
        f' xmlns="http://www.topografix.com/GPX/1/1"><trk><trkseg>{points}</trkseg></trk></gpx>'
    ).encode()


BILLION_LAUGHS = gpx_document(
    '<trkpt lat="1" lon="1"><time>2026-01-01T00:00:00Z</time><name>&lol9;</name></trkpt>',
    '<!DOCTYPE gpx [<!ENTITY lol "lol">'
    + "".join(
        f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">'
        for i in range(1, 10)
    )
    + "]>",
)
EXTERNAL_ENTITY = gpx_document(
    '<trkpt lat="1" lon="1"><time>2026-01-01T00:00:00Z</time><name>&secret;</name></trkpt>',
    '<!DOCTYPE gpx [<!ENTITY secret SYSTEM "file:///etc/passwd">]>',
)


async def test_hostile_or_malformed_gpx_is_refused_and_nothing_is_stored(http, tracker, fleet):
    device = await new_device(tracker, fleet, "alpha-truck-4")
    admin = fleet.a.admin_token
    cases = [
        (BILLION_LAUGHS, 400, "DTD"),
        (EXTERNAL_ENTITY, 400, "DTD"),
        (b"<gpx><trk><trkseg><trkpt", 400, "well-formed"),
        (b'<kml xmlns="http://www.opengis.net/kml/2.2"/>', 400, "not a GPX"),
        (gpx_document(""), 400, "no track points"),
        (gpx_document('<trkpt lat="1" lon="1"/>'), 422, "time"),
        (
            gpx_document('<trkpt lat="91" lon="1"><time>2026-01-01T00:00:00Z</time></trkpt>'),
            422,
            "latitude",
        ),
        (
            gpx_document('<trkpt lat="x" lon="1"><time>2026-01-01T00:00:00Z</time></trkpt>'),
            422,
            "lat",
        ),
    ]
    for body, status, word in cases:
        response = await import_gpx(http, admin, device, body)
        assert response.status_code == status, (body[:80], response.text)
        assert word in response.json()["error"]["message"], (body[:80], response.text)
    wrong_type = await import_gpx(http, admin, device, gpx_document(""), "application/json")
    assert wrong_type.status_code == 415
    assert "gpx" in wrong_type.json()["error"]["message"]
    huge = await import_gpx(http, admin, device, b" " * (20 * 1024 * 1024 + 1))
    assert huge.status_code == 413
    trips = await http.get(f"/devices/{device}/trips", headers=bearer(fleet.a.read_token))
    assert trips.json()["total"] == 0


async def test_only_an_admin_of_the_devices_instance_may_import(http, tracker, fleet, route):
    body = (await export(http, fleet, "/positions/export", **range_params())).content
    read_only = await import_gpx(http, fleet.a.read_token, fleet.a.device_token, body)
    assert read_only.status_code == 403
    other = await import_gpx(http, fleet.a.admin_token, fleet.b.device_token, body)
    assert other.status_code == 404


# -- a million positions -----------------------------------------------------------

MILLION = 1_000_000
TRIPS = 10


def seed_million(path: Path, device_token: str) -> tuple[float, float]:
    """A million fixes of one device, 10 trips of 100,000, straight into SQLite
    (not synced: a test's database need not survive a power cut), in the last
    two weeks, so that the server's retention keeps them."""
    db = Database(path, "off")
    start = float(int(time.time()) - 14 * 24 * 3600)
    per_trip = MILLION // TRIPS
    for number in range(TRIPS):
        base = start + number * (per_trip + 1000)
        fixes = [
            Position(
                latitude=45 + (i % 1000) * 1e-4,
                longitude=7 + number * 1e-3,
                timestamp=base + i,
                speed=10.0,
                heading=90.0,
                accuracy=5.0,
                altitude=300.0,
            )
            for i in range(per_trip)
        ]
        trip = recount(device_token, f"trip-{number}", fixes)
        db.write_sync(
            positions_store.insert_many,
            [(device_token, trip.track_token, fix) for fix in fixes],
            start,
        )
        db.write_sync(trips_store.save, [trip])
    db.close()
    return start, start + TRIPS * (per_trip + 1000)


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.slow
def test_a_million_position_gpx_streams_in_flat_server_memory(tmp_path):
    process = ServerProcess(tmp_path)
    db = Database(tmp_path / "tracker.db")
    instance = db.write_sync(instances.create, "Big Fleet")
    db.write_sync(devices.create, instance.id, "van-3", {})
    db.close()
    low, high = seed_million(tmp_path / "tracker.db", "van-3")
    token = process.cli("token", "create", "--instance", instance.id, "--scope", "read").strip()
    process.start()
    try:
        url = f"{process.url}/api/v1/devices/van-3/positions/export"
        headers = bearer(token)
        warm = httpx.get(url, params={"from": low, "to": low + 20_000}, headers=headers)
        assert warm.status_code == 200 and warm.text.count("<trkpt ") == 20_001
        baseline = rss_bytes(process.process.pid)
        peak = baseline
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, rss_bytes(process.process.pid))
                time.sleep(0.02)

        sampler = threading.Thread(target=sample)
        sampler.start()
        points, tail = 0, b""
        try:
            params = {"from": low, "to": high}
            with httpx.stream("GET", url, params=params, headers=headers, timeout=60) as response:
                assert response.status_code == 200
                assert "van-3_" in response.headers["content-disposition"]
                for chunk in response.iter_bytes():
                    joined = tail + chunk
                    points += joined.count(b"<trkpt ")
                    tail = joined[-6:]
        finally:
            done.set()
            sampler.join()
        assert points == MILLION
        growth = peak - baseline
        print(
            f"\nserver RSS {baseline / 2**20:.1f} MiB, peak {peak / 2**20:.1f} MiB while streaming"
        )
        assert growth < 50 * 2**20, f"the server grew by {growth / 2**20:.1f} MiB"
    finally:
        process.process.kill()
        process.process.wait()
