"""`dicomvault bench find` and `bench retrieve` run against real peers and print figures."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest


def bench(*args: object, work: object) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "dicomvault", "bench", *map(str, args), "--work", str(work)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "TCP_NODELAY": "1"},
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_bench_find_reports_latency_per_kind_of_query(tmp_path):
    out = bench("find", "--instances", 2400, "--count", 5, work=tmp_path)
    lines = re.findall(r"C-FIND STUDY (.+?)\s+p50\s+([0-9.]+) ms\s+p95\s+([0-9.]+) ms", out)
    assert [kind for kind, _, _ in lines] == [
        "PatientName prefix",
        "StudyDate range",
        "AccessionNumber",
        "PatientID",
    ]
    for _, p50, p95 in lines:
        assert 0 < float(p50) <= float(p95)


def test_bench_retrieve_compares_with_orthanc(tmp_path):
    out = bench("retrieve", "--instances", 4, "--runs", 1, work=tmp_path)
    ours = re.search(r"dicomvault\s+([0-9]+) inst/s", out)
    theirs = re.search(r"orthanc\s+([0-9]+) inst/s\s+dicomvault/orthanc: ([0-9.]+)x", out)
    assert ours and theirs, out
    assert int(ours[1]) > 0 and int(theirs[1]) > 0
    assert float(theirs[2]) == pytest.approx(int(ours[1]) / int(theirs[1]), rel=0.05)
