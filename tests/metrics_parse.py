"""Read a Prometheus exposition with prometheus-client's own parser."""

from __future__ import annotations

import os
import shutil
import subprocess

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.obs.metrics import Metrics


class Scrape:
    """Samples by (name, labels) from one scrape."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                self.samples[(sample.name, frozenset(sample.labels.items()))] = sample.value

    def get(self, name: str, **labels: str) -> float:
        """The sample's value; 0 when the series does not exist (never incremented)."""
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def label_values(self, label: str) -> set[str]:
        return {v for (_, labels) in self.samples for k, v in labels if k == label}


def sample_value(metrics: Metrics, name: str, labels: dict[str, str] | None = None) -> float | None:
    """One sample of an in-process gateway's exposition, None when it is not there."""
    return Scrape(metrics.exposition().decode()).samples.get((name, frozenset((labels or {}).items())))


async def scrape(admin_port: int) -> Scrape:
    async with aiohttp.ClientSession() as client, client.get(f"http://127.0.0.1:{admin_port}/metrics") as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain; version=")
        return Scrape(await r.text())


def promtool() -> str:
    """promtool's path; skips without it, and fails in CI."""
    found = shutil.which("promtool")
    if found is None:
        message = "promtool is not installed (`make tools` extracts it from Debian's prometheus .deb where it can)"
        # CI must not pass with the check not done: a skip there is a failure.
        if os.environ.get("CI", "") not in ("", "0", "false"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def promtool_check(text: str) -> None:
    """`promtool check metrics` finds nothing to say about `text` (skips without promtool, fails in CI)."""
    result = subprocess.run(
        [promtool(), "check", "metrics"], input=text, capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""
    assert result.stderr.strip() == ""
