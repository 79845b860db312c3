"""The index at scale: commit throughput and STUDY-level C-FIND latency as the archive grows.

    python benches/bench_index.py --instances 1000000        # the 1M-instance figures
    pytest benches/bench_index.py --benchmark-enable          # pytest-benchmark, 20,000 instances

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
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dicomvault.index import Index, InstanceEntry, Level

SURNAMES = [
    "SMITH",
    "JONES",
    "TAYLOR",
    "BROWN",
    "WILLIAMS",
    "WILSON",
    "JOHNSON",
    "DAVIES",
    "ROBINSON",
    "WRIGHT",
    "THOMPSON",
    "EVANS",
    "WALKER",
    "WHITE",
    "ROBERTS",
    "GREEN",
    "HALL",
    "WOOD",
    "JACKSON",
    "CLARKE",
]
GIVEN = ["JOHN", "MARY", "PETER", "ANNA", "DAVID", "SARAH", "PAUL", "EMMA", "MARK", "LUCY"]
MODALITIES = ["CT", "MR", "US", "CR", "PT"]


def day_to_date(day: int) -> str:
    """Day ``day`` of 20 years, in a 365-day calendar of 12 months of 28-31 days."""
    year, rest = divmod(day, 365)
    month, dom = divmod(rest, 31)
    return f"{2000 + year:04d}{min(month + 1, 12):02d}{min(dom + 1, 31):02d}"


def study_date(study: int) -> str:
    return day_to_date((study * 7919) % 7300)  # spread over 20 years


def entries(start: int, count: int) -> Iterator[InstanceEntry]:
    for i in range(start, start + count):
        series, study = i // 4, i // 12
        patient = study // 2
        name = f"{SURNAMES[patient % 20]}^{GIVEN[patient // 20 % 10]}{patient // 200}"
        tags = {
            "PatientID": f"PID{patient:08d}",
            "PatientName": name,
            "PatientBirthDate": "19600101",
            "StudyInstanceUID": f"1.2.826.0.1.3680043.9.{study}",
            "StudyDate": study_date(study),
            "StudyTime": "101010",
            "AccessionNumber": f"ACC{study:09d}",
            "StudyDescription": "SYNTHETIC",
            "SeriesInstanceUID": f"1.2.826.0.1.3680043.9.{study}.{series}",
            "Modality": MODALITIES[series % 5],
            "SeriesNumber": str(series % 3 + 1),
            "SOPInstanceUID": f"1.2.826.0.1.3680043.9.{study}.{series}.{i}",
            "SOPClassUID": "1.2.840.10008.5.1.4.1.1.2",
            "InstanceNumber": str(i % 4 + 1),
        }
        yield InstanceEntry(tags, b"m" * 120, 525_000, "2026-11-23T00:00:00.000000Z", "bench")


def commit_all(index: Index, start: int, count: int, batch: int = 1000) -> float:
    """Instances per second committing ``count`` instances from ``start``."""
    started = time.perf_counter()
    for offset in range(start, start + count, batch):
        index.commit(list(entries(offset, min(batch, start + count - offset))))
    return count / (time.perf_counter() - started)


def queries(instances: int, rng: random.Random) -> dict[str, Callable[[], dict[str, str]]]:
    studies, patients = instances // 12, instances // 24

    def name() -> dict[str, str]:
        p = rng.randrange(patients)
        return {"PatientName": f"{SURNAMES[p % 20]}^{GIVEN[p // 20 % 10]}{p // 200}*"}

    # A date window holding ~10 studies whatever the archive's size, so that the latency
    # compares like with like (the cost of a range grows with what it matches, not with N).
    window = max(1, round(7300 * 10 / studies))

    def dates() -> dict[str, str]:
        start = rng.randrange(0, 7300 - window)
        low, high = (day_to_date(start), day_to_date(start + window - 1))
        return {"StudyDate": f"{low}-{high}"}

    return {
        "PatientName prefix": name,
        "StudyDate range": dates,
        "AccessionNumber": lambda: {"AccessionNumber": f"ACC{rng.randrange(studies):09d}"},
        "PatientID": lambda: {"PatientID": f"PID{rng.randrange(patients):08d}"},
    }


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
        Index(Path(tmp) / "index", sync=False) as index,
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
    with Index(tmp_path_factory.mktemp("ix") / "index", sync=False) as index:
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
