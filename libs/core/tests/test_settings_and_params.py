"""Settings come from SOUS_ variables and are validated; job parameters too."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from sous_core.params import FetchParams
from sous_core.settings import Settings


def test_defaults_point_at_local_services(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SOUS_BROKER_URL", "SOUS_RESULT_BACKEND", "SOUS_API_PORT", "SOUS_API_HOST"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert settings.broker_url == "amqp://guest:guest@127.0.0.1:5672//"
    assert settings.result_backend == "redis://127.0.0.1:6379/0"
    assert (settings.api_host, settings.api_port) == ("127.0.0.1", 8000)
    assert settings.broker_is_amqp


def test_environment_overrides_with_the_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOUS_API_PORT", "9123")
    monkeypatch.setenv("SOUS_FETCH_ALLOW_NETWORKS", "127.0.0.2/32, 10.1.0.0/16")
    monkeypatch.setenv("API_PORT", "1")  # Kubernetes-style variables must not leak in
    settings = Settings()
    assert settings.api_port == 9123
    assert [str(n) for n in settings.fetch_allowed_networks] == ["127.0.0.2/32", "10.1.0.0/16"]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SOUS_FETCH_ALLOW_NETWORKS", "not-a-cidr"),
        ("SOUS_API_PORT", "70000"),
        ("SOUS_MAX_DELIVERIES", "0"),
        ("SOUS_LOG_LEVEL", "LOUD"),
    ],
)
def test_bad_values_are_refused_with_the_variable_named(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=name.removeprefix("SOUS_").lower()):
        Settings()


def test_production_refuses_placeholder_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOUS_ENVIRONMENT", "production")
    monkeypatch.delenv("SOUS_BROKER_URL", raising=False)
    with pytest.raises(RuntimeError, match="SOUS_BROKER_URL"):
        Settings().check_production_ready()
    monkeypatch.setenv("SOUS_BROKER_URL", "amqp://sous:s3cret@rabbitmq:5672//")
    Settings().check_production_ready()


@pytest.mark.parametrize(
    "url",
    ["https://example.com/", "http://example.com:8080/a?b=c", "http://[2001:db8::1]/x"],
)
def test_fetch_params_accept_http_urls(url: str) -> None:
    assert FetchParams(url=url).url == url


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/",
        "example.com",
        "https://",
        "https://u:p@example.com/",
        "https://example.com:0x50/",
        "https://exa mple.com/",
        "javascript:alert(1)",
    ],
)
def test_fetch_params_refuse_other_urls(url: str) -> None:
    with pytest.raises(ValidationError):
        FetchParams(url=url)
