"""The machine's limits, measured in the same run as the figures compared with them: the disk's
durable write bandwidth (a large sequential stream, and instance-sized writes each made durable
as the archive makes them), one fdatasync's latency, and a loopback TCP transfer.
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

INSTANCE_CHUNK = 512 * 1024


@dataclass
class Disk:
    stream_mb_per_second: float
    chunks_mb_per_second: float
    fdatasync_seconds: float
    chunk_bytes: int


def stream_mb_per_second(directory: Path, megabytes: int = 1024) -> float:
    """dd of ``megabytes`` MiB with conv=fdatasync: the disk's durable sequential bandwidth."""
    target = directory / "dd.bin"
    started = time.perf_counter()
    subprocess.run(
        ["dd", "if=/dev/zero", f"of={target}", "bs=1M", f"count={megabytes}", "conv=fdatasync"],
        check=True,
        capture_output=True,
    )
    elapsed = time.perf_counter() - started
    target.unlink()
    return megabytes * 1.048576 / elapsed


def durable_chunks(
    directory: Path, chunk_bytes: int = INSTANCE_CHUNK, count: int = 400
) -> tuple[float, float]:
    """Appends ``count`` chunks to one file, each followed by its fdatasync, as a pack receives
    instances under ``sync = always`` with one writer: (MB/s, median fdatasync seconds)."""
    target = directory / "chunks.bin"
    chunk = os.urandom(chunk_bytes)
    fd = os.open(target, os.O_CREAT | os.O_WRONLY | os.O_TRUNC | os.O_APPEND)
    syncs = []
    try:
        started = time.perf_counter()
        for _ in range(count):
            os.write(fd, chunk)
            before = time.perf_counter()
            os.fdatasync(fd)
            syncs.append(time.perf_counter() - before)
        elapsed = time.perf_counter() - started
    finally:
        os.close(fd)
        target.unlink()
    return count * chunk_bytes / 1e6 / elapsed, statistics.median(syncs)


def disk(directory: Path, quick: bool = False) -> Disk:
    stream = stream_mb_per_second(directory, 256 if quick else 1024)
    chunks, fdatasync = durable_chunks(directory, count=100 if quick else 400)
    return Disk(stream, chunks, fdatasync, INSTANCE_CHUNK)


def loopback_mb_per_second(megabytes: int = 2048) -> float:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    chunk = b"\0" * (1 << 20)

    def sink() -> None:
        conn, _ = server.accept()
        with conn:
            while conn.recv_into(bytearray(1 << 20)):
                pass

    reader = threading.Thread(target=sink)
    reader.start()
    with socket.create_connection(("127.0.0.1", port)) as client:
        started = time.perf_counter()
        for _ in range(megabytes):
            client.sendall(chunk)
    reader.join()
    server.close()
    return megabytes * 1.048576 / (time.perf_counter() - started)
