"""Ingest benchmark: DCMTK's storescu against dicomvault and its peers, in one run, beside the
disk's own durable bandwidth.

For each corpus (CT 512x512x16 ~0.5 MB, small ~10 KB instances, one large multi-frame) and
each concurrency (1 and 4 associations, TCP_NODELAY=1 exported for DCMTK), every server is
started fresh, fed by storescu, stopped, and measured: instances/s, MB/s, server CPU per
instance (wait4 on the server and its reaped children), peak RSS of its process tree and the
median C-STORE round trip (storescu's log timestamps, from sending the request to receiving the
response), medians of ``runs`` runs taken in turn across the servers (so that drift of the
machine falls on all alike). The servers: dicomvault serve under each ``[storage] sync`` mode
(always: every instance durable before its success; batch: fsync every sync_interval_ms;
never), DCMTK's storescp writing files (--fork, so it too serves associations in parallel; it
never fsyncs), Orthanc with its default SQLite index (when installed), pynetdicom's storescp
app, and optionally another git ref of dicomvault built for the comparison (``bench/baseline``).
Each run starts with nothing dirty in the page cache (``sync``), so that no run pays for the
writeback of another. Measured in the same run: the disk's durable bandwidth (a stream, and
0.5 MB writes each fdatasynced), one fdatasync's latency, a loopback socket transfer.
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dicomvault.bench import limits
from dicomvault.bench.corpus import ct_corpus, multiframe_instance, small_corpus
from dicomvault.bench.peers import (
    DCMTK,
    PEER_ENV,
    DcmtkStorescp,
    Dicomvault,
    Orthanc,
    Peer,
    PynetdicomStorescp,
)

SYNC_MODES = ("always", "batch", "never")
SERVERS = ("storescp", "orthanc", "pynetdicom", "dicomvault")
CT = "CT 0.5 MB"
SMALL = "small 10 KB"

# storescu's log with a timestamp in microseconds (%Q: milliseconds with three decimals) on
# every message, on stderr (its progress dots go to stdout).
TIMING_LOG = """\
log4cplus.rootLogger = INFO, console
log4cplus.appender.console = log4cplus::ConsoleAppender
log4cplus.appender.console.logToStdErr = true
log4cplus.appender.console.ImmediateFlush = false
log4cplus.appender.console.layout = log4cplus::PatternLayout
log4cplus.appender.console.layout.ConversionPattern = %D{%s.%Q} %m%n
"""
_TIMED = re.compile(
    r"^(\d+)\.(\d+\.\d+) (Sending Store Request|Received Store Response)", re.MULTILINE
)


@dataclass
class Measurement:
    seconds: float
    cpu: float
    rss_mb: float
    round_trip: float


@dataclass
class Row:
    server: str
    corpus: str
    associations: int
    instances: int
    megabytes: float
    runs: list[Measurement] = field(default_factory=list)

    def median(self, attribute: str) -> float:
        return statistics.median(getattr(m, attribute) for m in self.runs)

    @property
    def per_second(self) -> float:
        return self.instances / self.median("seconds")

    @property
    def mb_per_second(self) -> float:
        return self.megabytes / self.median("seconds")

    @property
    def cpu_ms_per_instance(self) -> float:
        return self.median("cpu") * 1e3 / self.instances


@dataclass
class Sent:
    seconds: float
    exchanges: list[tuple[float, float]]

    @property
    def round_trips(self) -> list[float]:
        return [received - sent for sent, received in self.exchanges]

    @property
    def exchange_seconds(self) -> float:
        """From the first request sent to the last response received (storescu's reading of
        its files before it associates left out)."""
        return max(r for _, r in self.exchanges) - min(s for s, _ in self.exchanges)


def exchanges(log: str) -> list[tuple[float, float]]:
    """(request sent, response received) of each C-STORE in one storescu's timing log."""
    sent: float | None = None
    found = []
    for seconds, milliseconds, event in _TIMED.findall(log):
        at = int(seconds) + float(milliseconds) / 1e3
        if event.startswith("Sending"):
            sent = at
        elif sent is not None:
            found.append((sent, at))
            sent = None
    return found


