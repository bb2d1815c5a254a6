"""Dispatchers choose how each driver is named, and pull fresh profiles from the company's user service.

Every test talks to the real server over loopback. The refresh stories also
start a real HTTP user service on loopback (a small Quart-Trio app under
Hypercorn) whose answer for each device is scripted: a profile, an error
status, silence past the timeout, or malformed JSON.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import partial

import httpx
import pytest
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve
from quart import Response, request
from quart_trio import QuartTrio

from tests.conftest import Fleet, LiveServer, bearer, free_port, make_tenant, start_server
from tracker.app import create_app
from tracker.config import Settings

ALLOWED_FIELDS = ("full_name", "first_name", "last_name", "nickname", "email", "phone", "client_id")
USER_SERVICE_TOKEN = "user-service-secret"
TIMEOUT_SECONDS = 0.5


async def register(http, tenant, device_token: str, profile: dict | None = None) -> None:
    body = {"instance_id": tenant.instance_id, "device_token": device_token}
    if profile is not None:
        body["profile"] = profile
    response = await http.post("/devices", json=body, headers=bearer(tenant.admin_token))
    assert response.status_code == 201, response.text


async def metadata_of(http, tenant, device_token: str) -> dict:
    response = await http.get(
        f"/devices/{device_token}/metadata", headers=bearer(tenant.read_token)
    )
    assert response.status_code == 200, response.text
    return response.json()


async def display_identifier(http, tenant, device_token: str) -> str:
    response = await http.get(
        f"/devices/{device_token}/position",
        params={"instance_id": tenant.instance_id},
        headers=bearer(tenant.read_token),
    )
    assert response.status_code == 200, response.text
    return response.json()["display_identifier"]


async def report_position(http, tenant) -> None:
    response = await http.post(
        f"/devices/{tenant.device_token}/positions",
        json={"latitude": 51.5, "longitude": -0.12, "timestamp": int(time.time()) - 5},
        headers={"X-Ingest-Key": tenant.ingest_key},
    )
    assert response.status_code == 201, response.text


def error_of(response: httpx.Response) -> dict:
    return response.json()["error"]


# -- reading -----------------------------------------------------------------


async def test_dispatcher_reads_a_drivers_name_field_and_profile(http, fleet):
    expected = {
        "device_token": fleet.a.device_token,
        "display_field": "full_name",
        "display_value": "Alpha Driver",
        "profile": {"full_name": "Alpha Driver"},
    }
    assert await metadata_of(http, fleet.a, fleet.a.device_token) == expected
    named = await http.get(
        f"/devices/{fleet.a.device_token}/metadata",
        params={"instance_id": fleet.a.instance_id},
        headers=bearer(fleet.a.admin_token),
    )
    assert named.status_code == 200 and named.json() == expected


async def test_metadata_of_an_unknown_device_is_404(http, fleet):
    response = await http.get("/devices/no-such-truck/metadata", headers=bearer(fleet.a.read_token))
    assert response.status_code == 404
    assert error_of(response)["code"] == "not_found"


async def test_another_fleets_devices_are_invisible_and_its_instance_forbidden(http, fleet):
    foreign = await http.get(
        f"/devices/{fleet.b.device_token}/metadata", headers=bearer(fleet.a.read_token)
    )
    unknown = await http.get("/devices/no-such-truck/metadata", headers=bearer(fleet.a.read_token))
    assert foreign.status_code == 404 and foreign.json() == unknown.json()
    own_instance = await http.get(
        f"/devices/{fleet.b.device_token}/metadata",
        params={"instance_id": fleet.a.instance_id},
        headers=bearer(fleet.a.read_token),
    )
    assert own_instance.status_code == 404
    for method, path, body in [
        ("GET", f"/devices/{fleet.b.device_token}/metadata", None),
        ("GET", "/devices/metadata", None),
        (
            "PATCH",
            f"/devices/{fleet.b.device_token}/metadata/display-field",
            {"display_field": "email"},
        ),
        (
            "POST",
            "/devices/metadata/display-field/bulk",
            {"mappings": [{"device_token": fleet.b.device_token, "display_field": "email"}]},
        ),
        ("POST", f"/devices/{fleet.b.device_token}/metadata/refresh", None),
        ("POST", "/devices/metadata/refresh", None),
    ]:
        response = await http.request(
            method,
            path,
            params={"instance_id": fleet.b.instance_id},
            json=body,
            headers=bearer(fleet.a.admin_token),
        )
        assert response.status_code == 403, (method, path, response.text)
    assert (await metadata_of(http, fleet.b, fleet.b.device_token))["display_field"] == "full_name"


async def test_a_read_token_reads_but_cannot_change_and_an_ingest_token_cannot_read(http, fleet):
    change = await http.patch(
        f"/devices/{fleet.a.device_token}/metadata/display-field",
        json={"display_field": "email"},
        headers=bearer(fleet.a.read_token),
    )
    assert change.status_code == 403
    refresh = await http.post(
        f"/devices/{fleet.a.device_token}/metadata/refresh", headers=bearer(fleet.a.read_token)
    )
    assert refresh.status_code == 403
    read = await http.get(
        f"/devices/{fleet.a.device_token}/metadata", headers=bearer(fleet.a.ingest_token)
    )
    assert read.status_code == 403
    anonymous = await http.get(f"/devices/{fleet.a.device_token}/metadata")
    assert anonymous.status_code == 401


async def test_dispatcher_pages_through_the_fleets_metadata(http, fleet):
    for number in (2, 3, 4):
        await register(http, fleet.a, f"alpha-truck-{number}", {"nickname": f"Truck {number}"})
    first = await http.get(
        "/devices/metadata",
        params={"instance_id": fleet.a.instance_id, "limit": 3},
        headers=bearer(fleet.a.read_token),
    )
    assert first.status_code == 200
    body = first.json()
    assert (body["total"], body["limit"], body["offset"]) == (4, 3, 0)
    assert [item["device_token"] for item in body["items"]] == [
        "alpha-truck-1",
        "alpha-truck-2",
        "alpha-truck-3",
    ]
    assert body["items"][1] == {
        "device_token": "alpha-truck-2",
        "display_field": "full_name",
        "display_value": "Truck 2",  # no full name: the nickname stands in
        "profile": {"nickname": "Truck 2"},
    }
    rest = await http.get(
        "/devices/metadata",
        params={"instance_id": fleet.a.instance_id, "limit": 3, "offset": 3},
        headers=bearer(fleet.a.read_token),
    )
    assert [item["device_token"] for item in rest.json()["items"]] == ["alpha-truck-4"]
    assert rest.json()["total"] == 4


async def test_listing_needs_an_instance_and_a_page_size_from_1_to_500(http, fleet):
    missing = await http.get("/devices/metadata", headers=bearer(fleet.a.read_token))
    assert missing.status_code == 400
    assert "instance_id" in error_of(missing)["message"]
    for limit in (0, 501):
        response = await http.get(
            "/devices/metadata",
            params={"instance_id": fleet.a.instance_id, "limit": limit},
            headers=bearer(fleet.a.read_token),
        )
        assert response.status_code == 400
        assert str(limit) in error_of(response)["message"]
    unknown = await http.get(
        "/devices/metadata",
        params={"instance_id": "5b0c1d2e-0000-4000-8000-000000000000"},
        headers=bearer(fleet.super_admin_token),
    )
    assert unknown.status_code == 404


# -- choosing the display field ----------------------------------------------


async def test_choosing_the_nickname_renames_the_driver_on_the_next_position_read(http, fleet):
    profile = {"full_name": "Alpha Driver", "nickname": "Ace", "email": "ace@alpha.test"}
    put = await http.put(
        f"/devices/{fleet.a.device_token}/profile",
        json=profile,
        headers=bearer(fleet.a.admin_token),
    )
    assert put.status_code == 200
    await report_position(http, fleet.a)
    assert await display_identifier(http, fleet.a, fleet.a.device_token) == "Alpha Driver"

    response = await http.patch(
        f"/devices/{fleet.a.device_token}/metadata/display-field",
        params={"instance_id": fleet.a.instance_id},
        json={"display_field": "nickname"},
        headers=bearer(fleet.a.admin_token),
    )
    assert response.status_code == 200
    assert response.json() == {
        "device_token": fleet.a.device_token,
        "display_field": "nickname",
        "display_value": "Ace",
        "profile": profile,
    }
    assert await display_identifier(http, fleet.a, fleet.a.device_token) == "Ace"


async def test_a_chosen_field_left_empty_falls_back_so_no_driver_is_nameless(http, fleet):
    await register(http, fleet.a, "alpha-van-9")
    for token, field_name, expected in [
        (fleet.a.device_token, "phone", "Alpha Driver"),  # no phone: full name
        ("alpha-van-9", "first_name", "alpha-van-9"),  # no profile at all: the token
    ]:
        response = await http.patch(
            f"/devices/{token}/metadata/display-field",
            json={"display_field": field_name},
            headers=bearer(fleet.a.admin_token),
        )
        assert response.status_code == 200
        assert response.json()["display_field"] == field_name
        assert response.json()["display_value"] == expected


async def test_an_unknown_display_field_is_refused_naming_the_allowed_ones(http, fleet):
    response = await http.patch(
        f"/devices/{fleet.a.device_token}/metadata/display-field",
        json={"display_field": "shoe_size"},
        headers=bearer(fleet.a.admin_token),
    )
    assert response.status_code == 422
    error = error_of(response)
    assert error["details"][0]["field"] == "display_field"
    assert all(name in error["message"] for name in ALLOWED_FIELDS)
    assert (await metadata_of(http, fleet.a, fleet.a.device_token))["display_field"] == "full_name"


async def test_changing_the_field_of_an_unknown_or_foreign_device_is_404(http, fleet):
    for token in ("no-such-truck", fleet.b.device_token):
        response = await http.patch(
            f"/devices/{token}/metadata/display-field",
            json={"display_field": "email"},
            headers=bearer(fleet.a.admin_token),
        )
        assert response.status_code == 404
    assert (await metadata_of(http, fleet.b, fleet.b.device_token))["display_field"] == "full_name"


# -- bulk ----------------------------------------------------------------------


async def test_bulk_sets_each_drivers_field_in_one_call(http, fleet):
    await register(
        http, fleet.a, "alpha-truck-2", {"full_name": "Bo Berg", "email": "bo@alpha.test"}
    )
    response = await http.post(
        "/devices/metadata/display-field/bulk",
        params={"instance_id": fleet.a.instance_id},
        json={
            "mappings": [
                {"device_token": "alpha-truck-2", "display_field": "email"},
                {"device_token": fleet.a.device_token, "display_field": "client_id"},
            ]
        },
        headers=bearer(fleet.a.admin_token),
    )
    assert response.status_code == 200
    body = response.json()
    assert body["updated"] == 2
    assert [
        (item["device_token"], item["display_field"], item["display_value"])
        for item in body["items"]
    ] == [
        ("alpha-truck-2", "email", "bo@alpha.test"),
        (fleet.a.device_token, "client_id", "Alpha Driver"),
    ]
    assert (await metadata_of(http, fleet.a, "alpha-truck-2"))["display_value"] == "bo@alpha.test"


@pytest.mark.parametrize(
    ("bad_mapping", "named"),
    [
        (
            {"device_token": "alpha-truck-3", "display_field": "shoe_size"},
            "mappings[2].display_field",
        ),
        ({"device_token": "no-such-truck", "display_field": "email"}, "mappings[2].device_token"),
        ({"device_token": "bravo-truck-1", "display_field": "email"}, "mappings[2].device_token"),
        ({"device_token": "alpha-truck-1", "display_field": "email"}, "mappings[2].device_token"),
    ],
    ids=["unknown field", "unknown device", "another fleet's device", "same device twice"],
)
async def test_one_bad_mapping_refuses_the_whole_bulk_change(http, fleet, bad_mapping, named):
    await register(
        http, fleet.a, "alpha-truck-2", {"full_name": "Bo Berg", "email": "bo@alpha.test"}
    )
    await register(http, fleet.a, "alpha-truck-3", {"full_name": "Cy Carr"})
    mappings = [
        {"device_token": "alpha-truck-1", "display_field": "nickname"},
        {"device_token": "alpha-truck-2", "display_field": "email"},
        bad_mapping,
    ]
    response = await http.post(
        "/devices/metadata/display-field/bulk",
        params={"instance_id": fleet.a.instance_id},
        json={"mappings": mappings},
        headers=bearer(fleet.a.admin_token),
    )
    assert response.status_code == 422
    error = error_of(response)
    assert named in error["message"]
    assert [detail["field"] for detail in error["details"]] == [named]
    if named.endswith("display_field"):
        assert all(name in error["message"] for name in ALLOWED_FIELDS)
    for token in ("alpha-truck-1", "alpha-truck-2", "alpha-truck-3"):
        assert (await metadata_of(http, fleet.a, token))["display_field"] == "full_name"
    assert (await metadata_of(http, fleet.b, fleet.b.device_token))["display_field"] == "full_name"


async def test_bulk_needs_an_instance_and_at_most_500_mappings(http, fleet):
    one = {"mappings": [{"device_token": fleet.a.device_token, "display_field": "email"}]}
    missing = await http.post(
        "/devices/metadata/display-field/bulk", json=one, headers=bearer(fleet.a.admin_token)
    )
    assert missing.status_code == 400
    too_many = {
        "mappings": [{"device_token": f"t{i}", "display_field": "email"} for i in range(501)]
    }
    response = await http.post(
        "/devices/metadata/display-field/bulk",
        params={"instance_id": fleet.a.instance_id},
        json=too_many,
        headers=bearer(fleet.a.admin_token),
    )
    assert response.status_code == 422
    assert "mappings" in error_of(response)["message"]


# -- refresh -------------------------------------------------------------------


async def test_without_a_user_service_refresh_recomputes_from_stored_profiles(http, fleet):
    await register(http, fleet.a, "alpha-truck-2", {"nickname": "Bo"})
    everyone = await http.post(
        "/devices/metadata/refresh",
        params={"instance_id": fleet.a.instance_id},
        headers=bearer(fleet.a.admin_token),
    )
    assert everyone.status_code == 200
    assert everyone.json() == {
        "source": "stored_profiles",
        "refreshed": [
            {"device_token": "alpha-truck-1", "display_value": "Alpha Driver"},
            {"device_token": "alpha-truck-2", "display_value": "Bo"},
        ],
        "failed": [],
    }
    one = await http.post(
        f"/devices/{fleet.a.device_token}/metadata/refresh", headers=bearer(fleet.a.admin_token)
    )
    assert one.json()["source"] == "stored_profiles"
    assert one.json()["refreshed"] == [
        {"device_token": "alpha-truck-1", "display_value": "Alpha Driver"}
    ]


async def test_refreshing_an_unknown_or_foreign_device_is_404(http, fleet):
    for token in ("no-such-truck", fleet.b.device_token):
        response = await http.post(
            f"/devices/{token}/metadata/refresh", headers=bearer(fleet.a.admin_token)
        )
        assert response.status_code == 404


@dataclass
class UserService:
    """A real HTTP user service on loopback; `answers[device_token]` scripts its reply."""

    url: str = ""
    answers: dict[str, tuple[int, bytes] | str] = field(default_factory=dict)
    requests: list[tuple[bytes, str | None]] = field(default_factory=list)  # (raw path, auth)
    delay_seconds: float = 0.0  # before every answer
    in_flight: int = 0
    most_in_flight: int = 0

    def app(self) -> QuartTrio:
        app = QuartTrio("user-service")

        @app.get("/v1/users/<path:device_token>")
        async def user(device_token: str) -> Response:
            self.requests.append((request.scope["raw_path"], request.headers.get("Authorization")))
            answer = self.answers.get(device_token, (404, b'{"error": "unknown user"}'))
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            try:
                await trio.sleep(self.delay_seconds)
            finally:
                self.in_flight -= 1
            if answer == "silence":
                await trio.sleep(60)
            status, body = answer
            return Response(body, status=status, content_type="application/json")

        return app


@pytest.fixture
async def user_service(nursery) -> UserService:
    service = UserService()
    config = HypercornConfig()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    binds = await nursery.start(
        partial(hypercorn_serve, service.app(), config, shutdown_trigger=trio.sleep_forever)
    )
    service.url = binds[0]
    return service


@dataclass
class LinkedTracker:
    server: LiveServer
    fleet: Fleet
    http: httpx.AsyncClient


async def linked_tracker(nursery, settings: Settings, user_service_url: str) -> LinkedTracker:
    settings = settings.replace(
        user_service={
            "url": user_service_url + "/v1/users/{device_token}",
            "token": USER_SERVICE_TOKEN,
            "timeout_seconds": TIMEOUT_SECONDS,
        }
    )
    app = create_app(settings)
    tracker = app.extensions["tracker"]
    fleet = Fleet(
        a=make_tenant(tracker, "Alpha"),
        b=make_tenant(tracker, "Bravo"),
        super_admin_token=tracker.verifier.mint(
            subject="root", instances="*", scope="admin", ttl_seconds=3600
        ),
    )
    server = await start_server(nursery, app, settings)
    http = httpx.AsyncClient(base_url=server.api, timeout=10)
    return LinkedTracker(server, fleet, http)


@pytest.fixture
async def linked(nursery, settings, user_service):
    """The tracker server with `[user_service]` pointing at the loopback user service."""
    linked = await linked_tracker(nursery, settings, user_service.url)
    async with linked.http:
        yield linked


def profile_answer(profile: dict) -> tuple[int, bytes]:
    import json

    return 200, json.dumps(profile).encode()


async def test_refresh_all_pulls_profiles_and_names_each_device_that_failed(linked, user_service):
    http, alpha = linked.http, linked.fleet.a
    stored = {}
    for token in ("alpha-truck-2", "alpha-truck-3", "alpha-truck-4"):
        stored[token] = {"full_name": f"Stored {token}"}
        await register(http, alpha, token, stored[token])
    user_service.answers = {
        "alpha-truck-1": profile_answer(
            {"full_name": "Alice Andersen", "nickname": "Al", "employee_grade": 7}
        ),
        "alpha-truck-2": (500, b'{"error": "database down"}'),
        "alpha-truck-3": "silence",
        "alpha-truck-4": (200, b'{"full_name": "Bro'),
    }
    await report_position(http, alpha)
    assert await display_identifier(http, alpha, alpha.device_token) == "Alpha Driver"

    with trio.fail_after(10):
        response = await http.post(
            "/devices/metadata/refresh",
            params={"instance_id": alpha.instance_id},
            headers=bearer(alpha.admin_token),
        )
    assert response.status_code == 200
    body = response.json()
    assert body["source"] == "user_service"
    assert body["refreshed"] == [
        {"device_token": "alpha-truck-1", "display_value": "Alice Andersen"}
    ]
    reasons = {failure["device_token"]: failure["reason"] for failure in body["failed"]}
    assert set(reasons) == {"alpha-truck-2", "alpha-truck-3", "alpha-truck-4"}
    assert "HTTP 500" in reasons["alpha-truck-2"]
    assert f"within {TIMEOUT_SECONDS:g} s" in reasons["alpha-truck-3"]
    assert "malformed JSON" in reasons["alpha-truck-4"]

    for token, profile in stored.items():
        assert (await metadata_of(http, alpha, token))["profile"] == profile
    refreshed = await metadata_of(http, alpha, alpha.device_token)
    assert refreshed["profile"] == {"full_name": "Alice Andersen", "nickname": "Al"}
    assert await display_identifier(http, alpha, alpha.device_token) == "Alice Andersen"
    assert {auth for _, auth in user_service.requests} == {f"Bearer {USER_SERVICE_TOKEN}"}


async def test_refreshing_one_driver_shows_the_new_name_on_the_next_position_read(
    linked, user_service
):
    http, alpha = linked.http, linked.fleet.a
    await report_position(http, alpha)
    user_service.answers[alpha.device_token] = profile_answer({"full_name": "Alice Andersen"})
    response = await http.post(
        f"/devices/{alpha.device_token}/metadata/refresh",
        params={"instance_id": alpha.instance_id},
        headers=bearer(alpha.admin_token),
    )
    assert response.status_code == 200
    assert response.json() == {
        "source": "user_service",
        "refreshed": [{"device_token": alpha.device_token, "display_value": "Alice Andersen"}],
        "failed": [],
    }
    assert await display_identifier(http, alpha, alpha.device_token) == "Alice Andersen"


async def test_refreshing_chosen_devices_reports_unknown_and_foreign_ones_as_failed(
    linked, user_service
):
    http, alpha, bravo = linked.http, linked.fleet.a, linked.fleet.b
    await register(http, alpha, "alpha-truck-2", {"full_name": "Bo Berg"})
    user_service.answers = {
        "alpha-truck-1": profile_answer({"full_name": "Alice Andersen"}),
        "alpha-truck-2": profile_answer({"full_name": "Bo Berg-Lund"}),
        bravo.device_token: profile_answer({"full_name": "Should Not Be Fetched"}),
    }
    response = await http.post(
        "/devices/metadata/refresh",
        params={"instance_id": alpha.instance_id},
        json={"device_tokens": ["alpha-truck-2", bravo.device_token, "no-such-truck"]},
        headers=bearer(alpha.admin_token),
    )
    assert response.status_code == 200
    body = response.json()
    assert body["refreshed"] == [{"device_token": "alpha-truck-2", "display_value": "Bo Berg-Lund"}]
    assert body["failed"] == [
        {"device_token": bravo.device_token, "reason": "no such device in this instance"},
        {"device_token": "no-such-truck", "reason": "no such device in this instance"},
    ]
    assert [path for path, _ in user_service.requests] == [b"/v1/users/alpha-truck-2"]
    assert (await metadata_of(http, alpha, alpha.device_token))["display_value"] == "Alpha Driver"
    assert (await metadata_of(http, bravo, bravo.device_token))["display_value"] == "Bravo Driver"


async def test_a_profile_the_rules_refuse_keeps_the_stored_one(linked, user_service):
    http, alpha = linked.http, linked.fleet.a
    for answer, reason in [
        (profile_answer({"full_name": "Eve\u202eliveD"}), "invalid profile: full_name"),
        (profile_answer({"full_name": 42}), "invalid profile: full_name"),
        (profile_answer(["not", "an", "object"]), "not an object"),
        ((404, b"{}"), "no profile for this device"),
    ]:
        user_service.answers[alpha.device_token] = answer
        response = await http.post(
            f"/devices/{alpha.device_token}/metadata/refresh", headers=bearer(alpha.admin_token)
        )
        assert response.status_code == 200
        (failure,) = response.json()["failed"]
        assert reason in failure["reason"]
        assert (await metadata_of(http, alpha, alpha.device_token))["profile"] == {
            "full_name": "Alpha Driver"
        }


async def test_device_tokens_are_url_encoded_in_the_user_service_url(linked, user_service):
    http, alpha = linked.http, linked.fleet.a
    await register(http, alpha, "van 7/b?x=1")
    user_service.answers["van 7/b?x=1"] = profile_answer({"nickname": "Seven"})
    response = await http.post(
        "/devices/metadata/refresh",
        params={"instance_id": alpha.instance_id},
        json={"device_tokens": ["van 7/b?x=1"]},
        headers=bearer(alpha.admin_token),
    )
    assert response.json()["refreshed"] == [
        {"device_token": "van 7/b?x=1", "display_value": "Seven"}
    ]
    assert [path for path, _ in user_service.requests] == [b"/v1/users/van%207%2Fb%3Fx%3D1"]


async def test_refreshing_a_big_fleet_asks_the_user_service_at_most_8_at_a_time(
    linked, user_service
):
    http, alpha = linked.http, linked.fleet.a
    tokens = [f"alpha-van-{number:02}" for number in range(20)]
    for token in tokens:
        await register(http, alpha, token)
        user_service.answers[token] = profile_answer({"nickname": token.upper()})
    user_service.delay_seconds = 0.05
    with trio.fail_after(10):
        response = await http.post(
            "/devices/metadata/refresh",
            params={"instance_id": alpha.instance_id},
            json={"device_tokens": tokens},
            headers=bearer(alpha.admin_token),
        )
    assert [item["display_value"] for item in response.json()["refreshed"]] == [
        token.upper() for token in tokens
    ]
    assert 1 < user_service.most_in_flight <= 8


async def test_an_unreachable_user_service_fails_every_device_and_changes_nothing(
    nursery, settings
):
    linked = await linked_tracker(nursery, settings, f"http://127.0.0.1:{free_port()}")
    async with linked.http as http:
        alpha = linked.fleet.a
        with trio.fail_after(10):
            response = await http.post(
                "/devices/metadata/refresh",
                params={"instance_id": alpha.instance_id},
                headers=bearer(alpha.admin_token),
            )
        assert response.status_code == 200
        assert response.json()["refreshed"] == []
        (failure,) = response.json()["failed"]
        assert "unreachable" in failure["reason"]
        assert (await metadata_of(http, alpha, alpha.device_token))[
            "display_value"
        ] == "Alpha Driver"


async def test_refresh_selection_is_bounded_to_500_devices(http, fleet):
    response = await http.post(
        "/devices/metadata/refresh",
        params={"instance_id": fleet.a.instance_id},
        json={"device_tokens": [f"t{i}" for i in range(501)]},
        headers=bearer(fleet.a.admin_token),
    )
    assert response.status_code == 422
    assert "device_tokens" in error_of(response)["message"]


async def test_request_bodies_are_described_in_the_openapi_document(http):
    document = (await http.get("/openapi.json")).json()
    paths = document["paths"]
    assert "requestBody" in paths["/api/v1/devices/{device_token}/metadata/display-field"]["patch"]
    assert "requestBody" in paths["/api/v1/devices/metadata/display-field/bulk"]["post"]
    assert "requestBody" in paths["/api/v1/devices/metadata/refresh"]["post"]
