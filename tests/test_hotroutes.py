"""The hot HTTP routes (tracker/hotroutes.py) answer exactly as the Quart handlers do.

Each request is sent twice, in-process: once through the app's ASGI stack
(where the fast path sits) and once straight to the Quart app behind it, and
the two answers (status, headers, body) must be the same. A running server
must see a device changed by the command line in another process on the
very next request.
"""

from __future__ import annotations

import base64
import json
import time

import httpx
import pytest
import trio

from tests.conftest import ServerProcess, bearer, sqlite_only
from tracker.errors import StorageUnavailable
from tracker.writer import DeviceGone

API = "/api/v1"


class Answer:
    def __init__(self) -> None:
        self.status: int | None = None
        self.headers: list[tuple[str, str]] = []
        self.body = b""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Answer) and (self.status, self.headers, self.body) == (
            other.status,
            other.headers,
            other.body,
        )

    def __repr__(self) -> str:
        return f"Answer({self.status}, {self.headers}, {self.body[:300]!r})"


async def asgi_call(
    asgi,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    query: str = "",
    content_length: bool = True,
) -> Answer:
    head = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    if content_length and (body or method == "POST"):
        head.append((b"content-length", str(len(body)).encode()))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": head,
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8080),
        "extensions": {},
    }
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict:
        if messages:
            return messages.pop()
        await trio.sleep_forever()

    answer = Answer()

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            answer.status = message["status"]
            answer.headers = sorted(
                (k.decode().lower(), v.decode()) for k, v in message.get("headers", [])
            )
        else:
            answer.body += message.get("body", b"")

    with trio.fail_after(10):
        await asgi(scope, receive, send)
    return answer


@pytest.fixture
async def both(app, fleet):
    """(the stack with the fast path, Quart alone), with the app's lifespan running."""
    tracker = app.extensions["tracker"]
    hot = tracker.websockets.inner
    async with app.test_app():
        yield hot, hot.inner


BASE = time.time() - 600


def fix(offset: float = 0, **extra) -> bytes:
    return json.dumps(
        {"latitude": 52.5, "longitude": 13.4, "timestamp": BASE + offset, **extra}
    ).encode()


def basic(user: str, password: str) -> dict[str, str]:
    credentials = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {credentials}"}


JSON = {"Content-Type": "application/json"}


# On PostgreSQL the hot routes have no on-loop reads (HotReads needs SQLite's
# data_version) and hand every request to the framework: correct, not fast.
@sqlite_only
async def test_a_phone_posting_its_position_is_answered_without_the_framework(app, fleet, both):
    hot, quart = both
    tracker = app.extensions["tracker"]

    async def no_framework(scope, receive, send):
        raise AssertionError(f"the framework was asked: {scope['method']} {scope['path']}")

    hot.inner = no_framework
    try:
        native = {**JSON, "X-Ingest-Key": fleet.a.ingest_key}
        path = f"{API}/devices/{fleet.a.device_token}/positions"
        fast = await asgi_call(hot, "POST", path, native, fix(1))
        assert (fast.status, json.loads(fast.body)) == (201, {"accepted": 1, "duplicates": 0})
        jwt = {**JSON, **bearer(fleet.a.ingest_token)}
        assert (await asgi_call(hot, "POST", path, jwt, fix(2))).status == 201
        key = fleet.a.ingest_key
        osmand = await asgi_call(
            hot, "GET", "/ingest/osmand", query=f"id={key}&lat=52.6&lon=13.5&timestamp=1"
        )
        assert osmand.status == 200
        owntracks = await asgi_call(
            hot,
            "POST",
            "/ingest/owntracks",
            {**JSON, **basic(fleet.a.device_token, key)},
            json.dumps(
                {"_type": "location", "lat": 52.7, "lon": 13.6, "tst": int(time.time())}
            ).encode(),
        )
        assert (owntracks.status, owntracks.body) == (200, b"[]")
        position = await asgi_call(
            hot,
            "GET",
            f"{API}/devices/{fleet.a.device_token}/position",
            bearer(fleet.a.read_token),
        )
        assert position.status == 200
        assert json.loads(position.body)["latitude"] == 52.7  # the OwnTracks fix just committed
    finally:
        hot.inner = quart
    counted = tracker.metrics.exposition().decode()
    assert any("owntracks" in line and '"200"' in line for line in counted.splitlines())


