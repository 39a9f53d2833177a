"""Read a process's ``/metrics`` over HTTP, the way Prometheus does, and sum samples."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families


@dataclass(frozen=True)
class Samples:
    samples: list[tuple[str, dict[str, str], float]]

    def total(self, metric: str, /, **labels: str) -> float:
        """Sum of the samples called ``metric`` whose labels include ``labels``."""
        return sum(
            value
            for sample, sample_labels, value in self.samples
            if sample == metric and all(sample_labels.get(k) == v for k, v in labels.items())
        )

    def has(self, metric: str, /, **labels: str) -> bool:
        return any(
            sample == metric and all(sample_labels.get(k) == v for k, v in labels.items())
            for sample, sample_labels, _ in self.samples
        )

    def label_values(self, name: str, label: str) -> set[str]:
        return {
            labels[label]
            for sample, labels, _ in self.samples
            if sample == name and label in labels
        }


def scrape(url: str) -> Samples:
    response = httpx.get(url, timeout=10)
    response.raise_for_status()
    assert response.headers["content-type"].startswith("text/plain"), response.headers
    return Samples(
        [
            (sample.name, dict(sample.labels), sample.value)
            for family in text_string_to_metric_families(response.text)
            for sample in family.samples
        ]
    )
