"""The OpenAPI document: served, valid, complete, and true of the running server.

The first tests read the document as a client would and check it against the
app's route table, so a new route is either documented or deliberately
hidden. The last one fuzzes the real server (`tracker serve` in its own
process, over loopback) with schemathesis: every documented operation, with
inputs that fit the document and inputs that break it, and fails on any 5xx
and on any answer the document does not describe (status, content type, or
body). Most generated requests are aimed at real objects (an instance, a
device `dev1` with positions, an active share session); destructive ones at
objects made for them on the spot, so the run never destroys what the others
need.

The run is bounded for CI (`FUZZ_EXAMPLES`, default 25 examples per
operation and phase); `FUZZ_EXAMPLES=500 python -m pytest
tests/test_openapi.py` is the long run.
"""

from __future__ import annotations

import json
import os
import re
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import get_args

import httpx
import pytest
import schemathesis
from openapi_spec_validator import validate
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from tests.conftest import ServerProcess, bearer, free_port
from tracker import errors
from tracker.api.schemas import ErrorCode

PREFIX = "/api/v1"
FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    unsupported_method,  # an undocumented method is a 405 naming the allowed ones
]

# Routes left out of the document on purpose: the document itself, the share
# page and its assets (for people, not clients), and `/` of the OsmAnd
# listener (the same as /ingest/osmand, and a 404 on the API listener).
HIDDEN = {
    "GET /api/v1/openapi.json",
    "GET /",
    "POST /",
    "GET /share/{share_token}",
    "GET /static/share.css",
    "GET /static/share.js",
    "GET /static/console.css",
    "GET /static/console.js",
    "GET /static/pages.js",
    "GET /static/leaflet/{filename}",
    "GET /metrics",  # Prometheus' text format, for scrapers (README.md lists the metrics)
}
PUBLIC = {
    "GET /api/v1/health",
    "GET /api/v1/health/ready",
    "GET /api/v1/share/{share_token}",
    "GET /api/v1/share/{share_token}/qr.svg",
    "POST /api/v1/auth/login",
}
PHONE_APPS = {
    "GET /ingest/osmand": [{"osmandId": []}],
    "POST /ingest/osmand": [{"osmandId": []}],
    "POST /ingest/owntracks": [{"owntracksBasic": []}],
    "GET /ingest/gpslogger": [{"osmandId": []}],
    "POST /ingest/gpslogger": [{"osmandId": []}],
    "POST /ingest/overland": [{"overlandKey": []}, {"overlandToken": []}],
    "POST /ingest/ulogger/client/index.php": [{}, {"uloggerSession": []}],
}
NATIVE_INGEST = f"POST {PREFIX}/devices/{{device_token}}/positions"


def route_operations(app) -> set[str]:
    """Every `METHOD /path` the app serves over HTTP, paths spelled as in OpenAPI."""
    operations = set()
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:[^:>]*:)?([^>]+)>", r"{\1}", rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            operations.add(f"{method} {path}")
    return operations


def documented_operations(document: dict) -> dict[str, dict]:
    return {
        f"{method.upper()} {path}": operation
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
    }


@pytest.fixture
async def document(client) -> dict:
    response = await client.get(f"{PREFIX}/openapi.json")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    return await response.get_json()


async def test_the_document_is_served_and_is_valid_openapi(document):
    validate(document)
    assert document["openapi"].startswith("3.1")


async def test_every_route_is_documented_with_its_methods_unless_deliberately_hidden(app, document):
    served = route_operations(app)
    documented = set(documented_operations(document))
    assert documented == served - HIDDEN
    assert served.issuperset(HIDDEN)  # no stale entry in the list


async def test_public_routes_declare_no_credential_and_the_others_theirs(document):
    for name, operation in documented_operations(document).items():
        if name in PUBLIC:
            expected = []
        elif name in PHONE_APPS:
            expected = PHONE_APPS[name]
        elif name == NATIVE_INGEST:
            expected = [{"bearer": []}, {"ingestKey": []}]
        else:
            expected = [{"bearer": []}]
        assert operation["security"] == expected, name
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearer"] == {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
    assert schemes["ingestKey"] == {"type": "apiKey", "in": "header", "name": "X-Ingest-Key"}


async def test_every_operation_documents_a_success_and_its_errors(document):
    operation_ids = []
    for name, operation in documented_operations(document).items():
        operation_ids.append(operation["operationId"])
        statuses = {int(status) for status in operation["responses"]}
        assert any(200 <= status < 300 for status in statuses), name
        for status in statuses - {503}:
            if status >= 400:
                response = operation["responses"][str(status)]
                schema = response["content"]["application/json"]["schema"]
                assert schema["title"] == "ErrorResponse", (name, status)
        if operation["security"] and operation["security"][0].get("bearer") is not None:
            assert {401, 403} <= statuses, name
        if "requestBody" in operation:
            assert {400, 413} <= statuses, name
            if name.split()[1].startswith(PREFIX):
                assert {415, 422} <= statuses, name
        # Every route: past server.max_connections_per_address, a client is told to wait.
        rate_limited = operation["responses"]["429"]
        assert rate_limited["headers"]["Retry-After"]["schema"] == {"type": "integer"}, name
    assert len(operation_ids) == len(set(operation_ids))