async def test_successful_answers_are_the_frameworks(app, fleet, both):
    hot, quart = both
    path = f"{API}/devices/{fleet.a.device_token}/positions"
    native = {**JSON, "X-Ingest-Key": fleet.a.ingest_key}
    fast = await asgi_call(hot, "POST", path, native, fix(10))
    slow = await asgi_call(quart, "POST", path, native, fix(11))
    assert fast == slow
    duplicate = await asgi_call(hot, "POST", path, native, fix(11))
    assert json.loads(duplicate.body) == {"accepted": 0, "duplicates": 1}
    for query in (
        "",
        f"instance_id={fleet.a.instance_id}",
        "timezone=Europe/Berlin&date_format=iso",
        "timezone=America%2FNew_York&date_format=human&timezone=UTC",
    ):
        reads = [
            await asgi_call(
                asgi,
                "GET",
                f"{API}/devices/{fleet.a.device_token}/position",
                bearer(fleet.a.read_token),
                query=query,
            )
            for asgi in (hot, quart)
        ]
        assert reads[0] == reads[1]
        assert reads[0].status == 200
    key = fleet.a.ingest_key
    for index, asgi in enumerate((hot, quart)):
        gpslogger = await asgi_call(
            asgi, "POST", "/ingest/gpslogger", query=f"id={key}&lat=1&lon=2&timestamp={index + 5}"
        )
        assert (gpslogger.status, gpslogger.body) == (200, b"")
        assert ("content-type", "text/html; charset=utf-8") in gpslogger.headers


ERROR_CASES = [
    ("wrong ingest key", "POST", "native", {**JSON, "X-Ingest-Key": "nope"}, fix(), ""),
    ("another device's key", "POST", "native", {**JSON, "X-Ingest-Key": "KEY_B"}, fix(), ""),
    ("no credentials", "POST", "native", JSON, fix(), ""),
    ("read scope cannot ingest", "POST", "native", {**JSON, "Authorization": "READ"}, fix(), ""),
    ("other instance's token", "POST", "native", {**JSON, "Authorization": "ADMIN_B"}, fix(), ""),
    ("garbage token", "POST", "native", {**JSON, "Authorization": "Bearer x.y.z"}, fix(), ""),
    ("not JSON", "POST", "native", {**JSON, "X-Ingest-Key": "KEY_A"}, b"{oops", ""),
    ("NaN", "POST", "native", {**JSON, "X-Ingest-Key": "KEY_A"}, b'{"latitude": NaN}', ""),
    (
        "latitude out of range",
        "POST",
        "native",
        {**JSON, "X-Ingest-Key": "KEY_A"},
        fix(latitude=91),
        "",
    ),
    ("empty body", "POST", "native", {**JSON, "X-Ingest-Key": "KEY_A"}, b"", ""),
    (
        "form content type",
        "POST",
        "native",
        {"Content-Type": "application/x-www-form-urlencoded", "X-Ingest-Key": "KEY_A"},
        b"a=1",
        "",
    ),
    (
        "body over the limit",
        "POST",
        "native",
        {**JSON, "X-Ingest-Key": "KEY_A"},
        b" " * (1024 * 1024 + 1),
        "",
    ),
    ("no token on read", "GET", "position", {}, b"", ""),
    ("ingest scope cannot read", "GET", "position", {"Authorization": "INGEST"}, b"", ""),
    ("device of another instance", "GET", "position", {"Authorization": "READ_B"}, b"", ""),
    ("bad time zone", "GET", "position", {"Authorization": "READ"}, b"", "timezone=Mars/Base"),
    ("bad date format", "GET", "position", {"Authorization": "READ"}, b"", "date_format=x"),
    ("bad escape", "GET", "position", {"Authorization": "READ"}, b"", "timezone=%ff%2F"),
    ("instance not in token", "GET", "position", {"Authorization": "READ"}, b"", "instance_id=z"),
    ("unknown OsmAnd id", "GET", "/ingest/osmand", {}, b"", "id=nope&lat=1&lon=2"),
    ("OsmAnd without fix", "GET", "/ingest/osmand", {}, b"", "id=KEY_A"),
    ("OsmAnd bad lat", "GET", "/ingest/osmand", {}, b"", "id=KEY_A&lat=x&lon=2"),
    ("OwnTracks wrong key", "POST", "/ingest/owntracks", "BASIC_WRONG", b"{}", ""),
    ("OwnTracks no auth", "POST", "/ingest/owntracks", JSON, b"{}", ""),
    ("OwnTracks bad JSON", "POST", "/ingest/owntracks", "BASIC_A", b"{", ""),
    ("OwnTracks not a location", "POST", "/ingest/owntracks", "BASIC_A", b'{"_type":"lwt"}', ""),
]


