"""Every failure is a JSON error with the right status; hostile JSON is a 400, never a 500."""

import pytest
import trio

from tests.conftest import bearer


def assert_json_error(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert isinstance(error["message"], str) and error["message"]
    if code:
        assert error["code"] == code
    return error


HOSTILE_BODIES = {
    "NaN": b'{"instance_id": NaN}',
    "Infinity": b'{"instance_id": "x", "profile": {"full_name": Infinity}}',
    "1e999": b'{"instance_id": 1e999}',
    "lone surrogate": b'{"instance_id": "\\ud800"}',
    "50,000-deep nesting": b"[" * 50_000 + b"]" * 50_000,
    "truncated": b'{"instance_id": ',
    "not utf-8": b'{"instance_id": "\xff\xfe"}',
}


@pytest.mark.parametrize("kind", list(HOSTILE_BODIES))
async def test_hostile_json_is_a_400_naming_the_problem(http, fleet, kind):
    response = await http.post(
        "/devices",
        content=HOSTILE_BODIES[kind],
        headers={**bearer(fleet.a.admin_token), "Content-Type": "application/json"},
    )
    assert_json_error(response, 400, "bad_request")


async def test_unknown_route_is_a_json_404(http):
    assert_json_error(await http.get("/no/such/thing"), 404, "not_found")


async def test_wrong_method_is_a_json_405(http):
    assert_json_error(await http.put("/health"), 405, "method_not_allowed")


async def test_oversized_body_is_a_json_413(http, fleet):
    response = await http.post(
        "/devices",
        content=b'{"instance_id": "' + b"x" * (2 * 1024 * 1024) + b'"}',
        headers={**bearer(fleet.a.admin_token), "Content-Type": "application/json"},
    )
    assert_json_error(response, 413, "payload_too_large")


async def test_non_json_body_is_a_json_415(http, fleet):
    response = await http.post(
        "/devices",
        content=b"instance_id=x",
        headers={
            **bearer(fleet.a.admin_token),
            "Content-Type": "application/x-www-form-urlencoded",
        },
    )
    assert_json_error(response, 415, "unsupported_media_type")


async def test_invalid_field_is_a_422_naming_the_field(http, fleet):
    response = await http.post(
        "/devices",
        json={"instance_id": fleet.a.instance_id, "display_field": "shoe_size"},
        headers=bearer(fleet.a.admin_token),
    )
    error = assert_json_error(response, 422, "invalid")
    assert "display_field" in error["message"]


async def test_control_characters_in_a_name_are_refused(http, fleet):
    response = await http.post(
        "/devices",
        json={"instance_id": fleet.a.instance_id, "profile": {"full_name": "Evil\u202eName"}},
        headers=bearer(fleet.a.admin_token),
    )
    error = assert_json_error(response, 422)
    assert "profile.full_name" in error["message"]


async def test_stalled_body_gets_a_json_408(server, app):
    app.config["BODY_TIMEOUT"] = 0.5
    host, port = server.url.removeprefix("http://").split(":")
    stream = await trio.open_tcp_stream(host, int(port))
    await stream.send_all(
        b"POST /api/v1/devices HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b'Content-Length: 100\r\n\r\n{"instance'
    )
    reply = b""
    with trio.fail_after(5):
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            chunk = await stream.receive_some(65536)
            if not chunk:
                break
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 408")
    assert b'"code":"request_timeout"' in reply
    await stream.aclose()


async def test_keep_alive_connection_survives_an_early_401_with_a_body(http):
    for _ in range(5):
        refused = await http.post("/devices", json={"instance_id": "x" * 5000})
        assert refused.status_code == 401
    assert (await http.get("/health")).status_code == 200
