"""Rust scanner vs pydicom.dcmread(stop_before_pixels=True) on the same files.

pytest benches/bench_scan.py --benchmark-enable -n 0   # pytest-benchmark, per corpus
python benches/bench_scan.py                           # prints the ratio (target >= 20x)
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import pydicom
import pytest

from dicomvault import _native
from dicomvault.bench.corpus import clinical_corpus, ct_corpus
from dicomvault.dicom.values import wanted
from dicomvault.index.levels import INDEXED_KEYWORDS
from dicomvault.testdata import readable_pydicom_test_files

SCANNER = _native.Scanner(wanted(INDEXED_KEYWORDS))


def corpora(root: Path) -> dict[str, list[Path]]:
    return {
        "pydicom test files": readable_pydicom_test_files(),
        "clinical": [g.path for g in clinical_corpus(root / "clinical")],
        "CT 512x512": [g.path for g in ct_corpus(root / "ct", 200)],
    }


def scan_all(files: list[Path]) -> None:
    for f in files:
        SCANNER.scan_file(str(f))


def pydicom_all(files: list[Path]) -> None:
    for f in files:
        pydicom.dcmread(f, stop_before_pixels=True, force=True)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return corpora(tmp_path_factory.mktemp("scan"))


@pytest.mark.parametrize("name", ["pydicom test files", "clinical", "CT 512x512"])
def test_rust_scanner(benchmark, files, name):
    benchmark(scan_all, files[name])


@pytest.mark.parametrize("name", ["pydicom test files", "clinical", "CT 512x512"])
def test_pydicom_dcmread(benchmark, files, name):
    benchmark(pydicom_all, files[name])


def best_of(fn, files: list[Path], repeats: int = 7) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn(files)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        sets = corpora(Path(tmp))
        print(
            f"{'corpus':<20} {'files':>6} {'rust µs/file':>13} {'pydicom µs/file':>16} {'ratio':>7}"
        )
        for name, files in sets.items():
            scan_all(files)
            pydicom_all(files)  # warm the page cache and imports
            rust = best_of(scan_all, files) / len(files) * 1e6
            py = best_of(pydicom_all, files) / len(files) * 1e6
            print(f"{name:<20} {len(files):>6} {rust:>13.1f} {py:>16.1f} {py / rust:>6.1f}x")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
