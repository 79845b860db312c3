"""Synthetic archives for the index benchmarks: index entries generated straight into an
index, at any size (4 instances per series, 3 series per study, a patient per ~2 studies,
studies spread over 20 years), and the STUDY-level queries asked of them.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator

from dicomvault.index import Index, InstanceEntry

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
