"""Trips as pure functions: which trip a fix belongs to, and the running aggregates.

A trip (the contract's `TrackToken`) is a run of one device's fixes with no
gap longer than `trips.split_gap_seconds`; a client that sends its own trip
id keeps it. Aggregates (distance, max speed, count, start and end) are kept
up to date as fixes arrive, so a stats call reads one row instead of
rescanning a long trip. A fix that arrives in time order extends its trip in
O(1) (`Trip.add`). A backlog fix, older than its trip's end, is absorbed
between its neighbours in time (`Trip.insert`: the writer looks them up by
index), never by rescanning the trip, so its cost does not grow with the trip.

Distance follows the jitter rule of `geo.advance_distance`: a leg counts only
when longer than the new fix's accuracy, measured from the last counted fix
(the anchor). `recount` is the reference: the aggregates of the fixes taken in
time order. Appends match it exactly. An insert matches it exactly for count,
start, end and max speed, and for distance when no fix reports an accuracy
(the plain great-circle sum). With accuracies it is a local approximation: the
inserted fix's legs are measured from its previous neighbour as if that were
the anchor, and later fixes keep the legs they were counted with, so the
distance can differ from a recount by about the accuracies involved.
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
        """Count a fix newer than the trip's end: it becomes the end."""
        latitude, longitude = position.latitude, position.longitude
        leg, moves = advance_distance(
            self.anchor_lat, self.anchor_lon, latitude, longitude, position.accuracy
        )
        self.distance_m += leg
        if moves:
            self.anchor_lat, self.anchor_lon = latitude, longitude
        self.ended_at = position.timestamp
        self.end_lat, self.end_lon = latitude, longitude
        self.waypoint_count += 1
        speed = position.speed
        if speed is not None:
            self.max_speed = max(self.max_speed or 0.0, speed)

    def insert(
        self, position: Position, previous: Position | None, following: Position | None
    ) -> None:
        """Count a fix older than the trip's end, given its neighbours in time in this trip.

        `previous` is the trip's latest fix before it (None: it is the new start),
        `following` the earliest after it. The legs previous -> following become
        previous -> fix -> following; nothing else is read (see the module docstring).
        """
        if previous is None:
            moves = True  # a trip's first fix is always its anchor
            leg_in = 0.0
        else:
            leg_in, moves = advance_distance(
                previous.latitude,
                previous.longitude,
                position.latitude,
                position.longitude,
                position.accuracy,
            )
        if moves and following is not None:
            leg_out, following_moves = advance_distance(
                position.latitude,
                position.longitude,
                following.latitude,
                following.longitude,
                following.accuracy,
            )
            leg_replaced = 0.0
            if previous is not None:
                leg_replaced = advance_distance(
                    previous.latitude,
                    previous.longitude,
                    following.latitude,
                    following.longitude,
                    following.accuracy,
                )[0]
            self.distance_m = max(0.0, self.distance_m + leg_in + leg_out - leg_replaced)
            if following.timestamp == self.ended_at:
                anchor = following if following_moves else position
                self.anchor_lat, self.anchor_lon = anchor.latitude, anchor.longitude
        elif moves:
            self.distance_m += leg_in
        if position.timestamp < self.started_at:
            self.started_at = position.timestamp
            self.start_lat, self.start_lon = position.latitude, position.longitude
        self._count(position)

    def _count(self, position: Position) -> None:
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
    """A trip's aggregates computed afresh from its fixes (any order): the reference
    that `add` and `insert` keep up with (the tests compare them)."""
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
    timestamp = position.timestamp
    for trip in trips:  # `covers`, written out: this runs once per fix and trip
        started_at, ended_at = trip.started_at, trip.ended_at
        if not started_at - gap_seconds <= timestamp <= ended_at + gap_seconds:
            continue
        if started_at <= timestamp <= ended_at:
            return trip
        distance = min(abs(timestamp - started_at), abs(timestamp - ended_at))
        if distance < best_distance:
            best, best_distance = trip, distance
    return best
