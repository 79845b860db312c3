"""Prometheus metrics kept in process (labelled counters and histograms) and their text
exposition format (version 0.0.4)."""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterable, Sequence

# Seconds: from a cached index read to a slow fsync or a large ZIP download.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def sample(name: str, value: float, labels: dict[str, str] | None = None) -> str:
    """One exposition line: ``name{label="value"} 12``."""
    text = ",".join(f'{k}="{_escape(v)}"' for k, v in (labels or {}).items())
    number = repr(float(value)) if isinstance(value, float) else str(value)
    return f"{name}{{{text}}} {number}" if text else f"{name} {number}"


def family(name: str, kind: str, help_text: str, samples: Iterable[str]) -> list[str]:
    """A metric family: its HELP and TYPE lines, then its samples."""
    return [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", *samples]


class Counter:
    """A monotonically increasing count per label values."""

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()) -> None:
        self.name, self.help_text, self.labels = name, help_text, tuple(labels)
        self._values: dict[tuple[str, ...], float] = {}
        self._lock = threading.Lock()

    def inc(self, *label_values: str, amount: float = 1) -> None:
        with self._lock:
            self._values[label_values] = self._values.get(label_values, 0) + amount

    def value(self, *label_values: str) -> float:
        with self._lock:
            return self._values.get(label_values, 0)

    def expose(self) -> list[str]:
        with self._lock:
            values = sorted(self._values.items())
        return family(
            self.name,
            "counter",
            self.help_text,
            (sample(self.name, v, dict(zip(self.labels, k, strict=True))) for k, v in values),
        )


class Histogram:
    """Observations per label values, in cumulative buckets with their sum and count."""

    def __init__(
        self,
        name: str,
        help_text: str,
        labels: Sequence[str] = (),
        buckets: Sequence[float] = LATENCY_BUCKETS,
    ) -> None:
        self.name, self.help_text, self.labels = name, help_text, tuple(labels)
        self.buckets = tuple(sorted(buckets))
        # Per label values: a count per bucket (the last one is +Inf), the sum.
        self._series: dict[tuple[str, ...], tuple[list[int], list[float]]] = {}
        self._lock = threading.Lock()

    def observe(self, value: float, *label_values: str) -> None:
        with self._lock:
            counts, total = self._series.setdefault(
                label_values, ([0] * (len(self.buckets) + 1), [0.0])
            )
            counts[bisect.bisect_left(self.buckets, value)] += 1
            total[0] += value

    def expose(self) -> list[str]:
        with self._lock:
            series = sorted((k, (list(c), t[0])) for k, (c, t) in self._series.items())
        lines = []
        for label_values, (counts, total) in series:
            labels = dict(zip(self.labels, label_values, strict=True))
            cumulative = 0
            bounds = [*(repr(float(b)) for b in self.buckets), "+Inf"]
            for bound, count in zip(bounds, counts, strict=True):
                cumulative += count
                lines.append(sample(f"{self.name}_bucket", cumulative, {**labels, "le": bound}))
            lines.append(sample(f"{self.name}_sum", total, labels))
            lines.append(sample(f"{self.name}_count", cumulative, labels))
        return family(self.name, "histogram", self.help_text, lines)
