"""The fault suite: Sous under a mixed job stream while workers die and servers restart.

Starts private RabbitMQ, Redis and PostgreSQL servers on free ports (never the machine's
shared ones), the Sous processes, an SMTP sink and an HTTP origin; submits emails, fetch
batches and transcodes while killing, freezing and rolling workers and restarting each
server; then prints the invariants (lost = 0, duplicated = 0, ...) as a table.

    uv run python scripts/chaos.py --duration 240 --seed 7 --json /tmp/chaos.json
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from chaos.harness import FAULTS, ChaosConfig, run_chaos


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--duration",
        type=float,
        default=240,
        help="seconds of faults: rounds of every fault repeat until then; 0 for one round "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--seed", type=int, default=None, help="random seed (default: the current time)"
    )
    parser.add_argument(
        "--rate", type=float, default=3.0, help="job submissions per second (default: %(default)s)"
    )
    parser.add_argument(
        "--faults",
        default=",".join(FAULTS),
        help="comma-separated faults to inject (default: all of them: %(default)s)",
    )
    parser.add_argument("--json", type=Path, help="also write the report as JSON here")
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the logs and media after a passing run (a failing run always keeps them)",
    )
    args = parser.parse_args(argv)
    faults = tuple(name for name in args.faults.split(",") if name)
    unknown = set(faults) - set(FAULTS)
    if unknown:
        parser.error(f"unknown faults: {', '.join(sorted(unknown))}")
    seed = args.seed if args.seed is not None else int(time.time())
    folder = Path(tempfile.mkdtemp(prefix="sous-chaos-"))
    config = ChaosConfig(seed=seed, duration=args.duration, rate=args.rate, faults=faults)
    print(f"chaos: seed {seed}, {args.duration:g}s of faults, working in {folder}", flush=True)
    report = run_chaos(config, folder, log=lambda line: print(line, flush=True))
    json_path = args.json or folder / "report.json"
    json_path.write_text(report.to_json())
    print(report.table())
    if report.ok and not args.keep:
        for name in ("logs", "storage", "outputs"):
            shutil.rmtree(folder / name, ignore_errors=True)
        for clip in folder.glob("clip-*.mp4"):
            clip.unlink()
        print(f"\nreport: {json_path}")
    else:
        print(f"\nreport: {json_path}; logs: {folder / 'logs'}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
