"""Where the benchmarks record what they measured: one section per script in results.json."""

from __future__ import annotations

import json
import os
import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results.json"


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")


def report(section: str, results: dict[str, Any], *, save: bool) -> None:
    """Print ``results`` and, with ``save``, replace ``section`` of results.json with them."""
    print(json.dumps(results, indent=2))
    if save:
        merged = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
        merged[section] = results
        RESULTS.write_text(json.dumps(merged, indent=2) + "\n")
