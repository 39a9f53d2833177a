"""``sous-api``: serve the HTTP API with uvicorn."""

from __future__ import annotations

import argparse

import uvicorn

from sous_core.logs import configure_logging
from sous_core.metrics_process import prepare_multiprocess
from sous_core.settings import get_settings


def main(argv: list[str] | None = None) -> None:
    settings = get_settings()
    parser = argparse.ArgumentParser(
        prog="sous-api",
        description="Serve the Sous HTTP API (settings from SOUS_* environment variables).",
    )
    parser.add_argument(
        "--host",
        default=settings.api_host,
        help="listen address (SOUS_API_HOST, default %(default)s)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=settings.api_port,
        help="listen port (SOUS_API_PORT, default %(default)s)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=settings.api_workers,
        help="uvicorn worker processes (SOUS_API_WORKERS, default %(default)s)",
    )
    args = parser.parse_args(argv)
    configure_logging("sous-api")
    if args.workers > 1:
        # Several uvicorn processes: their metrics are summed from files at scrape time.
        prepare_multiprocess(settings.metrics_multiproc_dir)
    uvicorn.run(
        "sous_api.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_config=None,
        proxy_headers=True,
        timeout_graceful_shutdown=10,
    )


if __name__ == "__main__":
    main()
