"""Typed settings: shared AGENTRT_* keys, service prefixes, errors naming the variable."""

from __future__ import annotations

import hashlib

import pytest
from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from agentrt_kit.nats import StreamLimits
from agentrt_kit.settings import ConfigError, ServiceSettings, env_name, load_settings


class WorkerSettings(ServiceSettings):
    """A service with its own prefix."""

    model_config = SettingsConfigDict(env_prefix="AGENTRT_TEST_")

    workers: int = 4
    queue_name: str = Field("jobs", min_length=1)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No AGENTRT_* variable of the machine leaks into these tests."""
    import os

    for key in list(os.environ):
        if key.upper().startswith("AGENTRT_"):
            monkeypatch.delenv(key)


def test_defaults() -> None:
    s = load_settings(ServiceSettings)
    assert s.nats_url == "nats://127.0.0.1:4222"
    assert s.nats_prefix == "agentrt"
    assert s.service_token is None
    assert s.service_token_sha256() is None
    assert (s.log_level, s.log_format, s.otel_exporter) == ("INFO", "json", "none")
    assert (s.shutdown_grace_seconds, s.client_timeout_seconds) == (10.0, 5.0)


def test_shared_keys_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTRT_NATS_URL", "nats://a:1,nats://b:2")
    monkeypatch.setenv("AGENTRT_LOG_FORMAT", "text")
    monkeypatch.setenv("AGENTRT_SHUTDOWN_GRACE_SECONDS", "2.5")
    s = load_settings(ServiceSettings)
    assert s.nats_url == "nats://a:1,nats://b:2"
    assert s.log_format == "text"
    assert s.shutdown_grace_seconds == 2.5


def test_bad_shared_value_names_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTRT_LOG_FORMAT", "xml")
    with pytest.raises(ConfigError) as info:
        load_settings(ServiceSettings)
    message = str(info.value)
    assert message.startswith("invalid configuration: AGENTRT_LOG_FORMAT: ")
    assert "'json' or 'text'" in message


def test_shared_stream_limits_are_bounded_by_default_and_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    defaults = load_settings(ServiceSettings)
    assert defaults.audit_limits() == StreamLimits(90 * 86_400.0, 1024**3)
    assert defaults.catalog_limits() == StreamLimits(7 * 86_400.0, 64 * 1024**2)
    monkeypatch.setenv("AGENTRT_AUDIT_MAX_BYTES", "1000")
    monkeypatch.setenv("AGENTRT_CATALOG_TTL_SECONDS", "600")
    s = load_settings(ServiceSettings)
    assert s.audit_limits() == StreamLimits(90 * 86_400.0, 1000)
    assert s.catalog_limits() == StreamLimits(600.0, 64 * 1024**2)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("AGENTRT_AUDIT_MAX_AGE_SECONDS", "0"),
        ("AGENTRT_AUDIT_MAX_BYTES", "-1"),
        ("AGENTRT_CATALOG_TTL_SECONDS", "-5"),
        ("AGENTRT_CATALOG_MAX_BYTES", "0"),
        ("AGENTRT_CATALOG_MAX_BYTES", "lots"),
    ],
)
def test_an_unbounded_or_bad_stream_limit_names_its_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=rf"invalid configuration: {variable}: "):
        load_settings(ServiceSettings)


def test_every_bad_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTRT_LOG_FORMAT", "xml")
    monkeypatch.setenv("AGENTRT_OTEL_EXPORTER", "jaeger")
    monkeypatch.setenv("AGENTRT_TEST_WORKERS", "abc")
    with pytest.raises(ConfigError) as info:
        load_settings(WorkerSettings)
    message = str(info.value)
    for name in ("AGENTRT_LOG_FORMAT", "AGENTRT_OTEL_EXPORTER", "AGENTRT_TEST_WORKERS"):
        assert f"{name}: " in message
    assert message.count(";") == 2


def test_bad_service_value_names_the_prefixed_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTRT_TEST_WORKERS", "abc")
    with pytest.raises(ConfigError, match=r"AGENTRT_TEST_WORKERS: .*integer"):
        load_settings(WorkerSettings)


def test_service_keys_use_the_service_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTRT_TEST_WORKERS", "9")
    monkeypatch.setenv("AGENTRT_WORKERS", "1")  # the shared prefix does not set service keys
    assert load_settings(WorkerSettings).workers == 9


def test_shared_keys_read_from_agentrt_even_with_another_prefix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AGENTRT_NATS_PREFIX", "shared")
    monkeypatch.setenv("AGENTRT_TEST_NATS_PREFIX", "ignored")
    monkeypatch.setenv("AGENTRT_SERVICE_TOKEN", "tok")
    s = load_settings(WorkerSettings)
    assert s.nats_prefix == "shared"
    assert s.service_token is not None
    assert s.service_token.get_secret_value() == "tok"


def test_overrides_win_and_are_validated_too() -> None:
    s = load_settings(WorkerSettings, workers=2, nats_prefix="over")
    assert (s.workers, s.nats_prefix) == (2, "over")
    with pytest.raises(ConfigError, match="AGENTRT_TEST_QUEUE_NAME: "):
        load_settings(WorkerSettings, queue_name="")
    with pytest.raises(ConfigError, match="AGENTRT_CLIENT_TIMEOUT_SECONDS: "):
        load_settings(WorkerSettings, client_timeout_seconds="soon")


def test_service_token_is_secret_and_kept_as_a_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTRT_SERVICE_TOKEN", "hunter2")
    s = load_settings(ServiceSettings)
    assert s.service_token_sha256() == hashlib.sha256(b"hunter2").digest()
    assert "hunter2" not in repr(s)
    assert "hunter2" not in str(s.model_dump())


@pytest.mark.parametrize("prefix", ["agentrt", "t1234", "my-deploy_2", "A"])
def test_valid_nats_prefixes(prefix: str) -> None:
    assert load_settings(ServiceSettings, nats_prefix=prefix).nats_prefix == prefix


@pytest.mark.parametrize("prefix", ["", "a.b", "a b", "a*", "a>", "x/y"])
def test_invalid_nats_prefix_is_refused(prefix: str) -> None:
    with pytest.raises(ConfigError, match=r"AGENTRT_NATS_PREFIX: .*letters, digits"):
        load_settings(ServiceSettings, nats_prefix=prefix)


def test_settings_are_frozen() -> None:
    s = load_settings(ServiceSettings)
    with pytest.raises(ValueError, match="frozen"):
        s.nats_prefix = "other"  # type: ignore[misc]


def test_env_name() -> None:
    assert env_name(WorkerSettings, "workers") == "AGENTRT_TEST_WORKERS"
    assert env_name(WorkerSettings, "log_level") == "AGENTRT_LOG_LEVEL"
    assert env_name(ServiceSettings, "unknown_field") == "AGENTRT_UNKNOWN_FIELD"


class PairedSettings(ServiceSettings):
    """A service whose check spans two keys (a model-level error has no field)."""

    model_config = SettingsConfigDict(env_prefix="AGENTRT_TEST_")

    low: int = 1
    high: int = 2

    @model_validator(mode="after")
    def _ordered(self) -> PairedSettings:
        if self.low > self.high:
            raise ValueError("low must not exceed high")
        return self


def test_error_not_tied_to_one_key_is_still_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTRT_TEST_LOW", "5")
    with pytest.raises(ConfigError, match=r"invalid configuration: low must not exceed high"):
        load_settings(PairedSettings)
