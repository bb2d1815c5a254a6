"""Typed settings from tracker.toml, overridden by TRACKER_<SECTION>_<KEY> variables.

One `Settings` object is built at start and passed down; nothing deep inside
the server reads the environment or the file again. A bad value (a port that
is not a number, a key that no section has) fails at start with a message that
names the key, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tracker.clientaddr import parse_network

DEFAULT_CONFIG_FILE = "tracker.toml"


class ConfigError(Exception):
    """The configuration cannot be used; the message names the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    public_url: str = "http://127.0.0.1:8080"
    api_prefix: str = "/api/v1"
    max_connections_per_address: int = Field(256, ge=0)
    header_timeout_seconds: float = Field(10, gt=0, le=3600)
    trusted_proxies: list[str] = ["127.0.0.0/8", "::1"]

    @field_validator("api_prefix")
    @classmethod
    def _prefix_shape(cls, value: str) -> str:
        value = value.rstrip("/")
        if value and not value.startswith("/"):
            raise ValueError("must start with '/' (or be empty)")
        return value

    @field_validator("public_url")
    @classmethod
    def _url_shape(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("trusted_proxies")
    @classmethod
    def _networks_shape(cls, value: list[str]) -> list[str]:
        for network in value:
            try:
                parse_network(network)
            except ValueError:
                raise ValueError(f"{network!r} is not an address or a CIDR network") from None
        return value


class StorageSettings(_Section):
    path: str = "tracker.db"
    synchronous: Literal["normal", "full"] = "normal"
    retention_days: int = Field(90, ge=0)
    # empty: sqlite:/// + path; sqlite:///relative.db, sqlite:////abs.db or
    # postgresql://user:password@host:port/database (tracker/store/postgres.py)
    url: str = ""

    @field_validator("url")
    @classmethod
    def _url_shape(cls, value: str) -> str:
        if value:
            engine_of(value)
        return value

    @property
    def engine(self) -> str:
        """ "sqlite" or "postgresql"."""
        return engine_of(self.url) if self.url else "sqlite"

    @property
    def sqlite_path(self) -> str:
        """The SQLite file: the URL's path (sqlite:///x.db is x.db, sqlite:////x.db is /x.db)."""
        return self.url.removeprefix("sqlite://")[1:] if self.url else self.path


def engine_of(url: str) -> str:
    """The engine a storage URL names; ValueError (without the URL, which may hold a password)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises on a bad port)
    except ValueError:
        raise ValueError("not a URL with a valid port") from None
    if parts.scheme == "sqlite":
        if parts.netloc or not parts.path[1:] or parts.query or parts.fragment:
            raise ValueError(
                "a SQLite URL is sqlite:///relative/path.db or sqlite:////absolute/path.db"
            )
        return "sqlite"
    if parts.scheme in ("postgresql", "postgres"):
        if not parts.path[1:]:
            raise ValueError("a PostgreSQL URL is postgresql://user:password@host[:port]/database")
        return "postgresql"
    raise ValueError("must be empty, sqlite:///path.db or postgresql://user:password@host/db")


def redacted_url(url: str) -> str:
    """The URL without its password, for logs and messages."""
    return str(_without_password(url))


class BrokerSettings(_Section):
    url: str = ""  # empty: one process (in-process); redis://host:6379/0 for several

    @field_validator("url")
    @classmethod
    def _url_shape(cls, value: str) -> str:
        if value:
            try:
                parts = urlsplit(value)
                parts.port  # noqa: B018 (raises on a bad port)
            except ValueError:
                raise ValueError("not a URL with a valid port") from None
            if parts.scheme not in ("redis", "rediss") or not parts.hostname:
                raise ValueError("must be empty or redis://[:password@]host[:port][/db]")
            if parts.path not in ("", "/") and not parts.path[1:].isdigit():
                raise ValueError("the path must be a database number, e.g. redis://host:6379/0")
        return value


class AuthSettings(_Section):
    jwt_secret: str = ""
    jwt_public_key_file: str = ""
    max_token_lifetime_days: int = Field(365, ge=1, le=3650)
    clock_leeway_seconds: float = Field(5, ge=0, le=300)
    session_hours: float = Field(12, gt=0, le=24 * 366)


@dataclass(frozen=True)
class MqttBroker:
    """Where `ingest.mqtt_url` points: mqtt://user:pass@host:1883, or mqtts:// for TLS."""

    host: str
    port: int
    tls: bool
    username: str | None = None
    password: str | None = None

    @property
    def address(self) -> str:
        """host:port, for the log (never the credentials)."""
        return f"{self.host}:{self.port}"


def parse_mqtt_url(url: str) -> MqttBroker:
    """The broker of an mqtt:// or mqtts:// URL; ValueError (without the URL) if it is not one."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ValueError("not a URL with a valid port") from None
    if parts.scheme not in ("mqtt", "mqtts"):
        raise ValueError("must start with mqtt:// or mqtts://")
    if not parts.hostname:
        raise ValueError("names no broker host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("must be only mqtt[s]://[user:password@]host[:port]")
    tls = parts.scheme == "mqtts"
    return MqttBroker(
        host=parts.hostname,
        port=port or (8883 if tls else 1883),
        tls=tls,
        username=None if parts.username is None else unquote(parts.username),
        password=None if parts.password is None else unquote(parts.password),
    )


def _without_password(url: object) -> object:
    if not isinstance(url, str):
        return url
    return re.sub(r"(//[^/@:]*:)[^/]*@", r"\1***@", url)


class IngestSettings(_Section):
    osmand_port: int = Field(0, ge=0, le=65535)
    auto_register_instance: str = ""
    mqtt_url: str = ""  # empty: no MQTT; the password in it is never logged
    mqtt_topic_prefix: str = "owntracks"
    mqtt_client_id: str = Field("tracker", min_length=1, max_length=23)
    mqtt_ca_file: str = ""  # mqtts:// to a broker whose certificate the system does not trust

    @field_validator("mqtt_url")
    @classmethod
    def _mqtt_url_shape(cls, value: str) -> str:
        if value:
            parse_mqtt_url(value)
        return value

    @field_validator("mqtt_ca_file")
    @classmethod
    def _ca_file_exists(cls, value: str) -> str:
        if value and not Path(value).is_file():
            raise ValueError("no such file")
        return value

    @field_validator("mqtt_topic_prefix")
    @classmethod
    def _topic_prefix_shape(cls, value: str) -> str:
        value = value.strip("/")
        if not value or any(c in value for c in "+#\0") or "//" in value:
            raise ValueError("must be a topic without wildcards, e.g. 'owntracks'")
        return value

    @property
    def mqtt_broker(self) -> MqttBroker | None:
        return parse_mqtt_url(self.mqtt_url) if self.mqtt_url else None


class TripSettings(_Section):
    split_gap_seconds: float = Field(300, gt=0)


class SharingSettings(_Section):
    push_interval_seconds: float = Field(5, ge=0)
    road_factor: float = Field(1.3, ge=1)
    arrival_radius_m: float = Field(75, ge=0)
    rate_limit_per_minute: int = Field(60, ge=1)
    max_expires_in_hours: float = Field(168, gt=0)
    # How often overdue sessions are stored as expired (share.expired); the same round
    # looks for quiet devices and ended trips (device.offline, trip.ended).
    expiry_sweep_seconds: float = Field(30, gt=0, le=3600)
    tile_url: str = "https://tile.openstreetmap.org/{z}/{x}/{y}.png"
    tile_attribution: str = "© OpenStreetMap contributors"


class RealtimeSettings(_Section):
    auth_timeout_seconds: float = Field(5, gt=0)
    ping_interval_seconds: float = Field(25, gt=0)
    allowed_origins: list[str] = []
    # Under load, the longest a live position waits to be grouped with others; at
    # once while the loop keeps up (tracker/hub.py, Hub.run_pump). 0: never grouped.
    fanout_interval_seconds: float = Field(0.025, ge=0, le=5)


class ConsoleSettings(_Section):
    offline_after_seconds: float = Field(600, gt=0)


class WebhookSettings(_Section):
    # True lets webhooks reach loopback, private and link-local addresses (local setups, tests).
    allow_private_targets: bool = False
    timeout_seconds: float = Field(10, gt=0, le=60)
    retry_hours: float = Field(24, gt=0, le=24 * 7)  # then the webhook is disabled


class UserServiceSettings(_Section):
    url: str = ""
    token: str = ""
    timeout_seconds: float = Field(5, gt=0)


class MetricsSettings(_Section):
    enabled: bool = False
    token: str = ""  # when set, GET /metrics needs `Authorization: Bearer <token>`


class Settings(_Section):
    server: ServerSettings = ServerSettings()
    storage: StorageSettings = StorageSettings()
    broker: BrokerSettings = BrokerSettings()
    auth: AuthSettings = AuthSettings()
    ingest: IngestSettings = IngestSettings()
    trips: TripSettings = TripSettings()
    sharing: SharingSettings = SharingSettings()
    realtime: RealtimeSettings = RealtimeSettings()
    user_service: UserServiceSettings = UserServiceSettings()
    metrics: MetricsSettings = MetricsSettings()
    console: ConsoleSettings = ConsoleSettings()
    webhooks: WebhookSettings = WebhookSettings()

    def replace(self, **sections: dict) -> Settings:
        """A copy with some keys changed, e.g. replace(server={"port": 0})."""
        data = self.model_dump()
        for section, values in sections.items():
            data[section].update(values)
        return _validate(data)


def _env_overrides(environ: dict[str, str]) -> dict[str, dict[str, object]]:
    """TRACKER_<SECTION>_<KEY> variables as {section: {key: value}}.

    Section names may contain underscores (user_service), so each known
    section is tried as a prefix. Lists are given as JSON (["a", "b"]).
    """
    overrides: dict[str, dict[str, object]] = {}
    sections = Settings.model_fields
    for name, raw in environ.items():
        if not name.startswith("TRACKER_") or name == "TRACKER_CONFIG":
            continue
        rest = name[len("TRACKER_") :].lower()
        for section in sorted(sections, key=len, reverse=True):
            if rest.startswith(section + "_"):
                key = rest[len(section) + 1 :]
                model = sections[section].annotation
                if key not in model.model_fields:
                    raise ConfigError(f"{name}: [{section}] has no key {key!r}")
                value: object = raw
                if model.model_fields[key].annotation == list[str]:
                    try:
                        value = json.loads(raw)
                    except ValueError:
                        value = [item.strip() for item in raw.split(",") if item.strip()]
                overrides.setdefault(section, {})[key] = value
                break
        else:
            raise ConfigError(f"{name}: no config section matches this variable")
    return overrides


def _validate(data: dict) -> Settings:
    try:
        return Settings.model_validate(data)
    except ValidationError as error:
        problems = []
        for item in error.errors():
            key = ".".join(str(part) for part in item["loc"])
            shown = item.get("input")
            if key in ("ingest.mqtt_url", "broker.url", "storage.url"):
                shown = _without_password(shown)
            problems.append(f"{key}: {item['msg']} (got {shown!r})")
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None


def load_settings(
    path: str | os.PathLike | None = None, environ: dict[str, str] | None = None
) -> Settings:
    """Read the config file (if any), apply environment overrides, validate."""
    environ = dict(os.environ if environ is None else environ)
    explicit = path is not None or "TRACKER_CONFIG" in environ
    file = Path(path or environ.get("TRACKER_CONFIG") or DEFAULT_CONFIG_FILE)
    data: dict[str, dict] = {}
    if file.exists():
        try:
            data = tomllib.loads(file.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"{file}: not valid TOML: {error}") from None
        except UnicodeDecodeError as error:
            raise ConfigError(
                f"{file}: not UTF-8 text (byte {error.start}): save it as UTF-8"
            ) from None
        except OSError as error:
            raise ConfigError(f"{file}: cannot be read: {error.strerror}") from None
    elif explicit:
        raise ConfigError(f"config file {file} does not exist")
    for section, values in _env_overrides(environ).items():
        if not isinstance(data.get(section, {}), dict):
            raise ConfigError(f"[{section}] must be a table")
        data.setdefault(section, {}).update(values)
    return _validate(data)