@pytest.mark.parametrize(
    "method,target,headers,body,query",
    [case[1:] for case in ERROR_CASES],
    ids=[case[0] for case in ERROR_CASES],
)
async def test_refusals_are_the_frameworks(app, fleet, both, method, target, headers, body, query):
    hot, quart = both
    tracker = app.extensions["tracker"]
    stand_ins = {
        "KEY_A": fleet.a.ingest_key,
        "KEY_B": fleet.b.ingest_key,
        "READ": f"Bearer {fleet.a.read_token}",
        "READ_B": f"Bearer {fleet.b.read_token}",
        "INGEST": f"Bearer {fleet.a.ingest_token}",
        "ADMIN_B": f"Bearer {fleet.b.admin_token}",
    }
    if headers == "BASIC_A":
        headers = {**JSON, **basic(fleet.a.device_token, fleet.a.ingest_key)}
    elif headers == "BASIC_WRONG":
        headers = {**JSON, **basic(fleet.a.device_token, "wrong")}
    headers = {name: stand_ins.get(value, value) for name, value in headers.items()}
    query = query.replace("KEY_A", fleet.a.ingest_key)
    path = {
        "native": f"{API}/devices/{fleet.a.device_token}/positions",
        "position": f"{API}/devices/{fleet.a.device_token}/position",
    }.get(target, target)
    if target == "position":  # a position to read, so only the refusal differs
        tracker_client = {**JSON, "X-Ingest-Key": fleet.a.ingest_key}
        await asgi_call(
            hot, "POST", f"{API}/devices/{fleet.a.device_token}/positions", tracker_client, fix()
        )
    before = tracker.metrics.exposition()
    fast = await asgi_call(hot, method, path, headers, body, query)
    middle = tracker.metrics.exposition()
    slow = await asgi_call(quart, method, path, headers, body, query)
    after = tracker.metrics.exposition()
    assert fast == slow
    assert fast.status is not None
    assert _moved(before, middle) == _moved(middle, after)  # the same counters, once each


def _moved(before: bytes, after: bytes) -> set[str]:
    """The counters whose value changed (series' creation times aside)."""
    old = set(before.decode().splitlines())
    return {
        line.rsplit(" ", 1)[0]
        for line in after.decode().splitlines()
        if line not in old and not line.startswith("#") and "_created" not in line
    }


async def test_a_device_posting_with_no_position_yet_reads_a_404_as_before(app, fleet, both):
    hot, quart = both
    path = f"{API}/devices/{fleet.b.device_token}/position"
    fast = await asgi_call(hot, "GET", path, bearer(fleet.b.read_token))
    assert fast == await asgi_call(quart, "GET", path, bearer(fleet.b.read_token))
    assert fast.status == 404


