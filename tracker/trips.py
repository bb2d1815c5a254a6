"""Trips as pure functions: which trip a fix belongs to, and the running aggregates.

A trip (the contract's `TrackToken`) is a run of one device's fixes with no
gap longer than `trips.split_gap_seconds`; a client that sends its own trip
id keeps it. Aggregates (distance, max speed, count, start and end) are kept
up to date as fixes arrive, so a stats call reads one row instead of
rescanning a long trip. A fix that arrives in time order extends its trip in
O(1); a backlog fix landing before a trip's end (rare) marks the trip for a
recount from its stored fixes.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from tracker.geo import advance_distance
from tracker.models import Position


@dataclass
class Trip:
    """One trip's running aggregates (a row of the trips table)."""

    device_token: str
    track_token: str
    started_at: float
    ended_at: float
    distance_m: float
    max_speed: float | None
    waypoint_count: int
    start_lat: float
    start_lon: float
    end_lat: float
    end_lon: float
    anchor_lat: float  # the last fix that counted towards distance_m
    anchor_lon: float
    needs_recount: bool = False

    @classmethod
    def start(cls, device_token: str, position: Position, track_token: str | None = None) -> Trip:
        return cls(
            device_token=device_token,
            track_token=track_token or new_track_token(),
            started_at=position.timestamp,
            ended_at=position.timestamp,
            distance_m=0.0,
            max_speed=position.speed,
            waypoint_count=1,
            start_lat=position.latitude,
            start_lon=position.longitude,
            end_lat=position.latitude,
            end_lon=position.longitude,
            anchor_lat=position.latitude,
            anchor_lon=position.longitude,
        )

    def add(self, position: Position) -> None:
        """Count one more fix. In time order it extends the trip; otherwise a recount is due."""
        if position.timestamp < self.ended_at:
            self.needs_recount = True
            self.started_at = min(self.started_at, position.timestamp)
            self.waypoint_count += 1
            return
        leg, moves = advance_distance(
            self.anchor_lat,
            self.anchor_lon,
            position.latitude,
            position.longitude,
            position.accuracy,
        )
        self.distance_m += leg
        if moves:
            self.anchor_lat, self.anchor_lon = position.latitude, position.longitude
        self.ended_at = position.timestamp
        self.end_lat, self.end_lon = position.latitude, position.longitude
        self.waypoint_count += 1
        if position.speed is not None:
            self.max_speed = max(self.max_speed or 0.0, position.speed)

    def covers(self, timestamp: float, gap_seconds: float) -> bool:
        return self.started_at - gap_seconds <= timestamp <= self.ended_at + gap_seconds

    def is_active(self, now: float, gap_seconds: float) -> bool:
        return now - self.ended_at <= gap_seconds

    @property
    def duration_seconds(self) -> float:
        return self.ended_at - self.started_at

    @property
    def average_speed(self) -> float | None:
        return self.distance_m / self.duration_seconds if self.duration_seconds > 0 else None


def new_track_token() -> str:
    return secrets.token_hex(8)


def recount(device_token: str, track_token: str, positions: Iterable[Position]) -> Trip | None:
    """A trip's aggregates computed afresh from its fixes (any order)."""
    trip: Trip | None = None
    for position in sorted(positions, key=lambda p: p.timestamp):
        if trip is None:
            trip = Trip.start(device_token, position, track_token)
        else:
            trip.add(position)
    return trip


def choose_trip(trips: Iterable[Trip], position: Position, gap_seconds: float) -> Trip | None:
    """The trip a fix without a client trip id joins: the nearest one within the gap, if any."""
    best: Trip | None = None
    best_distance = float("inf")
    for trip in trips:
        if not trip.covers(position.timestamp, gap_seconds):
            continue
        if trip.started_at <= position.timestamp <= trip.ended_at:
            return trip
        distance = min(
            abs(position.timestamp - trip.started_at), abs(position.timestamp - trip.ended_at)
        )
        if distance < best_distance:
            best, best_distance = trip, distance
    return best
