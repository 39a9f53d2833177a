"""``.env.example`` documents every setting, with its default, and nothing that does not exist."""

from __future__ import annotations

from pathlib import Path

from sous_core.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
#: Variables read by the local tooling (scripts/devstack.py), not by the settings class.
TOOLING_VARIABLES = {"SOUS_FLOWER_PORT"}


def documented() -> dict[str, str]:
    pairs = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            pairs[name] = value
    return pairs


def test_every_setting_is_documented_and_nothing_else() -> None:
    settings = {f"SOUS_{name.upper()}" for name in Settings.model_fields}
    assert set(documented()) - TOOLING_VARIABLES == settings


def test_documented_values_are_the_defaults(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    for name in list(documented()):
        monkeypatch.delenv(name, raising=False)
    defaults = Settings()
    for name, value in documented().items():
        if name in TOOLING_VARIABLES:
            continue
        field = name.removeprefix("SOUS_").lower()
        assert str(getattr(defaults, field)) == (value or ""), name
