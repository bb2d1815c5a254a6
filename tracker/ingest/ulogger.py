"""μlogger's client protocol: sign-in, tracks and positions as form posts, answered in JSON.

The μlogger Android app posts to `<server URL>/client/index.php`, form
encoded (multipart when a waypoint carries a photo), with an `action`:
- `auth` (`user`, `pass`): here the device token and its ingest key. The
  answer `{"error": false}` comes with a session cookie, which the app sends
  with everything after; a wrong pair is HTTP 401, as from μlogger's own
  server (the app reads only the status; the body is tracker's JSON error);
- `addtrack` (`track`: a name): answered `{"error": false, "trackid": N}`.
  The track becomes the trip of the positions sent with that id (the
  client's own trip id, `ulogger-N`), so a track started in the app is a
  trip in tracker;
- `addpos` (`lat`, `lon`, `time` in unix seconds, `trackid`, and optionally
  `altitude` and `accuracy` in metres, `speed` in m/s, `bearing` in degrees,
  `battery` in percent, `provider`, `comment`): `{"error": false}`.
Anything the app cannot use is `{"error": true, "message": ...}` with HTTP
200, as from μlogger's server; the app keeps the position and tries again
later. Photos are not stored (the rest of the waypoint is).

The session cookie is `device_token.expiry.mac`, an HMAC of the three with
the device's current ingest-key hash under a key the server keeps in its
database: nothing is stored per session, a rotated ingest key ends every
session of its device, and a cookie cannot be made without the server key.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping

from tracker.ingest.native import refused_at
from tracker.ingest.osmand import extra_attributes, lenient_number
from tracker.models import InvalidField, Position

SESSION_COOKIE = "ulogger"
SESSION_SECONDS = 30 * 86400
TRACK_TOKEN_PREFIX = "ulogger-"
MAX_TRACK_ID = 2**31 - 1  # the app reads trackid as a Java int

_POSITION_PARAMS = frozenset(
    {"action", "lat", "lon", "time", "trackid", "altitude", "speed", "bearing", "accuracy",
     "battery", "image"}
)  # fmt: skip


def new_track_id() -> int:
    return secrets.randbelow(MAX_TRACK_ID) + 1


def parse_position(form: Mapping[str, str], now: float | None = None) -> Position:
    """The position of an `addpos` form; IngestError naming the parameter when it cannot be."""
    with refused_at(None):
        for required in ("lat", "lon", "time", "trackid"):
            if form.get(required) in (None, ""):
                raise InvalidField(required, "is required")
        track_id = lenient_number(form["trackid"], "trackid")
        if track_id is None or track_id != int(track_id) or not 0 < track_id <= MAX_TRACK_ID:
            raise InvalidField("trackid", "must be a track id from addtrack")
        time_sent = lenient_number(form["time"], "time")

        def number(key: str) -> float | None:
            return lenient_number(form.get(key), key)

        attributes = {k: v for k, v in form.items() if k not in _POSITION_PARAMS}
        try:
            return Position.build(
                latitude=number("lat"),
                longitude=number("lon"),
                timestamp=time_sent,
                speed=number("speed"),
                heading=number("bearing"),
                accuracy=number("accuracy"),
                altitude=number("altitude"),
                battery=number("battery"),
                track_token=f"{TRACK_TOKEN_PREFIX}{int(track_id)}",
                attributes=extra_attributes(attributes),
                now=time.time() if now is None else now,
            )
        except InvalidField as error:
            raise InvalidField(_SPELLED.get(error.field, error.field), error.message) from None


_SPELLED = {"latitude": "lat", "longitude": "lon", "timestamp": "time", "heading": "bearing"}


def session_cookie(key: bytes, device_token: str, ingest_key_hash: str, now: float) -> str:
    expiry = int(now) + SESSION_SECONDS
    return f"{device_token}.{expiry}.{_mac(key, device_token, expiry, ingest_key_hash)}"


def session_device(cookie: str, now: float) -> tuple[str, int, str] | None:
    """(device token, expiry, mac) of a well-formed, unexpired cookie; check it with `is_valid`."""
    device_token, _, rest = cookie.rpartition(".")  # the mac
    device_token, _, expiry = device_token.rpartition(".")
    if not device_token or not expiry.isdigit() or int(expiry) < now:
        return None
    return device_token, int(expiry), rest


def is_valid(key: bytes, session: tuple[str, int, str], ingest_key_hash: str) -> bool:
    device_token, expiry, mac = session
    return hmac.compare_digest(mac, _mac(key, device_token, expiry, ingest_key_hash))


def _mac(key: bytes, device_token: str, expiry: int, ingest_key_hash: str) -> str:
    message = f"{device_token}\n{expiry}\n{ingest_key_hash}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()
