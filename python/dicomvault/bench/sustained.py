"""Sustained ingest: ``count`` distinct small instances into one ``dicomvault serve`` archive,
a tenth at a time, to see whether the rate holds and memory stays flat as the archive grows.

DCMTK's storescu sends (the fastest sender at hand: C++, one association per process, several
processes), each association a directory of files (``+sd``, no argument list to overflow).
Each tenth's instances are written before it is sent (``NumberedInstances``: one template,
distinct UIDs and pixels) and deleted after, so that the sender's files never take more than a
tenth's room, and what their writing left dirty is flushed before the tenth is timed. A
tenth's rate runs from its first C-STORE request to its last response; the server's RSS (its
process tree; and its anonymous part, which leaves out the LMDB index's mapped pages) is read
as each tenth ends. At the end the archive's instances are counted.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dicomvault.bench.corpus import NumberedInstances
from dicomvault.bench.ingest import send
from dicomvault.bench.peers import Dicomvault

# Room per instance beyond its bytes in the packs: manifest record, LMDB index entries and
# their pages (measured about 3 KB; printed at the end of every run to check), and a file
# system block's rounding for the sender's copy.
ARCHIVE_OVERHEAD = 4096
FILE_BLOCK = 4096
SMALLER = {"rows": 32, "columns": 32}


@dataclass
class Tenth:
    instances: int
    per_second: float
    round_trip: float
    rss_mb: float
    anonymous_mb: float
    peak_rss_mb: float


def disk_needed(count: int, size: int) -> int:
    """Bytes of the archive plus one tenth of sender's files."""
    sender = -(-size // FILE_BLOCK) * FILE_BLOCK * -(-count // 10)
    return count * (size + ARCHIVE_OVERHEAD) + sender


def instances_for(work: Path, count: int, report: Callable[[str], None]) -> NumberedInstances:
    """~10 KB instances if the disk has room for ``count`` of them (with a tenth to spare),
    else ~2.5 KB ones."""
    free = shutil.disk_usage(work).free
    for shape in ({}, SMALLER):
        instances = NumberedInstances(**shape)
        needed = disk_needed(count, instances.size)
        report(
            f"{count} instances of {instances.size / 1e3:.1f} KB: about {needed / 1e9:.2f} GB "
            f"needed, {free / 1e9:.1f} GB free on {work}"
        )
        if needed * 1.1 < free:
            return instances
        if not shape:
            report("not enough room: using smaller instances (32x32 pixels)")
    raise RuntimeError(f"not enough disk on {work} for {count} instances")


def archive_stats(root: Path, config: Path | None) -> dict[str, int]:
    argv = [sys.executable, "-m", "dicomvault", "stats", "--json", "--root", str(root)]
    if config:
        argv += ["--config", str(config)]
    return json.loads(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)


def run(
    work: Path,
    count: int,
    associations: int = 4,
    sync: str | None = None,
    config: Path | None = None,
    report: Callable[[str], None] = print,
) -> list[Tenth]:
    instances = instances_for(work, count, report)
    server = Dicomvault(config=config, sync=sync)
    serving, outgoing = work / "server", work / "outgoing"
    serving.mkdir()
    server.start(serving)
    tenths: list[Tenth] = []
    report(
        f"{'tenth':>5} {'instances':>10} {'inst/s':>8} {'rtt ms':>7} {'rss MB':>7} "
        f"{'anon MB':>7} {'peak MB':>7}"
    )
    try:
        for tenth in range(10):
            first = count * tenth // 10
            size = count * (tenth + 1) // 10 - first
            folders = [outgoing / str(a) for a in range(associations)]
            for a, folder in enumerate(folders):
                share = size * (a + 1) // associations - size * a // associations
                instances.write(folder, first + size * a // associations, share)
            os.sync()
            sent = send(server, folders, associations, options=("+sd",))
            shutil.rmtree(outgoing)
            tenths.append(
                Tenth(
                    size,
                    size / sent.exchange_seconds,
                    statistics.median(sent.round_trips),
                    server.sampler.current_mb,
                    server.sampler.anonymous_mb,
                    server.sampler.peak_kb / 1024,
                )
            )
            t = tenths[-1]
            report(
                f"{tenth + 1:>5} {first + size:>10} {t.per_second:8.0f} "
                f"{t.round_trip * 1e3:7.2f} {t.rss_mb:7.0f} {t.anonymous_mb:7.0f} "
                f"{t.peak_rss_mb:7.0f}"
            )
    finally:
        cpu, _ = server.stop()
    stats = archive_stats(serving / "archive", config)
    used = sum(f.stat().st_blocks * 512 for f in (serving / "archive").rglob("*") if f.is_file())
    report(
        f"first tenth {tenths[0].per_second:.0f} inst/s, last tenth {tenths[-1].per_second:.0f} "
        f"inst/s: last/first {tenths[-1].per_second / tenths[0].per_second:.2f}; server CPU "
        f"{cpu * 1e3 / count:.3f} ms per instance"
    )
    report(
        f"archive: {stats['instances']} instances indexed of {count} sent, "
        f"{used / 1e9:.2f} GB ({used / count / 1e3:.1f} KB per instance of "
        f"{instances.size / 1e3:.1f} KB)"
    )
    if stats["instances"] != count:
        raise RuntimeError(f"{count} instances sent, {stats['instances']} in the archive")
    return tenths
