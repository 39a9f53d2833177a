"""Parameters of each job kind, validated by the API on submit and by workers on start."""

from __future__ import annotations

import urllib.parse

from pydantic import BaseModel, ConfigDict, Field, field_validator

#: Longest URL a fetch accepts.
MAX_URL_LENGTH = 2048


def check_fetch_url(url: str) -> str:
    """An absolute http(s) URL with a host and no credentials, or a ``ValueError``."""
    if any(char.isspace() for char in url):
        raise ValueError("the URL must not contain whitespace")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError("only http:// and https:// URLs can be fetched")
    if not parts.hostname:
        raise ValueError("the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("credentials in the URL are not allowed")
    try:
        parts.port  # noqa: B018 - reading the port validates it
    except ValueError as exc:
        raise ValueError(f"the URL's port is invalid: {exc}") from exc
    return url


class FetchParams(BaseModel):
    """Fetch one URL in the background."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(
        max_length=MAX_URL_LENGTH,
        description="Absolute http(s) URL to fetch.",
        examples=["https://example.com/"],
    )

    store_body: bool = Field(
        default=False,
        description="Keep the response body; download it from ``GET /v1/jobs/{id}/output``.",
    )

    @field_validator("url")
    @classmethod
    def _valid_url(cls, url: str) -> str:
        return check_fetch_url(url)


class FetchBatchParams(BaseModel):
    """Fetch many URLs in parallel: one parent job, one child fetch job per URL."""

    model_config = ConfigDict(extra="forbid")

    urls: list[str] = Field(min_length=1, description="Absolute http(s) URLs, fetched in parallel.")
    store_body: bool = False

    @field_validator("urls")
    @classmethod
    def _valid_urls(cls, urls: list[str]) -> list[str]:
        for index, url in enumerate(urls):
            if len(url) > MAX_URL_LENGTH:
                raise ValueError(f"urls[{index}] is longer than {MAX_URL_LENGTH} characters")
            try:
                check_fetch_url(url)
            except ValueError as exc:
                raise ValueError(f"urls[{index}] ({url[:100]!r}): {exc}") from None
        return urls

    def child_params(self) -> list[dict[str, object]]:
        return [{"url": url, "store_body": self.store_body} for url in self.urls]


def check_callback_url(url: str | None) -> str | None:
    """A webhook target: an absolute http(s) URL (its address is checked when it is called)."""
    if url is None:
        return None
    if len(url) > MAX_URL_LENGTH:
        raise ValueError(f"callback_url is longer than {MAX_URL_LENGTH} characters")
    return check_fetch_url(url)