@pytest.mark.parametrize(
    "failure",
    [StorageUnavailable("disk full"), DeviceGone()],
    ids=["storage unavailable", "device removed before the commit"],
)
async def test_a_failed_commit_is_answered_as_the_framework_answers_it(
    app, fleet, both, monkeypatch, failure
):
    hot, quart = both
    tracker = app.extensions["tracker"]

    async def failing_submit(device_token, positions):
        raise failure

    monkeypatch.setattr(tracker.writer, "submit", failing_submit)
    path = f"{API}/devices/{fleet.a.device_token}/positions"
    native = {**JSON, "X-Ingest-Key": fleet.a.ingest_key}
    fast = await asgi_call(hot, "POST", path, native, fix())
    assert fast == await asgi_call(quart, "POST", path, native, fix())
    assert fast.status in (503, 404)
    if fast.status == 503:
        assert ("retry-after", "30") in fast.headers


async def test_a_chunked_body_is_left_to_the_framework(app, fleet, both):
    hot, quart = both
    path = f"{API}/devices/{fleet.a.device_token}/positions"
    chunked = {**JSON, "X-Ingest-Key": fleet.a.ingest_key, "Transfer-Encoding": "chunked"}
    fast = await asgi_call(hot, "POST", path, chunked, fix(20), content_length=False)
    assert fast.status == 201


async def test_a_refused_body_leaves_the_keep_alive_connection_usable(fleet, http):
    """Refusals the framework answers get the whole body, read once, over real sockets."""
    path = f"/devices/{fleet.a.device_token}/positions"
    key = {"X-Ingest-Key": fleet.a.ingest_key}
    form = {**key, "Content-Type": "application/x-www-form-urlencoded"}
    refused = await http.post(path, content=b"latitude=1&longitude=2" * 100, headers=form)
    assert refused.status_code == 415
    invalid = await http.post(path, content=fix(30, latitude=91), headers={**JSON, **key})
    assert invalid.status_code == 422
    wrong = await http.post(path, content=fix(31), headers={**JSON, "X-Ingest-Key": "wrong"})
    assert wrong.status_code == 401
    accepted = await http.post(path, content=fix(32), headers={**JSON, **key})
    assert (accepted.status_code, accepted.json()) == (201, {"accepted": 1, "duplicates": 0})


@pytest.fixture
def live(tmp_path):
    server = ServerProcess(tmp_path, env={"TRACKER_AUTH_JWT_SECRET": "h" * 48})
    yield server
    if server.process and server.process.poll() is None:
        server.process.kill()
        server.process.wait()


@pytest.mark.slow
async def test_a_device_changed_by_the_command_line_is_seen_on_the_next_request(live):
    instance_id = json.loads(live.cli("instance", "create", "Live", "--json"))["instance_id"]
    device = json.loads(live.cli("device", "add", "--instance", instance_id, "--json"))
    token, old_key = device["device_token"], device["ingest_key"]
    admin = live.cli("token", "create", "--instance", instance_id, "--scope", "admin").strip()
    live.start()
    url = f"{live.url}{API}/devices/{token}"
    async with httpx.AsyncClient(timeout=10) as http:

        async def post(key: str, offset: float) -> int:
            answer = await http.post(
                f"{url}/positions", content=fix(offset), headers={**JSON, "X-Ingest-Key": key}
            )
            return answer.status_code

        assert await post(old_key, 1) == 201  # the key is now in the server's cache
        assert (await http.get(f"{url}/position", headers=bearer(admin))).status_code == 200
        new_key = json.loads(live.cli("device", "rotate-key", token, "--json"))["ingest_key"]
        assert await post(old_key, 2) == 401
        assert await post(new_key, 3) == 201
        live.cli("device", "remove", token)
        assert await post(new_key, 4) == 401
        assert (await http.get(f"{url}/position", headers=bearer(admin))).status_code == 404
