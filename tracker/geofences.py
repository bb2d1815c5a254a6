"""Geofences: circles and GeoJSON polygons, and when a device enters or leaves one.

The geometry is pure: `signed_distance_m` is how far a point is outside a
fence's edge (negative inside), on a local flat projection around the point
(exact enough for fences of city scale), with point-in-polygon by ray
casting (holes are outside).

Entering and leaving are decided with hysteresis (`decide`): a device is
inside once it is inside by more than its fix's accuracy plus `MARGIN_M`,
outside once it is outside by as much, and in the band between keeps its
last state, so a parked phone whose fixes jitter across the edge does not
flap. Which fences each device is inside is stored (outside is the
default): a device first seen outside says nothing, first seen inside says
`geofence.entered`. Fences whose bounding box the fix is far outside of
(and the device was not inside) cost four comparisons.

Only live fixes count (each fix that advanced its device's live position,
in order, in the writer's transaction); a backlog never fires. The writer
asks `GeofenceIndex` for an instance's fences: loaded once per instance and
forgotten by the transaction that changes one, so with no fences the cost
on ingest is one dictionary lookup per device and commit.
"""

from __future__ import annotations

import math
import sqlite3
from dataclasses import dataclass

from tracker import events
from tracker.domain import StoredGeofence
from tracker.geo import EARTH_MEAN_RADIUS_M, haversine_m
from tracker.models import Position
from tracker.store import geofences as geofences_store

MARGIN_M = 10.0
MAX_VERTICES = 2000
_M_PER_DEG = math.pi * EARTH_MEAN_RADIUS_M / 180


@dataclass(frozen=True)
class Geofence:
    """A fence ready to test points against."""

    id: str
    name: str
    device_tokens: frozenset[str] | None
    circle: tuple[float, float, float] | None  # latitude, longitude, radius in metres
    rings: tuple[tuple[tuple[float, float], ...], ...]  # (lon, lat) rings; the first is the outside
    bbox: tuple[float, float, float, float]  # min lon, min lat, max lon, max lat

    @classmethod
    def of(cls, stored: StoredGeofence) -> Geofence:
        tokens = frozenset(stored.device_tokens) if stored.device_tokens is not None else None
        if "circle" in stored.shape:
            c = stored.shape["circle"]
            lat, lon, radius = c["latitude"], c["longitude"], c["radius_m"]
            dlat = radius / _M_PER_DEG
            dlon = dlat / max(math.cos(math.radians(lat)), 0.01)
            bbox = (lon - dlon, lat - dlat, lon + dlon, lat + dlat)
            return cls(stored.id, stored.name, tokens, (lat, lon, radius), (), bbox)
        rings = tuple(
            tuple((float(p[0]), float(p[1])) for p in ring)
            for ring in stored.shape["polygon"]["coordinates"]
        )
        lons = [p[0] for p in rings[0]]
        lats = [p[1] for p in rings[0]]
        return cls(
            stored.id,
            stored.name,
            tokens,
            None,
            rings,
            (min(lons), min(lats), max(lons), max(lats)),
        )

    def applies_to(self, device_token: str) -> bool:
        return self.device_tokens is None or device_token in self.device_tokens

    def signed_distance_m(
        self, latitude: float, longitude: float, beyond: float = math.inf
    ) -> float:
        """Metres outside the edge (negative: inside). Past `beyond` outside, any value
        above `beyond` may be answered (a bounding-box shortcut)."""
        if self.circle is not None:
            lat, lon, radius = self.circle
            return haversine_m(latitude, longitude, lat, lon) - radius
        scale = math.cos(math.radians(latitude))
        min_lon, min_lat, max_lon, max_lat = self.bbox
        dx = max(min_lon - longitude, 0, longitude - max_lon) * _M_PER_DEG * scale
        dy = max(min_lat - latitude, 0, latitude - max_lat) * _M_PER_DEG
        if math.hypot(dx, dy) > beyond:
            return math.hypot(dx, dy)
        projected = [
            [
                ((lon - longitude) * _M_PER_DEG * scale, (lat - latitude) * _M_PER_DEG)
                for lon, lat in ring
            ]
            for ring in self.rings
        ]
        inside = _contains_origin(projected[0]) and not any(
            _contains_origin(h) for h in projected[1:]
        )
        edge = min(
            _segment_distance(ring[i], ring[i + 1])
            for ring in projected
            for i in range(len(ring) - 1)
        )
        return -edge if inside else edge


def _contains_origin(ring: list[tuple[float, float]]) -> bool:
    inside = False
    for (x1, y1), (x2, y2) in zip(ring, ring[1:], strict=False):
        if (y1 > 0) != (y2 > 0) and x1 - y1 * (x2 - x1) / (y2 - y1) > 0:
            inside = not inside
    return inside


