"""Distances, moving speed and ETA on the Earth's surface, as pure functions.

Trips and share sessions both need to know how far a device has gone and how
long it will take to arrive; neither should care how. Everything here takes
plain numbers (degrees, metres, seconds, m/s) and does no I/O, so the writer
can keep trip aggregates up to date on ingest and the sharing rules can
compute an ETA without touching the store.

Distance is great-circle (haversine) on a sphere of the mean Earth radius:
within about 0.5% of the ellipsoid, which is far below GPS noise over a trip.

A trip's distance is a sum of legs between fixes, but a parked phone reports
a cloud of fixes metres apart, and summing that jitter inflates the distance
of a stationary device without bound. `advance_distance` therefore keeps an
*anchor*: the last fix that counted. A new fix closer to the anchor than its
own reported accuracy is indistinguishable from noise, so it adds nothing and
the anchor stays; a fix farther away adds the whole leg from the anchor and
becomes the new anchor. Slow genuine movement is not lost: it accumulates
against the anchor until it clears the accuracy circle.

ETA is deliberately simple (the design's "Sharing" section): great-circle
distance times a road factor, over a smoothed recent moving speed with a
floor. `smoothed_speed` ignores stationary samples, so a driver waiting at a
red light keeps the ETA of their recent driving instead of an ETA of hours.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from math import asin, cos, radians, sin, sqrt  # bare names: haversine_m runs once per fix

EARTH_MEAN_RADIUS_M = 6_371_008.8
"""IUGG mean Earth radius (R1), in metres."""

UNKNOWN_SPEED_MPS = 8.3
"""Assumed speed when no moving speed is known: about 30 km/h, typical urban driving."""

_METRES_PER_MILE = 1609.344
_METRES_PER_FOOT = 0.3048
_SECONDS_PER_HOUR = 3600


def haversine_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in metres between two points given in degrees."""
    phi1, phi2 = radians(lat1), radians(lat2)
    half_dphi = (phi2 - phi1) / 2
    half_dlambda = radians(lon2 - lon1) / 2
    h = sin(half_dphi) ** 2 + cos(phi1) * cos(phi2) * sin(half_dlambda) ** 2
    # Rounding can push h a hair above 1 for antipodal points; asin would then fail.
    return 2 * EARTH_MEAN_RADIUS_M * asin(sqrt(1.0 if h > 1.0 else h))


def initial_bearing_deg(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """The compass bearing, in [0, 360), to set off on from point 1 towards point 2."""
    phi1, phi2 = math.radians(lat1), math.radians(lat2)
    dlambda = math.radians(lon2 - lon1)
    x = math.sin(dlambda) * math.cos(phi2)
    y = math.cos(phi1) * math.sin(phi2) - math.sin(phi1) * math.cos(phi2) * math.cos(dlambda)
    return math.degrees(math.atan2(x, y)) % 360.0


def advance_distance(
    anchor_lat: float,
    anchor_lon: float,
    lat: float,
    lon: float,
    accuracy_m: float | None,
) -> tuple[float, bool]:
    """The metres a new fix adds to a trip, and whether it becomes the new anchor.

    A leg from the anchor shorter than the new fix's reported accuracy is
    jitter: `(0.0, False)`, and the anchor stays. Otherwise the whole leg
    counts: `(leg, True)`. Without a reported accuracy every leg counts.
    """
    leg = haversine_m(anchor_lat, anchor_lon, lat, lon)
    if accuracy_m is not None and leg < accuracy_m:
        return 0.0, False
    return leg, True


def smoothed_speed(
    samples: Sequence[tuple[float, float | None]],
    *,
    window_seconds: float = 300.0,
    half_life_seconds: float = 60.0,
    min_moving_mps: float = 0.5,
) -> float | None:
    """A smoothed recent moving speed (m/s) from `(timestamp, speed m/s)` samples.

    "Recent" is measured back from the newest sample, whatever its speed,
    so the result depends only on the samples and not on the wall clock.
    Samples older than `window_seconds`, without a speed, or slower than
    `min_moving_mps` (a stopped vehicle, GPS drift) are ignored. The rest
    are averaged with exponentially decaying weights, a sample
    `half_life_seconds` older than the newest counting half as much, so the
    speed follows a change of pace within a minute or two without jumping
    on one noisy fix. Samples may come in any order.

    None when no sample is usable: nothing recent, or only standing still.
    """
    if not samples:
        return None
    newest = max(timestamp for timestamp, _ in samples)
    weighted_sum = 0.0
    total_weight = 0.0
    for timestamp, speed in samples:
        # Written so that NaN fails the test and is skipped.
        if speed is None or not speed >= min_moving_mps:
            continue
        age = newest - timestamp
        if age > window_seconds:
            continue
        weight = 0.5 ** (age / half_life_seconds)
        weighted_sum += weight * speed
        total_weight += weight
    if total_weight == 0.0:
        return None
    return weighted_sum / total_weight


def eta_seconds(
    distance_m: float,
    speed_mps: float | None,
    *,
    road_factor: float = 1.3,
    arrival_radius_m: float = 75.0,
    min_speed_mps: float = 2.0,
    unknown_speed_mps: float = UNKNOWN_SPEED_MPS,
) -> int:
    """Whole seconds until arrival, from the great-circle distance left and a moving speed.

    0 means arrived: the device is within `arrival_radius_m`. Otherwise the
    distance is stretched by `road_factor` (roads are not straight lines)
    and divided by the speed, and the answer is at least 1, so that only
    arrival reads as 0.

    `speed_mps` is normally `smoothed_speed(...)`. None (no moving speed
    known yet, or the device has been standing still) assumes
    `unknown_speed_mps`, about 30 km/h. A known but tiny speed is raised to
    `min_speed_mps` (a brisk walk, 7.2 km/h), so a vehicle crawling in
    traffic does not show an ETA of days.
    """
    if distance_m <= arrival_radius_m:
        return 0
    speed = unknown_speed_mps if speed_mps is None else speed_mps
    seconds = distance_m * road_factor / max(speed, min_speed_mps)
    return max(1, round(seconds))


def mps_to_mph(speed_mps: float) -> float:
    """A speed in metres per second as miles per hour."""
    return speed_mps * _SECONDS_PER_HOUR / _METRES_PER_MILE


def metres_to_feet(metres: float) -> float:
    """A length in metres as international feet."""
    return metres / _METRES_PER_FOOT