async def test_the_document_points_to_the_two_websockets(document):
    description = document["info"]["description"]
    assert f"{PREFIX}/ws/realtime" in description
    assert f"{PREFIX}/share/{{share_token}}/live" in description
    assert "docs/websockets.md" in description


def test_the_error_model_names_every_error_code():
    codes = {cls.code for cls in _subclasses(errors.TrackerError)}
    codes |= set(errors._HTTP_CODES.values()) | {"internal", "error"}
    assert codes == set(get_args(ErrorCode))


def _subclasses(cls: type) -> Iterator[type]:
    for subclass in cls.__subclasses__():
        yield subclass
        yield from _subclasses(subclass)


# -- fuzzing the running server ------------------------------------------------------


@dataclass
class FuzzTarget:
    """The running server, the real objects it holds, and what the fuzzer sent it."""

    url: str
    instance_id: str
    ingest_key: str
    admin_token: str
    session_id: str
    share_token: str
    device_token: str = "dev1"
    track_token: str = ""  # dev1's trip
    geofence_id: str = ""
    webhook_id: str = ""  # aimed at a closed loopback port: its deliveries are retried
    statuses: Counter = field(default_factory=Counter)
    started: float = field(default_factory=time.monotonic)

    @property
    def api(self) -> str:
        return self.url + PREFIX

    def admin_post(self, path: str, body: dict) -> dict:
        response = httpx.post(self.api + path, json=body, headers=bearer(self.admin_token))
        assert response.status_code == 201, response.text
        return response.json()

    def new_device(self) -> str:
        return self.admin_post("/devices", {"instance_id": self.instance_id})["device_token"]

    def new_session(self) -> str:
        return self.admin_post("/sharing/sessions", {"device_token": self.device_token})["id"]

    def aim(self, case) -> None:
        """Point most cases at the real objects; destructive ones at objects made for them."""
        aimed = zlib.crc32(repr((case.path_parameters, case.query, case.body)).encode()) % 4 != 0
        path = case.path_parameters if case.path_parameters is not None else {}
        query = case.query if case.query is not None else {}
        destroys_device = case.method in ("DELETE", "POST") and case.path in (
            f"{PREFIX}/devices/{{device_token}}",
            f"{PREFIX}/devices/{{device_token}}/ingest-key",
        )
        changes_session = case.method != "GET" and "session_id" in path
        # The fuzzer learns identifiers from answers: never let it end the shared ones.
        if destroys_device and (aimed or path["device_token"] == self.device_token):
            path["device_token"] = self.new_device()
        if changes_session and (aimed or path["session_id"] == self.session_id):
            path["session_id"] = self.new_session()
        if not aimed:
            return  # a quarter keep their generated values: mostly unknown objects
        if "device_token" in path and not destroys_device:
            path["device_token"] = self.device_token
        if "session_id" in path and not changes_session:
            path["session_id"] = self.session_id
        for name, value in (
            ("instance_id", self.instance_id),
            ("share_token", self.share_token),
            ("track_token", self.track_token),
            ("webhook_id", self.webhook_id),
            ("geofence_id", self.geofence_id),
        ):
            if name in path:
                path[name] = value
        if "instance_id" in query:
            query["instance_id"] = self.instance_id
        body = case.body
        if isinstance(body, dict):
            if "instance_id" in body:
                body["instance_id"] = self.instance_id
            if isinstance(body.get("device_token"), str):
                body["device_token"] = self.device_token
            if isinstance(body.get("device_tokens"), list) and body["device_tokens"]:
                body["device_tokens"][0] = self.device_token
            mappings = body.get("mappings")
            if isinstance(mappings, list) and mappings and isinstance(mappings[0], dict):
                mappings[0]["device_token"] = self.device_token


