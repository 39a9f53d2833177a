"""Mask secrets in text that leaves a process: log lines and trace span attributes.

A client that puts its API key in a URL (a query string, a path) would otherwise have it
written by the access log and recorded on the request's span.

    >>> redact("GET /v1/jobs?api_key=sous_0123456789ab_s3cr3t-_x")
    'GET /v1/jobs?api_key=sous_0123456789ab_***'
"""

from __future__ import annotations

import re

#: An API key as ``sous_core.apikeys`` issues it, ``sous_<12 hex prefix>_<secret>``: the
#: prefix names the key (``sous keys list``) and is kept, the secret is masked.
API_KEY_PATTERN = re.compile(r"(sous_[0-9a-f]{12}_)[A-Za-z0-9_-]+")


def redact(text: str) -> str:
    """``text`` with the secret of every API key in it masked: ``sous_<prefix>_***``."""
    return API_KEY_PATTERN.sub(r"\1***", text)
