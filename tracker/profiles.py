"""Display names (which profile field names a device) and the user-service client.

The display value is the profile's chosen field (`display_field`); when that
is empty, the first non-empty of full_name, nickname, email, client_id, and
finally the device token itself, so a device is never nameless.

Profiles come from registration (`POST /devices`, `PUT .../profile`) or, when
`[user_service] url` is set, from the company's user service: a GET of that
URL with the device token (URL-encoded) in place of `{device_token}`,
answering a JSON object whose profile keys are kept and whose other keys are
ignored. A fetch is bounded in time (`timeout_seconds`, a cancel scope around
the whole exchange), in size and, when many devices refresh at once, in
concurrency. Anything short of a valid profile — no answer in time, a non-2xx
status, malformed JSON, a value the profile rules refuse — is a failure with
a reason, and the stored profile stays as it was: only successful fetches are
written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote

import httpx
import trio
from pydantic import ValidationError

from tracker import jsoncodec
from tracker.config import UserServiceSettings
from tracker.domain import Device
from tracker.errors import describe_validation_error
from tracker.models import PROFILE_FIELDS, Profile
from tracker.store import Database
from tracker.store import devices as device_store

FALLBACK_FIELDS = ("full_name", "nickname", "email", "client_id")
DISPLAY_FIELDS = PROFILE_FIELDS
DEVICE_TOKEN_PLACEHOLDER = "{device_token}"
MAX_PROFILE_BYTES = 64 * 1024
REFRESH_CONCURRENCY = 8
MAX_REASON_LENGTH = 300


def display_value(profile: dict[str, str], display_field: str, device_token: str) -> str:
    for field in (display_field, *FALLBACK_FIELDS):
        value = profile.get(field)
        if value and value.strip():
            return value
    return device_token


class ProfileFetchError(Exception):
    """The user service gave no usable profile; `reason` says why, for the admin who asked."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason[:MAX_REASON_LENGTH]


def profile_url(template: str, device_token: str) -> str:
    """The user-service URL of one device, its token percent-encoded (a `/` too)."""
    if DEVICE_TOKEN_PLACEHOLDER not in template:
        raise ProfileFetchError("user_service.url has no {device_token} placeholder")
    return template.replace(DEVICE_TOKEN_PLACEHOLDER, quote(device_token, safe=""))


def profile_from_json(body: bytes) -> dict[str, str]:
    """The profile in a user-service answer: known keys validated, unknown keys ignored."""
    try:
        document = jsoncodec.loads(body)
    except jsoncodec.JSONDecodeError:
        raise ProfileFetchError("user service answered malformed JSON") from None
    if not isinstance(document, dict):
        raise ProfileFetchError("user service answered JSON that is not an object")
    known = {key: value for key, value in document.items() if key in PROFILE_FIELDS}
    try:
        return Profile.model_validate(known).as_dict()
    except ValidationError as error:
        message, _ = describe_validation_error(error)
        raise ProfileFetchError(f"user service answered an invalid profile: {message}") from None


async def fetch_profile(
    client: httpx.AsyncClient, settings: UserServiceSettings, device_token: str
) -> dict[str, str]:
    """One device's profile from the user service, or ProfileFetchError."""
    url = profile_url(settings.url, device_token)
    headers = {"Accept": "application/json"}
    if settings.token:
        headers["Authorization"] = f"Bearer {settings.token}"
    try:
        with trio.fail_after(settings.timeout_seconds):
            async with client.stream("GET", url, headers=headers) as response:
                if response.status_code == 404:
                    raise ProfileFetchError(
                        "user service has no profile for this device (HTTP 404)"
                    )
                if not response.is_success:
                    raise ProfileFetchError(f"user service answered HTTP {response.status_code}")
                body = await _read_bounded(response)
    except (trio.TooSlowError, httpx.TimeoutException):
        raise ProfileFetchError(
            f"user service did not answer within {settings.timeout_seconds:g} s"
        ) from None
    except httpx.HTTPError as error:
        raise ProfileFetchError(
            f"user service unreachable: {type(error).__name__}: {error}".rstrip(": ")
        ) from None
    return profile_from_json(body)


async def _read_bounded(response: httpx.Response) -> bytes:
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > MAX_PROFILE_BYTES:
            raise ProfileFetchError(f"user service answered more than {MAX_PROFILE_BYTES} bytes")
    return bytes(body)


async def fetch_profiles(
    settings: UserServiceSettings, device_tokens: list[str]
) -> dict[str, dict[str, str] | ProfileFetchError]:
    """Every device's profile or the reason it could not be had, at most 8 fetches at a time."""
    outcomes: dict[str, dict[str, str] | ProfileFetchError] = {}
    limiter = trio.CapacityLimiter(REFRESH_CONCURRENCY)

    async def fetch_one(client: httpx.AsyncClient, device_token: str) -> None:
        async with limiter:
            try:
                outcomes[device_token] = await fetch_profile(client, settings, device_token)
            except ProfileFetchError as error:
                outcomes[device_token] = error

    limits = httpx.Limits(max_connections=REFRESH_CONCURRENCY)
    async with (
        httpx.AsyncClient(timeout=settings.timeout_seconds, limits=limits) as client,
        trio.open_nursery() as nursery,
    ):
        for device_token in device_tokens:
            nursery.start_soon(fetch_one, client, device_token)
    return outcomes


@dataclass(frozen=True)
class RefreshFailure:
    device_token: str
    reason: str


@dataclass(frozen=True)
class RefreshReport:
    """What a refresh did: where the profiles came from, which devices refreshed, which failed."""

    source: Literal["user_service", "stored_profiles"]
    refreshed: list[Device]
    failed: list[RefreshFailure]


async def refresh_profiles(
    db: Database, settings: UserServiceSettings, devices: list[Device]
) -> RefreshReport:
    """Fetch the devices' profiles and store the ones that came back valid, in one transaction.

    Without a configured user service there is nothing to fetch: the display
    names are recomputed from the stored profiles, and the report says so.
    """
    if not settings.url:
        return RefreshReport("stored_profiles", list(devices), [])
    outcomes = await fetch_profiles(settings, [device.token for device in devices])
    profiles = {token: outcome for token, outcome in outcomes.items() if isinstance(outcome, dict)}
    stored = await db.write(device_store.set_profiles, profiles) if profiles else {}
    refreshed, failed = [], []
    for device in devices:
        outcome = outcomes[device.token]
        if isinstance(outcome, ProfileFetchError):
            failed.append(RefreshFailure(device.token, outcome.reason))
        elif device.token in stored:
            refreshed.append(stored[device.token])
        else:
            failed.append(RefreshFailure(device.token, "the device was deleted during the refresh"))
    return RefreshReport("user_service", refreshed, failed)
