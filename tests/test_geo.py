"""Distances, moving speed and ETA as a trip or a share page would see them."""

import math

import pytest

from tracker.geo import (
    advance_distance,
    eta_seconds,
    haversine_m,
    metres_to_feet,
    mps_to_mph,
    smoothed_speed,
)

LONDON = (51.5074, -0.1278)
PARIS = (48.8566, 2.3522)


def test_london_to_paris_is_about_343_km():
    assert haversine_m(*LONDON, *PARIS) == pytest.approx(343_500, rel=0.005)


def test_distance_is_symmetric_and_zero_for_the_same_point():
    assert haversine_m(*LONDON, *PARIS) == pytest.approx(haversine_m(*PARIS, *LONDON))
    assert haversine_m(*LONDON, *LONDON) == 0.0


def test_one_degree_of_latitude_is_about_111_km():
    assert haversine_m(0.0, 10.0, 1.0, 10.0) == pytest.approx(111_195, rel=0.001)


def test_antipodal_points_are_half_the_circumference_apart():
    assert haversine_m(0.0, 0.0, 0.0, 180.0) == pytest.approx(math.pi * 6_371_008.8)


def test_parked_phone_jitter_within_its_accuracy_adds_no_distance():
    # About 11 m north of the anchor, with a fix good to 20 m.
    added, anchor_moves = advance_distance(51.5, -0.12, 51.5001, -0.12, accuracy_m=20)
    assert added == 0.0
    assert anchor_moves is False


def test_a_leg_longer_than_the_accuracy_counts_in_full_and_moves_the_anchor():
    added, anchor_moves = advance_distance(51.5, -0.12, 51.501, -0.12, accuracy_m=20)
    assert added == pytest.approx(haversine_m(51.5, -0.12, 51.501, -0.12))
    assert added > 100
    assert anchor_moves is True


def test_without_a_reported_accuracy_every_leg_counts():
    added, anchor_moves = advance_distance(51.5, -0.12, 51.5001, -0.12, accuracy_m=None)
    assert added == pytest.approx(11.1, abs=0.1)
    assert anchor_moves is True


def test_slow_movement_accumulates_against_the_anchor_until_it_clears_the_jitter():
    anchor = (51.5, -0.12)
    total = 0.0
    # Five fixes creeping north 5 m at a time, each good to 12 m.
    for step in range(1, 6):
        fix = (51.5 + step * 0.000045, -0.12)
        added, anchor_moves = advance_distance(*anchor, *fix, accuracy_m=12)
        total += added
        if anchor_moves:
            anchor = fix
    # Steps 1-2 are within 12 m of the start; step 3 (~15 m) counts; 4-5 are near it.
    assert total == pytest.approx(15.0, abs=0.1)


def test_smoothed_speed_averages_recent_moving_samples():
    samples = [(1000.0, 10.0), (1010.0, 10.0), (1020.0, 10.0)]
    assert smoothed_speed(samples) == pytest.approx(10.0)


def test_smoothed_speed_ignores_a_stop_at_a_red_light():
    samples = [(1000.0, 12.0), (1010.0, 12.0), (1020.0, 0.0), (1030.0, 0.2), (1040.0, None)]
    assert smoothed_speed(samples) == pytest.approx(12.0)


def test_smoothed_speed_leans_towards_the_newest_samples():
    speed = smoothed_speed([(1000.0, 5.0), (1060.0, 15.0)], half_life_seconds=60)
    # The newer sample weighs twice the older one: (5 + 2 * 15) / 3.
    assert speed == pytest.approx(35 / 3)


def test_smoothed_speed_forgets_samples_outside_the_window():
    samples = [(0.0, 30.0), (1000.0, 10.0)]
    assert smoothed_speed(samples, window_seconds=300) == pytest.approx(10.0)


def test_smoothed_speed_does_not_depend_on_sample_order():
    samples = [(1000.0, 5.0), (1060.0, 15.0), (1030.0, 9.0)]
    assert smoothed_speed(samples) == pytest.approx(smoothed_speed(sorted(samples)))


@pytest.mark.parametrize(
    "samples",
    [[], [(1000.0, None)], [(1000.0, 0.0), (1010.0, 0.3)], [(1000.0, math.nan)]],
    ids=["no samples", "no speeds", "standing still", "nan"],
)
def test_smoothed_speed_is_none_when_nothing_is_moving(samples):
    assert smoothed_speed(samples) is None


def test_eta_falls_as_the_driver_gets_closer():
    etas = [eta_seconds(d, 10.0) for d in (10_000, 5_000, 1_000, 200)]
    assert etas == sorted(etas, reverse=True)
    assert len(set(etas)) == len(etas)


def test_eta_is_distance_times_road_factor_over_speed():
    assert eta_seconds(10_000, 10.0) == 1300
    assert eta_seconds(10_000, 10.0, road_factor=1.0) == 1000


def test_eta_is_zero_inside_the_arrival_radius():
    assert eta_seconds(75, 10.0) == 0
    assert eta_seconds(10, None) == 0
    assert eta_seconds(150, 10.0, arrival_radius_m=200) == 0
    assert eta_seconds(76, 10.0) > 0


def test_eta_is_never_zero_before_arrival_even_at_high_speed():
    assert eta_seconds(80, 500.0) == 1


def test_a_crawling_vehicle_uses_the_speed_floor():
    assert eta_seconds(1_000, 0.1) == eta_seconds(1_000, 2.0) == 650
    assert eta_seconds(1_000, 0.1, min_speed_mps=5.0) == 260


def test_unknown_speed_assumes_urban_driving():
    assert eta_seconds(8_300, None, road_factor=1.0) == 1000
    assert eta_seconds(8_300, None, road_factor=1.0, unknown_speed_mps=4.15) == 2000


def test_imperial_units_for_the_realtime_stream():
    assert mps_to_mph(10.0) == pytest.approx(22.3694, rel=1e-5)
    assert mps_to_mph(0.0) == 0.0
    assert metres_to_feet(100.0) == pytest.approx(328.084, rel=1e-5)
    assert metres_to_feet(0.3048) == pytest.approx(1.0)


def test_initial_bearing_points_the_right_way():
    from tracker.geo import initial_bearing_deg

    assert initial_bearing_deg(0, 0, 1, 0) == pytest.approx(0)
    assert initial_bearing_deg(0, 0, 0, 1) == pytest.approx(90)
    assert initial_bearing_deg(0, 0, -1, 0) == pytest.approx(180)
    assert initial_bearing_deg(0, 0, 0, -1) == pytest.approx(270)
