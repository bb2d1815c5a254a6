"""A GPX file's tracks into Positions, parsed so that hostile XML cannot hurt the server.

`POST {api_prefix}/devices/{device_token}/positions/import` takes a GPX file
(1.0 or 1.1). Its track points (`<trk>/<trkseg>/<trkpt>`) become positions:
`lat`/`lon`, `<time>` (required: an import is history, and a point without a
time has none), `<ele>` as the altitude, speed and course from Garmin's
TrackPointExtension (or GPX 1.0's `<speed>`/`<course>`), and accuracy and
battery from tracker's own extension (tracker/exports.py writes them). A
segment that carries a tracker trip token (`<tracker:trip>`, as our exports
do) keeps it, so an export imported elsewhere is the same trip; other
segments are joined to trips by the usual gap rule. Waypoints and routes are
not tracks and are ignored.

The parser is defusedxml's: a document with a DTD is refused outright (no
entity expansion, so no billion laughs, and no external entity is ever
fetched), and it is read incrementally, each point's elements dropped once
read, so memory follows the body's size limit, not the element count. A
malformed or hostile document, or a wrong value, raises `IngestError`
naming where (`trk[0].trkseg[1].trkpt[7].latitude`); nothing is stored.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from xml.etree.ElementTree import ParseError

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import iterparse

from tracker.exports import TRACKER_NS
from tracker.ingest.native import IngestError
from tracker.models import InvalidField, Position

# A point's values by element: GPX's own and Garmin's by local name (GPX 1.0 and 1.1,
# TrackPointExtension v1 and v2), tracker's only in its namespace.
_POINT_VALUES = {
    "ele": "altitude",
    "time": "timestamp",
    "speed": "speed",
    "course": "heading",
    f"{{{TRACKER_NS}}}accuracy": "accuracy",
    f"{{{TRACKER_NS}}}battery": "battery",
}
_TRIP = f"{{{TRACKER_NS}}}trip"


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


@dataclass
class _Segment:
    path: str
    points: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    track_token: str | None = None


def parse_gpx(body: bytes, now: float | None = None) -> list[Position]:
    """Every track point of a GPX document, valid, in document order; IngestError if not."""
    segments = _segments(body)
    positions = []
    for segment in segments:
        for path, values in segment.points:
            positions.append(_position(path, values, segment.track_token, now))
    if not positions:
        raise IngestError(None, "body", "the GPX file has no track points (<trk>/<trkseg>/<trkpt>)")
    return positions


def _segments(body: bytes) -> list[_Segment]:
    segments: list[_Segment] = []
    tracks = -1
    segment: _Segment | None = None
    point: dict[str, str] | None = None
    root_seen = False
    try:
        for event, element in iterparse(io.BytesIO(body), events=("start", "end"), forbid_dtd=True):
            name = _local(element.tag)
            if event == "start":
                if not root_seen:
                    root_seen = True
                    if name != "gpx":
                        raise IngestError(None, "body", f"not a GPX document (root <{name[:40]}>)")
                elif name == "trk":
                    tracks += 1
                    track_segments = 0
                elif name == "trkseg" and tracks >= 0:
                    segment = _Segment(f"trk[{tracks}].trkseg[{track_segments}]")
                    track_segments += 1
                    segments.append(segment)
                elif name == "trkpt" and segment is not None:
                    point = dict(element.attrib)
                continue
            if name == "trkpt" and point is not None and segment is not None:
                path = f"{segment.path}.trkpt[{len(segment.points)}]"
                segment.points.append((path, point))
                point = None
                element.clear()
            elif point is not None and (name in _POINT_VALUES or element.tag in _POINT_VALUES):
                key = _POINT_VALUES.get(element.tag) or _POINT_VALUES[name]
                point[key] = (element.text or "").strip()
            elif element.tag == _TRIP and segment is not None and point is None:
                segment.track_token = (element.text or "").strip() or None
            elif name == "trkseg":
                segment = None
                element.clear()
    except DefusedXmlException as error:
        raise IngestError(
            None,
            "body",
            f"refused: the document declares a DTD or entities ({type(error).__name__})",
        ) from None
    except ParseError as error:
        raise IngestError(None, "body", f"not well-formed XML: {error}") from None
    return segments


def _position(
    path: str, values: dict[str, str], track_token: str | None, now: float | None
) -> Position:
    try:
        numbers = {}
        for name in ("lat", "lon", "altitude", "speed", "heading", "accuracy", "battery"):
            if values.get(name):
                numbers[name] = _number(values[name], name)
        if "lat" not in numbers or "lon" not in numbers:
            raise InvalidField("latitude" if "lat" not in numbers else "longitude", "is required")
        if not values.get("timestamp"):
            raise InvalidField("time", "is required: an imported point needs its time")
        return Position.build(
            latitude=numbers.pop("lat"),
            longitude=numbers.pop("lon"),
            timestamp=values["timestamp"],
            track_token=track_token,
            now=now,
            **numbers,
        )
    except InvalidField as error:
        raise IngestError(None, f"{path}.{error.field}", error.message) from None


def _number(text: str, name: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise InvalidField(name, f"not a number: {text[:40]!r}") from None
