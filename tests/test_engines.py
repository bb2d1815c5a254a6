"""The tests' own engines answer: a value goes into Redis and PostgreSQL and comes back."""

from __future__ import annotations

import psycopg
import redis


def test_a_value_stored_in_the_tests_redis_is_read_back(redis_server):
    client = redis.Redis.from_url(redis_server.url)
    try:
        client.set("tracker:probe", "51.5,-0.12")
        assert client.get("tracker:probe") == b"51.5,-0.12"
    finally:
        client.close()


def test_a_row_written_to_the_tests_postgresql_is_read_back(postgres_url):
    with psycopg.connect(postgres_url) as conn:
        conn.execute("CREATE TABLE probe (device_token text PRIMARY KEY, lat double precision)")
        conn.execute("INSERT INTO probe VALUES (%s, %s)", ("truck-1", 51.5))
        conn.commit()
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT device_token, lat FROM probe").fetchall() == [("truck-1", 51.5)]
