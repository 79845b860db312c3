"""`dicomvault bench ingest`, `sustained`, `find`, `retrieve` and `scale` run against real peers
and print figures."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest


def run_bench(*args: object, work: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "dicomvault", "bench", *map(str, args), "--work", str(work)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "TCP_NODELAY": "1"},
    )
    assert result.returncode == 0, result.stderr
    return result


def bench(*args: object, work: object) -> str:
    return run_bench(*args, work=work).stdout


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


ROW = re.compile(
    r"^(?P<corpus>CT 0\.5 MB|small 10 KB|multi-frame \d+ MB)\s+(?P<assoc>\d)\s+"
    r"(?P<server>storescp|orthanc|dicomvault \w+)\s+(?P<rate>[0-9.]+)\s+(?P<mbs>[0-9.]+)"
    r"\s+(?P<vs_storescp>[0-9.]+x|-)\s+(?P<vs_orthanc>[0-9.]+x|-)\s+(?P<cpu>[0-9.]+)"
    r"\s+(?P<rss>\d+)\s+(?P<rtt>[0-9.]+)\s+-$",
    re.MULTILINE,
)


def test_bench_ingest_prints_every_row_and_the_disk_limits(tmp_path):
    out = bench(
        "ingest", "--quick", "--runs", 1, "--server", "storescp", "--server", "orthanc",
        "--server", "dicomvault", work=tmp_path,
    )  # fmt: skip
    rows = {(m["corpus"], int(m["assoc"]), m["server"]): m for m in ROW.finditer(out)}
    servers = ["storescp", "orthanc", "dicomvault always", "dicomvault batch", "dicomvault never"]
    groups = [("CT 0.5 MB", 1), ("CT 0.5 MB", 4), ("small 10 KB", 1), ("small 10 KB", 4)]
    groups.append(("multi-frame 20 MB", 1))
    assert sorted(rows) == sorted((c, a, s) for c, a in groups for s in servers), out
    for (corpus, associations, server), row in rows.items():
        rate, mbs = float(row["rate"]), float(row["mbs"])
        assert rate > 0 and float(row["rss"]) > 0 and float(row["rtt"]) > 0, out
        # Every server's CPU is counted, storescp's forked children included.
        assert float(row["cpu"]) > 0, out
        instance_mb = {"CT 0.5 MB": 0.53, "small 10 KB": 0.0094, "multi-frame 20 MB": 20}
        assert mbs / rate == pytest.approx(instance_mb[corpus], rel=0.1), out
        for peer in ("storescp", "orthanc"):
            theirs = float(rows[corpus, associations, peer]["rate"])
            shown = row[f"vs_{peer}"]
            if server == peer:
                assert shown == "-", out
            else:
                assert float(shown[:-1]) == pytest.approx(rate / theirs, rel=0.05, abs=0.01), out
    disk = re.search(
        r"disk: stream \(dd conv=fdatasync\) (\d+) MB/s; 0\.5 MiB writes each fdatasynced "
        r"(\d+) MB/s; one fdatasync after a 0\.5 MiB write ([0-9.]+) ms; loopback TCP (\d+)",
        out,
    )
    assert disk and all(float(v) > 0 for v in disk.groups()), out
    share = re.search(
        r"sync = always, CT 0\.5 MB at 4 associations: (\d+) MB/s = (\d+)% of the durable", out
    )
    assert share, out
    ours = float(rows["CT 0.5 MB", 4, "dicomvault always"]["mbs"])
    assert int(share[1]) == pytest.approx(ours, abs=1), out
    assert int(share[2]) == pytest.approx(100 * ours / int(disk[2]), rel=0.03, abs=1), out
    for corpus in ("CT 0.5 MB", "small 10 KB"):
        trip = re.search(
            rf"sync = always, {corpus} at 1 association: C-STORE round trip ([0-9.]+) ms, "
            rf"storescp's ([0-9.]+) ms: ([-+][0-9.]+) ms, against one fdatasync of ([0-9.]+) ms",
            out,
        )
        assert trip, out
        assert float(trip[1]) == float(rows[corpus, 1, "dicomvault always"]["rtt"]), out
        assert float(trip[2]) == float(rows[corpus, 1, "storescp"]["rtt"]), out
        assert float(trip[3]) == pytest.approx(float(trip[1]) - float(trip[2]), abs=0.011), out
        assert float(trip[4]) == float(disk[3]), out


def test_bench_sustained_samples_each_tenth_and_counts_the_archive(tmp_path):
    out = bench("sustained", "--count", 300, "--associations", 2, work=tmp_path)
    tenths = re.findall(r"^\s+(\d+)\s+(\d+)\s+(\d+)\s+([0-9.]+)" + r"\s+(\d+)" * 3 + "$", out, re.M)
    assert [(int(t), int(n)) for t, n, *_ in tenths] == [(t, 30 * t) for t in range(1, 11)], out
    for _, _, rate, trip, rss, anonymous, peak in tenths:
        assert int(rate) > 0 and float(trip) > 0
        assert 0 < int(anonymous) <= int(rss) <= int(peak)
    ratio = re.search(
        r"first tenth (\d+) inst/s, last tenth (\d+) inst/s: last/first ([0-9.]+)", out
    )
    assert ratio, out
    assert (int(ratio[1]), int(ratio[2])) == (int(tenths[0][2]), int(tenths[-1][2]))
    assert float(ratio[3]) == pytest.approx(int(ratio[2]) / int(ratio[1]), rel=0.05)
    assert "archive: 300 instances indexed of 300 sent" in out


SCALE_ROW = re.compile(
    r"^(?P<setup>dicomvault local|dicomvault S3\+PG|Orthanc SQLite|Orthanc PG)\s+(?P<nodes>\d)"
    r"\s+(?P<assoc>\d)\s+(?P<rate>[0-9.]+)\s+[0-9.]+\s+[0-9.]+\s+(?P<cpu>[0-9.]+)\s",
    re.MULTILINE,
)


def test_bench_scale_measures_every_setup_and_the_ratios(tmp_path):
    done = run_bench(
        "scale", "--count", 20, "--runs", 1, "--find-instances", 2400, "--find-queries", 2,
        "--json", work=tmp_path,
    )  # fmt: skip
    figures = json.loads(done.stdout)
    rows = {(r["setup"], r["nodes"], r["associations"]): r for r in figures["rows"]}
    assert list(rows) == [
        ("dicomvault local", 1, 1), ("dicomvault local", 1, 4),
        ("dicomvault S3+PG", 1, 1), ("dicomvault S3+PG", 1, 4), ("dicomvault S3+PG", 2, 4),
        ("Orthanc SQLite", 1, 1), ("Orthanc SQLite", 1, 4),
        ("Orthanc PG", 1, 1), ("Orthanc PG", 1, 4), ("Orthanc PG", 2, 4),
    ]  # fmt: skip
    engines = {
        "dicomvault local": [],
        "dicomvault S3+PG": ["postgresql", "seaweedfs"],
        "Orthanc SQLite": [],
        "Orthanc PG": ["postgresql"],
    }
    find = {"dicomvault local": "lmdb", "dicomvault S3+PG": "pg"}
    p50_by_index: dict[str, set[float]] = {}
    for (setup, _, _), row in rows.items():
        assert row["rate"] > 0 and 0 < row["p50_ms"] <= row["p99_ms"], row
        # The servers' CPU, and only that of the engines the row runs on.
        assert list(row["cpu_ms"]) == ["nodes", *engines[setup]], row
        assert row["cpu_ms"]["nodes"] > 0, row
        assert row["cpu_ms_total"] == pytest.approx(sum(row["cpu_ms"].values())), row
        if setup in find:
            assert row["find_p50_ms"] > 0, row
            p50_by_index.setdefault(find[setup], set()).add(row["find_p50_ms"])
        else:
            assert row["find_p50_ms"] is None, row
    # One C-FIND measurement per index backend.
    assert {index: len(p50s) for index, p50s in p50_by_index.items()} == {"lmdb": 1, "pg": 1}
    # SeaweedFS did the S3 rows' work.
    assert all(rows["dicomvault S3+PG", n, 4]["cpu_ms"]["seaweedfs"] > 0 for n in (1, 2))
    ratios = {r["name"]: r for r in figures["ratios"]}
    local, shared, pg = "dicomvault local", "dicomvault S3+PG", "Orthanc PG"
    expected = {
        "dicomvault 2 nodes / 1 node on S3+PG, 4 assoc": ((shared, 2, 4), (shared, 1, 4), 1.4),
        "dicomvault S3+PG / local, 1 node, 1 assoc": ((shared, 1, 1), (local, 1, 1), 0.6),
        "dicomvault S3+PG / local, 1 node, 4 assoc": ((shared, 1, 4), (local, 1, 4), 0.6),
        "dicomvault 2 nodes on S3+PG / Orthanc 2 nodes on PG, 4 assoc": (
            (shared, 2, 4), (pg, 2, 4), 2.0,
        ),
        "Orthanc 2 nodes / 1 node on PG, 4 assoc": ((pg, 2, 4), (pg, 1, 4), None),
        "Orthanc PG / SQLite, 1 node, 4 assoc": ((pg, 1, 4), ("Orthanc SQLite", 1, 4), None),
    }  # fmt: skip
    assert list(ratios) == list(expected), figures["ratios"]
    for name, (ours, theirs, target) in expected.items():
        assert ratios[name]["target"] == target
        assert ratios[name]["value"] == pytest.approx(rows[ours]["rate"] / rows[theirs]["rate"])
    # The table (on stderr with --json) shows the same figures, and the ratios.
    table = {
        (m["setup"], int(m["nodes"]), int(m["assoc"])): m
        for m in SCALE_ROW.finditer(done.stderr.split("server ", 1)[1])
    }
    assert list(table) == list(rows), done.stderr
    for key, shown in table.items():
        assert float(shown["rate"]) == pytest.approx(rows[key]["rate"], abs=0.05)
        assert float(shown["cpu"]) == pytest.approx(rows[key]["cpu_ms_total"], abs=0.005)
    for name, ratio in ratios.items():
        assert f"{name}: {ratio['value']:.2f}x" in done.stderr