def send(
    peer: Peer,
    files: list[Path],
    associations: int,
    port: int = 0,
    options: tuple[str, ...] = (),
) -> Sent:
    """Sends ``files`` over ``associations`` concurrent storescu runs (to ``port``, else the
    peer's, with storescu's ``options``): wall seconds and every C-STORE's times. ``files``
    may be directories (with option ``+sd``: the files in each)."""
    groups = [files[i::associations] for i in range(associations)]
    errors: list[str] = []
    timed: list[tuple[float, float]] = []
    with tempfile.NamedTemporaryFile("w", suffix=".cfg") as log_config:
        log_config.write(TIMING_LOG)
        log_config.flush()

        def run(group: list[Path]) -> None:
            argv = [
                str(DCMTK / "storescu"),
                "-lc",
                log_config.name,
                "-aet",
                "BENCH",
                "-aec",
                peer.aet,
                *options,
                "127.0.0.1",
                str(port or peer.port),
                *map(str, group),
            ]
            result = subprocess.run(argv, env=PEER_ENV, capture_output=True, text=True)
            answered = exchanges(result.stderr)
            files_sent = sum(len(list(p.iterdir())) if p.is_dir() else 1 for p in group)
            if result.returncode != 0 or len(answered) != files_sent:
                errors.append(result.stderr[-2000:])
            timed.extend(answered)

        threads = [threading.Thread(target=run, args=(g,)) for g in groups if g]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"storescu to {peer.name} failed or went unanswered:\n{errors[0]}")
    return Sent(elapsed, timed)


def store(
    peer: Peer,
    files: list[Path],
    associations: int,
    port: int = 0,
    options: tuple[str, ...] = (),
) -> float:
    """``send``'s wall seconds."""
    return send(peer, files, associations, port, options).seconds


def generated(cache: Path, name: str, count: int) -> list[Path]:
    """The files of corpus ``name`` (``CT`` or ``SMALL``) of ``count`` instances, generated
    once into ``cache``."""
    folder = cache / f"{name.split()[0].lower()}-{count}"
    marker = folder / ".complete"
    if not marker.exists():
        shutil.rmtree(folder, ignore_errors=True)
        generate = ct_corpus if name == CT else small_corpus
        generate(folder, count)
        marker.touch()
    return sorted(folder.rglob("*.dcm"))


def corpora(cache: Path, quick: bool) -> dict[str, list[Path]]:
    """The benchmark corpora, generated once into ``cache``."""
    sizes = {CT: 40 if quick else 1000, SMALL: 200 if quick else 5000}
    made = {name: generated(cache, name, count) for name, count in sizes.items()}
    size_mb = 20 if quick else 500
    large = cache / f"multiframe-{size_mb}mb.dcm"
    if not large.exists():
        multiframe_instance(cache, size_mb=size_mb)
    made[f"multi-frame {size_mb} MB"] = [large]
    return made


def servers(
    wanted: list[str] | None,
    sync_modes: list[str],
    config: Path | None,
    baseline: tuple[str, Path] | None,
    report: Callable[[str], None],
) -> tuple[list[Peer], dict[str, str]]:
    """The peers in the order they are measured and shown (those compared with first), and
    {dicomvault row: the baseline's row of the same sync mode}."""
    wanted = wanted or list(SERVERS)
    peers: list[Peer] = []
    if "storescp" in wanted:
        peers.append(DcmtkStorescp())
    if "orthanc" in wanted:
        if shutil.which("Orthanc"):
            peers.append(Orthanc())
        else:
            report("Orthanc is not installed (Debian package orthanc): no orthanc rows")
    if "pynetdicom" in wanted:
        peers.append(PynetdicomStorescp())
    pairs: dict[str, str] = {}
    if "dicomvault" in wanted:
        for mode in sync_modes:
            ours = Dicomvault(config=config, sync=mode)
            if baseline:
                ref, build = baseline
                old = Dicomvault(config=config, sync=mode, build=build, label=f"@{ref}")
                peers.append(old)
                pairs[ours.name] = old.name
            peers.append(ours)
    return peers, pairs


def measure(peer: Peer, files: list[Path], associations: int, work: Path) -> Measurement:
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        # What the previous run left dirty in the page cache (storescp and Orthanc do not
        # fsync) is written back now, not during this run.
        os.sync()
        peer.start(Path(tmp))
        try:
            sent = send(peer, files, associations)
        finally:
            cpu, rss = peer.stop()
    return Measurement(sent.seconds, cpu, rss, statistics.median(sent.round_trips))


