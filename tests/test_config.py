"""Settings come from tracker.toml and TRACKER_* variables; a bad value names its key."""

from pathlib import Path

import pytest

from tracker.config import ConfigError, load_settings

ROOT = Path(__file__).resolve().parent.parent


def test_shipped_tracker_toml_holds_every_default():
    from tracker.config import Settings

    assert load_settings(ROOT / "tracker.toml", environ={}) == Settings()


def test_environment_overrides_the_file(tmp_path):
    settings = load_settings(
        ROOT / "tracker.toml",
        environ={
            "TRACKER_SERVER_PORT": "9000",
            "TRACKER_USER_SERVICE_TIMEOUT_SECONDS": "2.5",
            "TRACKER_REALTIME_ALLOWED_ORIGINS": '["https://ops.example.com"]',
        },
    )
    assert settings.server.port == 9000
    assert settings.user_service.timeout_seconds == 2.5
    assert settings.realtime.allowed_origins == ["https://ops.example.com"]


def test_tracker_config_variable_names_another_file(tmp_path):
    other = tmp_path / "other.toml"
    other.write_text('[server]\nport = 7000\napi_prefix = "/v9"\n')
    settings = load_settings(environ={"TRACKER_CONFIG": str(other)})
    assert settings.server.port == 7000
    assert settings.server.api_prefix == "/v9"
    assert settings.trips.split_gap_seconds == 300


@pytest.mark.parametrize(
    ("toml", "environ", "named"),
    [
        ('[server]\nport = "abc"\n', {}, "server.port"),
        ("[server]\nprot = 80\n", {}, "server.prot"),
        ("[serverr]\nport = 80\n", {}, "serverr"),
        ("", {"TRACKER_SERVER_PORT": "abc"}, "server.port"),
        ("", {"TRACKER_SERVER_PROT": "80"}, "TRACKER_SERVER_PROT"),
        ('[storage]\nsynchronous = "sometimes"\n', {}, "storage.synchronous"),
        ("[server]\nport = 70000\n", {}, "server.port"),
        ("", {"TRACKER_BROKER_URL": "amqp://127.0.0.1"}, "broker.url"),
        ("", {"TRACKER_BROKER_URL": "redis://127.0.0.1:6379/cache"}, "broker.url"),
    ],
)
def test_bad_value_fails_naming_the_key(tmp_path, toml, environ, named):
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_settings(path, environ=environ)


def test_a_bad_broker_url_is_refused_without_showing_its_password(tmp_path):
    (tmp_path / "tracker.toml").write_text("")
    with pytest.raises(ConfigError, match=r"broker\.url") as refused:
        load_settings(
            tmp_path / "tracker.toml", environ={"TRACKER_BROKER_URL": "redis://:s3cret@h:x/0"}
        )
    assert "s3cret" not in str(refused.value)


def test_missing_named_config_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml", environ={})
