"""History as files: GPX 1.1, GeoJSON and CSV, written as text chunks, trip by trip.

Pure: no I/O. Whoever reads the store (tracker/api/history.py, for the server
and the `tracker export` command alike) drives a `Writer` in this order:

    begin(header)
    for each trip with fixes in the range:
        begin_trip(stats, count)
        for each pass in range(writer.passes):
            next_pass()          (between passes only)
            points(page) ...     (the trip's fixes in time order, a page at a time)
        end_trip()
    end()

and sends each returned string on at once, so a file of any length is written
with the memory of one page. Only GeoJSON lines take two passes over a trip
(its times, then its coordinates: JSON cannot interleave two arrays).

Every time in a file is UTC, ISO 8601 with `Z`, to the microsecond when the
fix has a fraction (the API's `timezone` and `date_format` are for people;
files are for programs). Numbers are Python's shortest round-tripping form,
so an export parsed back gives the stored values exactly.

- GPX 1.1: one `<trk>` named after the device, one `<trkseg>` per trip (its
  track token in the segment's `<extensions>`); per point `<ele>` when the
  altitude is known, `<time>`, speed (m/s) and course (degrees) in Garmin's
  TrackPointExtension v2 (`gpxtpx:speed`, `gpxtpx:course`), and accuracy
  (metres) and battery (percent) in tracker's own namespace `TRACKER_NS`. The
  metadata names the device (display name, token), the range, and the trip of
  a one-trip export. Extensions are `lax` in the GPX schema, so the file
  validates against the official XSD.
- GeoJSON (RFC 7946): a FeatureCollection with one LineString per trip, its
  stats as properties and its fixes' times in `coordTimes` (the convention of
  Mapbox's togeojson); a trip with one fix in the range is a Point. With
  `points`, one Point Feature per fix, its values as properties.
  Coordinates are [longitude, latitude]; the altitude is a property.
- CSV (RFC 4180): a header row, then time, latitude, longitude, speed,
  heading, accuracy, altitude, track_token; an unknown value is empty.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from xml.sax.saxutils import escape, quoteattr

from tracker import __version__, jsoncodec
from tracker.models import Position

FORMATS = ("gpx", "geojson", "csv")
MEDIA_TYPES = {
    "gpx": "application/gpx+xml",
    "geojson": "application/geo+json",
    "csv": "text/csv; charset=utf-8",
}
GPX_NS = "http://www.topografix.com/GPX/1/1"
GPXTPX_NS = "http://www.garmin.com/xmlschemas/TrackPointExtension/v2"
TRACKER_NS = "urn:tracker:gpx:v1"
CSV_COLUMNS = (
    "time",
    "latitude",
    "longitude",
    "speed",
    "heading",
    "accuracy",
    "altitude",
    "track_token",
)


@dataclass(frozen=True)
class ExportHeader:
    """What a file says about itself: whose fixes, over which range, made when."""

    device_token: str
    device_name: str
    low: float
    high: float
    created_at: float
    track_token: str | None = None  # a one-trip export


def utc_time(ts: float) -> str:
    """A UTC unix time as ISO 8601 with `Z`; a fraction only when there is one (to the µs)."""
    whole = math.floor(ts)
    micro = round((ts - whole) * 1e6)
    if micro == 1_000_000:
        whole, micro = whole + 1, 0
    minute, second = divmod(whole % 3600, 60)
    text = f"{_hour_prefix(whole // 3600)}{minute:02d}:{second:02d}"
    if micro:
        text += f".{micro:06d}".rstrip("0")
    return text + "Z"


@functools.lru_cache(maxsize=256)
def _hour_prefix(hour: int) -> str:
    # Fixes come in time order: the date and hour are formatted once an hour, not per fix.
    return datetime.fromtimestamp(hour * 3600, UTC).strftime("%Y-%m-%dT%H:")


def xml_decimal(value: float) -> str:
    """A float as an xsd:decimal (no exponent), digits as few as round-trip needs."""
    text = repr(value)
    if "e" in text or "E" in text:
        text = format(Decimal(text), "f")
    return text


class Writer:
    """One file format; a fresh instance per file (it keeps the separators' state)."""

    passes = 1

    def begin(self, header: ExportHeader) -> str:
        return ""

    def begin_trip(self, stats: dict, count: int) -> str:
        return ""

    def next_pass(self) -> str:
        return ""

    def points(self, positions: Iterable[Position]) -> str:
        raise NotImplementedError

    def end_trip(self) -> str:
        return ""

    def end(self) -> str:
        return ""


class GpxWriter(Writer):
    def begin(self, header: ExportHeader) -> str:
        name = escape(header.device_name)
        span = f"{utc_time(header.low)} to {utc_time(header.high)}"
        trip = ""
        description = f"Positions of device {header.device_token}, {span}"
        if header.track_token is not None:
            trip = f"<tracker:trip>{escape(header.track_token)}</tracker:trip>"
            description = f"Trip {header.track_token} of device {header.device_token}, {span}"
        return (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<gpx version="1.1" creator={quoteattr(f"tracker {__version__}")}'
            f' xmlns="{GPX_NS}" xmlns:gpxtpx="{GPXTPX_NS}" xmlns:tracker="{TRACKER_NS}"'
            ' xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"'
            f' xsi:schemaLocation="{GPX_NS} http://www.topografix.com/GPX/1/1/gpx.xsd'
            f' {GPXTPX_NS} https://www8.garmin.com/xmlschemas/TrackPointExtensionv2.xsd">\n'
            f"<metadata><name>{name}</name><desc>{escape(description)}</desc>"
            f"<time>{utc_time(header.created_at)}</time><extensions>"
            f"<tracker:device>{escape(header.device_token)}</tracker:device>{trip}"
            f"<tracker:from>{utc_time(header.low)}</tracker:from>"
            f"<tracker:to>{utc_time(header.high)}</tracker:to>"
            "</extensions></metadata>\n"
            f"<trk><name>{name}</name><src>tracker</src>\n"
        )

    def begin_trip(self, stats: dict, count: int) -> str:
        self._track_token = stats["track_token"]
        return "<trkseg>\n"

    def points(self, positions: Iterable[Position]) -> str:
        return "".join(map(_gpx_point, positions))

    def end_trip(self) -> str:
        return (
            f"<extensions><tracker:trip>{escape(self._track_token)}</tracker:trip></extensions>"
            "</trkseg>\n"
        )

    def end(self) -> str:
        return "</trk>\n</gpx>\n"


def _gpx_point(p: Position) -> str:
    ele = "" if p.altitude is None else f"<ele>{xml_decimal(p.altitude)}</ele>"
    garmin = ""
    if p.speed is not None:
        garmin += f"<gpxtpx:speed>{xml_decimal(p.speed)}</gpxtpx:speed>"
    if p.heading is not None:
        garmin += f"<gpxtpx:course>{xml_decimal(p.heading)}</gpxtpx:course>"
    if garmin:
        garmin = f"<gpxtpx:TrackPointExtension>{garmin}</gpxtpx:TrackPointExtension>"
    ours = ""
    if p.accuracy is not None:
        ours += f"<tracker:accuracy>{xml_decimal(p.accuracy)}</tracker:accuracy>"
    if p.battery is not None:
        ours += f"<tracker:battery>{xml_decimal(p.battery)}</tracker:battery>"
    extensions = f"<extensions>{garmin}{ours}</extensions>" if garmin or ours else ""
    return (
        f'<trkpt lat="{xml_decimal(p.latitude)}" lon="{xml_decimal(p.longitude)}">{ele}'
        f"<time>{utc_time(p.timestamp)}</time>{extensions}</trkpt>\n"
    )


class GeoJsonLinesWriter(Writer):
    """One LineString Feature per trip: pass 1 writes its times, pass 2 its coordinates."""

    passes = 2

    def __init__(self) -> None:
        self._features = 0

    def begin(self, header: ExportHeader) -> str:
        return _geojson_begin(header)

    def begin_trip(self, stats: dict, count: int) -> str:
        self._single = count == 1
        self._geometry = False
        self._first = True
        separator = ",\n" if self._features else ""
        self._features += 1
        properties = jsoncodec.dumps(stats).decode()
        return (
            f'{separator}{{"type":"Feature","id":{jsoncodec.dumps(stats["track_token"]).decode()},'
            f'"properties":{properties[:-1]},"coordTimes":['
        )

    def next_pass(self) -> str:
        self._geometry = True
        self._first = True
        kind = "Point" if self._single else "LineString"
        return f']}},"geometry":{{"type":"{kind}","coordinates":' + ("" if self._single else "[")

    def points(self, positions: Iterable[Position]) -> str:
        if not self._geometry:
            text = ",".join(f'"{utc_time(p.timestamp)}"' for p in positions)
        else:
            text = ",".join(f"[{p.longitude!r},{p.latitude!r}]" for p in positions)
        if text and not self._first:
            text = "," + text
        self._first = self._first and not text
        return text

    def end_trip(self) -> str:
        return "}}" if self._single else "]}}"

    def end(self) -> str:
        return "\n]}\n"


class GeoJsonPointsWriter(Writer):
    """One Point Feature per fix, its values as properties."""

    def __init__(self) -> None:
        self._features = 0

    def begin(self, header: ExportHeader) -> str:
        return _geojson_begin(header)

    def points(self, positions: Iterable[Position]) -> str:
        chunks = []
        for p in positions:
            feature = {
                "type": "Feature",
                "properties": {
                    "time": utc_time(p.timestamp),
                    "speed": p.speed,
                    "heading": p.heading,
                    "accuracy": p.accuracy,
                    "altitude": p.altitude,
                    "battery": p.battery,
                    "track_token": p.track_token,
                },
                "geometry": {"type": "Point", "coordinates": [p.longitude, p.latitude]},
            }
            separator = ",\n" if self._features else ""
            self._features += 1
            chunks.append(separator + jsoncodec.dumps(feature).decode())
        return "".join(chunks)

    def end(self) -> str:
        return "\n]}\n"


def _geojson_begin(header: ExportHeader) -> str:
    about = {
        "device_token": header.device_token,
        "device_name": header.device_name,
        "from": utc_time(header.low),
        "to": utc_time(header.high),
    }
    if header.track_token is not None:
        about["track_token"] = header.track_token
    return (
        f'{{"type":"FeatureCollection","tracker":{jsoncodec.dumps(about).decode()},"features":[\n'
    )


class CsvWriter(Writer):
    def begin(self, header: ExportHeader) -> str:
        return ",".join(CSV_COLUMNS) + "\r\n"

    def points(self, positions: Iterable[Position]) -> str:
        return "".join(
            f"{utc_time(p.timestamp)},{p.latitude!r},{p.longitude!r},{_csv_number(p.speed)},"
            f"{_csv_number(p.heading)},{_csv_number(p.accuracy)},{_csv_number(p.altitude)},"
            f"{_csv_text(p.track_token or '')}\r\n"
            for p in positions
        )


def _csv_number(value: float | None) -> str:
    return "" if value is None else repr(value)


def _csv_text(value: str) -> str:
    """RFC 4180 quoting, only when the value needs it (a client's trip id may hold a comma)."""
    if any(c in value for c in ',"\r\n'):
        return '"' + value.replace('"', '""') + '"'
    return value


def writer_for(file_format: str, points: bool = False) -> Writer:
    """A fresh writer for `gpx`, `geojson` (LineStrings, or Points with `points`) or `csv`."""
    if file_format == "gpx":
        return GpxWriter()
    if file_format == "geojson":
        return GeoJsonPointsWriter() if points else GeoJsonLinesWriter()
    if file_format == "csv":
        return CsvWriter()
    raise ValueError(f"unknown export format {file_format!r}; expected gpx, geojson or csv")
