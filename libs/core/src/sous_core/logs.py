"""Log setup shared by every Sous process: one readable line per event on stderr."""

from __future__ import annotations

import logging
import sys

from sous_core.settings import get_settings

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def configure_logging(level: str | None = None) -> None:
    """Send Sous's logs (and libraries' warnings) to stderr at the configured level."""
    level = level or get_settings().log_level
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Per-request client logs would drown the job events.
    for noisy in ("httpx", "httpcore", "amqp", "kombu"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
