"""The index at scale: commit throughput and STUDY-level C-FIND latency as the archive grows.

    python benches/bench_index.py --instances 1000000        # the 1M-instance figures
    pytest benches/bench_index.py --benchmark-enable -n 0     # pytest-benchmark, 20,000 instances

Synthetic instances (4 per series, 3 series per study, a patient per ~2 studies, studies spread
over 20 years) are committed in batches of 1,000 straight into the index. The script prints
commit throughput for the first and the last 10% (the target: the last within 10% of the first)
and the latency of STUDY-level queries (PatientName prefix wildcard, a StudyDate range holding
about 10 studies, AccessionNumber, PatientID) when the index holds 10% and 100% of them.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from dicomvault.bench.synthetic import commit_all, entries, queries
from dicomvault.index import Index, Level, LmdbIndex


def latency(
    index: Index, make: Callable[[], dict[str, str]], runs: int = 200
) -> tuple[float, float, float]:
    """p50 and p95 in ms and the mean number of matches, for STUDY-level queries."""
    times, matches = [], []
    for _ in range(runs):
        filters = make()
        started = time.perf_counter()
        found = list(
            index.find(
                Level.STUDY,
                filters,
                ["PatientName", "StudyDate", "ModalitiesInStudy", "NumberOfStudyRelatedInstances"],
            )
        )
        times.append((time.perf_counter() - started) * 1e3)
        matches.append(len(found))
    times.sort()
    return times[len(times) // 2], times[int(len(times) * 0.95)], statistics.mean(matches)


def report(index: Index, instances: int) -> None:
    rng = random.Random(1)
    for label, make in queries(instances, rng).items():
        p50, p95, n = latency(index, make)
        print(
            f"    {label:<20} p50 {p50:6.2f} ms   p95 {p95:6.2f} ms   ({n:.1f} studies per query)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description="Index commit and query figures at scale.")
    parser.add_argument("--instances", type=int, default=1_000_000)
    parser.add_argument("--path", type=Path, default=None)
    args = parser.parse_args()
    n = args.instances
    tenth = n // 10
    with (
        tempfile.TemporaryDirectory(dir=args.path) as tmp,
        LmdbIndex(Path(tmp) / "index", sync=False) as index,
    ):
        first = commit_all(index, 0, tenth)
        print(f"{tenth:,} instances: commit {first:,.0f} instances/s")
        report(index, tenth)
        middle = commit_all(index, tenth, n - 2 * tenth)
        last = commit_all(index, n - tenth, tenth)
        print(
            f"{n:,} instances: commit of the last 10% {last:,.0f} instances/s "
            f"({last / first:.2f}x the first 10%; middle 80% {middle:,.0f}/s)"
        )
        report(index, n)
        size = sum(p.stat().st_size for p in (Path(tmp) / "index").iterdir())
        print(f"    index size on disk {size / 1e6:,.0f} MB ({size / n:,.0f} bytes per instance)")


@pytest.fixture(scope="module")
def filled(tmp_path_factory):
    with LmdbIndex(tmp_path_factory.mktemp("ix") / "index", sync=False) as index:
        commit_all(index, 0, 20_000)
        yield index


@pytest.mark.parametrize(
    "kind", ["PatientName prefix", "StudyDate range", "AccessionNumber", "PatientID"]
)
def test_study_query(benchmark, filled, kind):
    make = queries(20_000, random.Random(2))[kind]
    benchmark(lambda: list(filled.find(Level.STUDY, make())))


def test_commit_batch(benchmark, filled):
    counter = iter(range(10**9))
    benchmark(lambda: filled.commit(list(entries(1_000_000 + next(counter) * 100, 100))))


if __name__ == "__main__":
    main()
