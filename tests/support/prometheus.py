"""A real Prometheus server (Debian's ``prometheus``) on 127.0.0.1, scraping given targets."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import httpx
import yaml

from support.stack import Proc, free_port, wait_until


class PrometheusServer:
    def __init__(self, workdir: Path, targets: dict[str, str], interval: str = "1s") -> None:
        """``targets``: job name → ``host:port`` serving ``/metrics``."""
        binary = shutil.which("prometheus")
        if binary is None:
            raise RuntimeError("prometheus is not installed: run `make tools`")
        workdir.mkdir(parents=True, exist_ok=True)
        config = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": [target]}]}
                for job, target in targets.items()
            ],
        }
        config_path = workdir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config))
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.proc = Proc.start(
            "prometheus",
            [
                binary,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--web.enable-lifecycle",
            ],
            {"PATH": "/usr/bin:/bin"},
            workdir / "prometheus.log",
        )
        wait_until(self._ready, 30, "Prometheus to be ready")

    def _ready(self) -> bool:
        if self.proc.popen.poll() is not None:
            raise AssertionError(f"prometheus exited:\n{self.proc.log()}")
        try:
            return httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def query(self, promql: str) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=5)
        response.raise_for_status()
        body = response.json()
        assert body["status"] == "success", body
        return body["data"]["result"]

    def targets_up(self) -> dict[str, str]:
        response = httpx.get(f"{self.url}/api/v1/targets", timeout=5).json()
        return {t["labels"]["job"]: t["health"] for t in response["data"]["activeTargets"]}

    def close(self) -> None:
        self.proc.stop()