def _segment_distance(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Distance from the origin to the segment a-b."""
    (ax, ay), (bx, by) = a, b
    dx, dy = bx - ax, by - ay
    length = dx * dx + dy * dy
    t = 0.0 if length == 0 else max(0.0, min(1.0, -(ax * dx + ay * dy) / length))
    return math.hypot(ax + t * dx, ay + t * dy)


def decide(was_inside: bool, signed_distance: float, accuracy: float | None) -> bool:
    """Inside or outside; in the band around the edge, whatever it was."""
    band = max(accuracy or 0.0, 0.0) + MARGIN_M
    if signed_distance < -band:
        return True
    if signed_distance > band:
        return False
    return was_inside


def polygon_problem(polygon: dict) -> str | None:
    """Why a GeoJSON Polygon cannot be a fence, or None."""
    if polygon.get("type") != "Polygon":
        return 'polygon.type: must be "Polygon"'
    rings = polygon.get("coordinates")
    if not isinstance(rings, list) or not rings:
        return "polygon.coordinates: must be a list of linear rings"
    vertices = 0
    for index, ring in enumerate(rings):
        where = f"polygon.coordinates[{index}]"
        if not isinstance(ring, list) or len(ring) < 4:
            return f"{where}: a ring needs at least 4 positions (closed)"
        for position in ring:
            if (
                not isinstance(position, list)
                or len(position) not in (2, 3)
                or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in position)
            ):
                return f"{where}: each position is [longitude, latitude]"
            if not (-180 <= position[0] <= 180 and -90 <= position[1] <= 90):
                return f"{where}: longitude within ±180, latitude within ±90"
        if ring[0][:2] != ring[-1][:2]:
            return f"{where}: the last position must repeat the first"
        vertices += len(ring)
    if vertices > MAX_VERTICES:
        return f"polygon: at most {MAX_VERTICES} positions"
    return None


class GeofenceIndex:
    """Each instance's fences, loaded once and forgotten when one changes (writer thread).

    A change through this process forgets the instance's fences in its own
    transaction; one through another process moves the geofence generation
    (a trigger), which `refresh` reads once per commit and forgets all on."""

    def __init__(self) -> None:
        self._fences: dict[str, list[Geofence]] = {}
        self._by_device: dict[str, dict[str, list[Geofence]]] = {}
        self._generation: int | None = None

    def refresh(self, conn: sqlite3.Connection) -> None:
        """Forget every instance's fences if any fence changed since the last look."""
        generation = geofences_store.generation(conn)
        if generation != self._generation:
            self._fences.clear()
            self._by_device.clear()
            self._generation = generation

    def for_instance(self, conn: sqlite3.Connection, instance_id: str) -> list[Geofence]:
        fences = self._fences.get(instance_id)
        if fences is None:
            stored = geofences_store.list_for_instance(conn, instance_id)
            fences = self._fences[instance_id] = [Geofence.of(f) for f in stored]
            self._by_device[instance_id] = {}
        return fences

    def for_device(
        self, conn: sqlite3.Connection, instance_id: str, device_token: str
    ) -> list[Geofence]:
        """The instance's fences that apply to this device (remembered per device)."""
        fences = self.for_instance(conn, instance_id)
        if not fences:
            return fences
        mine = self._by_device[instance_id]
        found = mine.get(device_token)
        if found is None:
            found = mine[device_token] = [f for f in fences if f.applies_to(device_token)]
        return found

    def forget(self, instance_id: str) -> None:
        self._fences.pop(instance_id, None)
        self._by_device.pop(instance_id, None)


def check_live_fixes(
    conn: sqlite3.Connection,
    index: GeofenceIndex,
    instance_id: str,
    device_token: str,
    fixes: list[Position],
    now: float,
) -> list[events.Event]:
    """Enter and exit events for a device's live fixes, in order (writer's transaction)."""
    fences = index.for_device(conn, instance_id, device_token)
    if not fences:
        return []
    inside = geofences_store.inside(conn, device_token)
    emitted = []
    for fix in fixes:
        lat, lon = fix.latitude, fix.longitude
        band = max(fix.accuracy or 0.0, 0.0) + MARGIN_M
        band_lat = band / _M_PER_DEG
        band_lon = band_lat / max(math.cos(math.radians(lat)), 0.01)
        for fence in fences:
            was_inside = fence.id in inside
            min_lon, min_lat, max_lon, max_lat = fence.bbox
            if not was_inside and (
                lat < min_lat - band_lat
                or lat > max_lat + band_lat
                or lon < min_lon - band_lon
                or lon > max_lon + band_lon
            ):
                continue  # far outside, as it was: the common case, four comparisons
            is_inside = decide(was_inside, fence.signed_distance_m(lat, lon, band), fix.accuracy)
            if is_inside == was_inside:
                continue
            if is_inside:
                inside.add(fence.id)
            else:
                inside.discard(fence.id)
            geofences_store.set_inside(conn, fence.id, device_token, is_inside, now)
            data = {
                "geofence_id": fence.id,
                "geofence_name": fence.name,
                "device_token": device_token,
                "latitude": lat,
                "longitude": lon,
                "fix_time": fix.timestamp,
            }
            kind = events.GEOFENCE_ENTERED if is_inside else events.GEOFENCE_EXITED
            emitted.append(events.emit(conn, instance_id, kind, data, now))
    return emitted
