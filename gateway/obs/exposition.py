"""Prometheus text format 0.0.4 from cells: one process's, or a supervisor's workers'.

Counters and histograms are summed over the live sources plus `retired` (what dead
workers had counted, see `fold`), so a restart never makes one go backwards. Gauges
follow their family's aggregation; those of a dead worker are gone with it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from gateway.obs.families import CATALOGUE, Family, parse_key

CONTENT_TYPE_LATEST = "text/plain; version=0.0.4; charset=utf-8"

Labels = tuple[tuple[str, str], ...]


def fold(retired: dict[str, float], cells: Mapping[str, float]) -> None:
    """Add a dead worker's final counter and histogram cells to `retired`; its gauges
    are dropped. Fold once, and stop rendering that worker's cells in the same step."""
    for text, value in cells.items():
        parsed = parse_key(text)
        if parsed is not None and parsed[0].kind != "gauge":
            retired[text] = retired.get(text, 0.0) + value


def render(live: Sequence[tuple[str | None, Mapping[str, float]]], retired: Mapping[str, float]) -> bytes:
    """The exposition of `live` sources (a `worker` label value, or None for a source
    whose per-worker gauges carry no label) and the `retired` cells.

    Keys outside the catalogue are skipped: cells come only from our own `Metrics`, and
    one stray key must not cost the operator the whole scrape."""
    workers = [worker for worker, _ in live if worker is not None]
    if len(set(workers)) != len(workers):
        raise ValueError(f"worker labels must be distinct: {workers}")
    scalars: dict[Family, dict[Labels, float]] = {}
    histograms: dict[Family, dict[Labels, list[float]]] = {}
    sources = [(worker, cells, False) for worker, cells in live]
    for worker, cells, counted_only in (*sources, (None, retired, True)):
        for text, value in cells.items():
            parsed = parse_key(text)
            if parsed is None:
                continue
            family, index, values = parsed
            labels = tuple(zip(family.labels, values, strict=True))
            if family.kind == "histogram":
                series = histograms.setdefault(family, {})
                cell = series.get(labels)
                if cell is None:
                    cell = series[labels] = [0.0] * (len(family.bounds) + 1)
                cell[index] += value
                continue
            if family.kind == "gauge" and counted_only:
                continue
            by_labels = scalars.setdefault(family, {})
            if family.aggregation == "worker" and family.kind == "gauge" and worker is not None:
                labels = (*labels, ("worker", worker))
            if labels not in by_labels:
                by_labels[labels] = value
            elif family.aggregation == "max" and family.kind == "gauge":
                by_labels[labels] = max(by_labels[labels], value)
            else:
                by_labels[labels] = by_labels[labels] + value
    out: list[str] = []
    for family in CATALOGUE:
        if family.kind == "histogram":
            if family in histograms:
                _header(out, family)
                _histogram(out, family, histograms[family])
        elif family in scalars:
            _header(out, family)
            name = family.exposed
            for labels, value in sorted(scalars[family].items()):
                out.append(f"{name}{_labels(labels)} {_number(value)}\n")
    return "".join(out).encode()


def _header(out: list[str], family: Family) -> None:
    text = family.help.replace("\\", r"\\").replace("\n", r"\n")
    out.append(f"# HELP {family.exposed} {text}\n# TYPE {family.exposed} {family.kind}\n")


def _histogram(out: list[str], family: Family, series: Mapping[Labels, list[float]]) -> None:
    name = family.name
    for labels, cells in sorted(series.items()):
        total = 0.0
        for le, count in zip(family.bounds, cells, strict=False):
            total += count
            out.append(f"{name}_bucket{_labels((*labels, ('le', le)))} {_number(total)}\n")
        plain = _labels(labels)
        out.append(f"{name}_count{plain} {_number(total)}\n{name}_sum{plain} {_number(cells[-1])}\n")


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    # Sorted by name, as prometheus-client writes them.
    inner = ",".join(f'{name}="{_escape(value)}"' for name, value in sorted(labels))
    return f"{{{inner}}}"


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(float(value))