@pytest.fixture
def fuzz_target(tmp_path, request) -> Iterator[FuzzTarget]:
    process = ServerProcess(
        tmp_path,
        env={
            "TRACKER_SHARING_RATE_LIMIT_PER_MINUTE": "1000000000",
            "TRACKER_WEBHOOKS_ALLOW_PRIVATE_TARGETS": "true",
        },
    )
    created = process.cli("instance", "create", "Fuzz Fleet", "--json")
    instance_id = json.loads(created)["instance_id"]
    added = process.cli("device", "add", "--instance", instance_id, "--token", "dev1", "--json")
    device = json.loads(added)
    admin_token = process.cli(
        "token", "create", "--instance", instance_id, "--scope", "admin"
    ).strip()
    process.start()
    try:
        api = process.url + PREFIX
        profile = {"full_name": "Ann Lee", "nickname": "Ann", "phone": "+44 20 7946 0000"}
        httpx.put(f"{api}/devices/dev1/profile", json=profile, headers=bearer(admin_token))
        positions = [
            {"latitude": 51.5 + i / 1000, "longitude": -0.12, "speed": 10.0, "timestamp": t}
            for i, t in enumerate(range(int(time.time()) - 60, int(time.time()), 20))
        ]
        response = httpx.post(
            f"{api}/devices/dev1/positions",
            json={"positions": positions},
            headers={"X-Ingest-Key": device["ingest_key"]},
        )
        assert response.status_code == 201, response.text
        session = httpx.post(
            f"{api}/sharing/sessions",
            json={"device_token": "dev1", "destination": {"latitude": 48.85, "longitude": 2.35}},
            headers=bearer(admin_token),
        ).json()
        target = FuzzTarget(
            url=process.url,
            instance_id=instance_id,
            ingest_key=device["ingest_key"],
            admin_token=admin_token,
            session_id=session["id"],
            geofence_id=httpx.post(
                f"{api}/geofences?instance_id={instance_id}",
                json={
                    "name": "Depot",
                    "circle": {"latitude": 51.5, "longitude": -0.12, "radius_m": 80},
                },
                headers=bearer(admin_token),
            ).json()["id"],
            webhook_id=httpx.post(
                f"{api}/webhooks?instance_id={instance_id}",
                json={"url": f"http://127.0.0.1:{free_port()}/", "event_types": ["share.created"]},
                headers=bearer(admin_token),
            ).json()["id"],
            share_token=session["share_token"],
            track_token=httpx.get(f"{api}/devices/dev1/stats", headers=bearer(admin_token)).json()[
                "track_token"
            ],
        )
        yield target
        elapsed = time.monotonic() - target.started
        by_class = ", ".join(
            f"{status // 100}xx: {count}"
            for status, count in sorted(_by_class(target.statuses).items())
        )
        capture = request.config.pluginmanager.get_plugin("capturemanager")
        with capture.global_and_fixture_disabled():
            print(
                f"\nfuzzed {sum(target.statuses.values())} requests in {elapsed:.1f} s"
                f" ({FUZZ_EXAMPLES} examples per operation and phase; {by_class})"
            )
    finally:
        process.process.kill()
        process.process.wait()


def _by_class(statuses: Counter) -> Counter:
    classes: Counter = Counter()
    for status, count in statuses.items():
        classes[status // 100 * 100] += count
    return classes


@pytest.fixture
def fuzz_schema(fuzz_target):
    config = schemathesis.Config.from_dict(
        {
            "generation": {"mode": "all", "max-examples": FUZZ_EXAMPLES, "database": "none"},
            "suppress-health-check": ["too_slow"],  # a slow CI machine is not a finding
            "phases": {
                "examples": {"enabled": True},
                "coverage": {"enabled": True},
                "fuzzing": {"enabled": True},
                "stateful": {"enabled": False},
            },
            "auth": {
                "openapi": {
                    "bearer": {"bearer": fuzz_target.admin_token},
                    "ingestKey": {"api_key": fuzz_target.ingest_key},
                    "osmandId": {"api_key": fuzz_target.ingest_key},
                    "owntracksBasic": {
                        "username": fuzz_target.device_token,
                        "password": fuzz_target.ingest_key,
                    },
                    "overlandKey": {"bearer": fuzz_target.ingest_key},
                    "overlandToken": {"api_key": fuzz_target.ingest_key},
                }
            },
        }
    )
    return schemathesis.openapi.from_url(f"{fuzz_target.api}/openapi.json", config=config)


# Tests send traffic to loopback only: the fuzzer must never point a webhook at an address
# of its choosing (deliveries would follow). Creating and changing a webhook's URL is
# tested by hand instead (tests/test_webhooks.py: private, odd and malformed targets).
fuzzed = schemathesis.pytest.from_fixture("fuzz_schema").exclude(
    method=["POST", "PATCH"], path_regex=r".*/webhooks(/\{webhook_id\})?$"
)


@pytest.mark.slow
@fuzzed.parametrize()
def test_fuzzing_finds_no_server_error_and_no_answer_outside_the_document(case, fuzz_target):
    fuzz_target.aim(case)
    response = case.call(timeout=10)
    fuzz_target.statuses[response.status_code] += 1
    # A success must need its credential: refused without it, or with a wrong one. Not
    # OsmAnd's (and GPSLogger's, the same endpoint), whose unknown identifier is a 404 and
    # missing one a 400 (docs/decisions.md); not μlogger's, whose sign-in is in the form.
    osmand_like = ("/ingest/osmand", "/ingest/gpslogger", "/ingest/ulogger/client/index.php")
    checks = CHECKS if case.path in osmand_like else [*CHECKS, ignored_auth]
    case.validate_response(response, checks=checks)


async def test_an_offset_beyond_sqlite_integers_is_a_400_not_a_500(client, fleet):
    # Found by the fuzzer: offset=8281924865805098418176 overflowed the SQLite binding.
    for path in ("/devices/metadata", "/sharing/sessions"):
        response = await client.get(
            PREFIX + path,
            query_string={"instance_id": fleet.a.instance_id, "offset": str(2**63)},
            headers=bearer(fleet.a.admin_token),
        )
        assert response.status_code == 400
        assert "offset" in (await response.get_json())["error"]["message"]