def run(
    cache: Path,
    work: Path,
    runs: int = 3,
    quick: bool = False,
    wanted: list[str] | None = None,
    sync_modes: list[str] | None = None,
    config: Path | None = None,
    baseline: tuple[str, Path] | None = None,
    report: Callable[[str], None] = print,
) -> list[Row]:
    """Measures and prints the table (``baseline``: (ref, its build) for a new/old column),
    then the figures compared with the disk's limits."""
    peers, pairs = servers(wanted, sync_modes or list(SYNC_MODES), config, baseline, report)
    disk = limits.disk(work, quick)
    loopback = limits.loopback_mb_per_second(512 if quick else 2048)
    report(
        f"{runs} run(s) per row, taken in turn across the servers; medians. /storescp, "
        "/orthanc, new/old: ratios of instances/s; cpu: the server's (children included) from "
        "listening to stopped; rss: its peak; rtt: C-STORE round trip, request sent to "
        "response received (storescu's log)"
    )
    report(HEADER)
    rows: list[Row] = []
    for corpus_name, files in corpora(cache, quick).items():
        megabytes = sum(f.stat().st_size for f in files) / 1e6
        for associations in (1, 4):
            if len(files) < associations:
                continue
            group = [Row(p.name, corpus_name, associations, len(files), megabytes) for p in peers]
            for _ in range(runs):
                for peer, row in zip(peers, group, strict=True):
                    row.runs.append(measure(peer, files, associations, work))
            rows += group
            for row in group:
                report(format_row(row, rows, pairs))
    for line in against_limits(rows, disk, loopback):
        report(line)
    return rows


HEADER = (
    f"{'corpus':<20} {'assoc':>5}  {'server':<22} {'inst/s':>8} {'MB/s':>8} {'/storescp':>9} "
    f"{'/orthanc':>8} {'cpu ms/inst':>11} {'rss MB':>7} {'rtt ms':>7} {'new/old':>7}"
)


def find(rows: list[Row], server: str, corpus: str, associations: int) -> Row | None:
    return next(
        (
            r
            for r in rows
            if r.server == server and r.corpus == corpus and r.associations == associations
        ),
        None,
    )


def format_row(row: Row, rows: list[Row], pairs: dict[str, str]) -> str:
    """One line of the table: the ratios are of instances/s to the other rows of the same
    corpus and concurrency."""

    def ratio(server: str | None) -> str:
        other = find(rows, server, row.corpus, row.associations) if server else None
        if other is None or other is row:
            return "-"
        return f"{row.per_second / other.per_second:.2f}x"

    rate = f"{row.per_second:8.1f}" if row.per_second < 100 else f"{row.per_second:8.0f}"
    return (
        f"{row.corpus:<20} {row.associations:>5}  {row.server:<22} {rate} "
        f"{row.mb_per_second:8.1f} {ratio('storescp'):>9} {ratio('orthanc'):>8} "
        f"{row.cpu_ms_per_instance:11.3f} {row.median('rss_mb'):7.0f} "
        f"{row.median('round_trip') * 1e3:7.2f} {ratio(pairs.get(row.server)):>7}"
    )


def against_limits(rows: list[Row], disk: limits.Disk, loopback: float) -> list[str]:
    """The machine's limits, and the archive's figures set against them: ``sync = always``
    at 4 associations of CT as a share of the durable bandwidth, and what the round trip at
    1 association spends beyond storescp's (which never fsyncs) next to one fdatasync."""
    chunk_mb = disk.chunk_bytes / (1 << 20)
    lines = [
        f"disk: stream (dd conv=fdatasync) {disk.stream_mb_per_second:.0f} MB/s; "
        f"{chunk_mb:g} MiB writes each fdatasynced {disk.chunks_mb_per_second:.0f} MB/s; "
        f"one fdatasync after a {chunk_mb:g} MiB write {disk.fdatasync_seconds * 1e3:.2f} ms; "
        f"loopback TCP {loopback:.0f} MB/s"
    ]
    always = find(rows, "dicomvault always", CT, 4)
    if always:
        lines.append(
            f"sync = always, {CT} at 4 associations: {always.mb_per_second:.0f} MB/s = "
            f"{always.mb_per_second / disk.chunks_mb_per_second:.0%} of the durable "
            f"{chunk_mb:g} MiB-write bandwidth, "
            f"{always.mb_per_second / disk.stream_mb_per_second:.0%} of the stream's"
        )
    for corpus in (CT, SMALL):
        ours, theirs = (find(rows, s, corpus, 1) for s in ("dicomvault always", "storescp"))
        if ours and theirs:
            above = ours.median("round_trip") - theirs.median("round_trip")
            lines.append(
                f"sync = always, {corpus} at 1 association: C-STORE round trip "
                f"{ours.median('round_trip') * 1e3:.2f} ms, storescp's "
                f"{theirs.median('round_trip') * 1e3:.2f} ms: {above * 1e3:+.2f} ms, against "
                f"one fdatasync of {disk.fdatasync_seconds * 1e3:.2f} ms"
            )
    return lines
