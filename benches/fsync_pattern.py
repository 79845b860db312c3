"""What the fsync a C-STORE-RSP waits for costs on this disk, by how the instance was written.

    python benches/fsync_pattern.py [--dir .] [--instances 150]

Replays the write pattern of one association receiving 0.5 MB CT instances: some client time
(0.7 ms), then 4 x 128 KiB written at ~500 MB/s (the loopback transfer), then the commit's
fdatasync. For each way of preparing the data (nothing; sync_file_range per chunk; a
background fdatasync per chunk, as the store does) and each kind of file (appended, as packs
are; pre-written, so that no block allocation or size change needs a journal commit) it prints
the final fdatasync's median and the time per instance. storescp does no fsync at all, so the
gap between these figures and the pattern's bare time is what durability costs on the disk.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import queue
import statistics
import threading
import time
from pathlib import Path

CHUNK = 128 << 10
CHUNKS = 4
_libc = ctypes.CDLL("libc.so.6", use_errno=True)
_libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
SYNC_FILE_RANGE_WRITE = 2


def busy(seconds: float) -> None:
    # Not sleep: an idle vCPU wakes late for the I/O completion and skews the fsync's time.
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def replay(path: Path, instances: int, early: str, prewritten: bool) -> tuple[float, float]:
    """(median final fdatasync, seconds per instance)."""
    fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_TRUNC)
    if prewritten:
        os.pwrite(fd, bytes(instances * CHUNKS * CHUNK), 0)
    os.fsync(fd)
    requests: queue.Queue[bool] = queue.Queue()

    def early_sync() -> None:
        # Requests that queued up during a sync are served by one more, as the store does.
        while True:
            wanted = [requests.get()]
            while not requests.empty():
                wanted.append(requests.get())
            if not all(wanted):
                return
            os.fdatasync(fd)

    syncer = threading.Thread(target=early_sync)
    syncer.start()
    finals = []
    started = time.perf_counter()
    for i in range(instances):
        busy(0.0007)
        for j in range(CHUNKS):
            offset = (i * CHUNKS + j) * CHUNK
            os.pwrite(fd, b"z" * CHUNK, offset)
            if early == "sync_file_range":
                _libc.sync_file_range(fd, offset, CHUNK, SYNC_FILE_RANGE_WRITE)
            elif early == "background fdatasync":
                requests.put(True)
            busy(0.00025)
        before = time.perf_counter()
        os.fdatasync(fd)
        finals.append(time.perf_counter() - before)
    elapsed = time.perf_counter() - started
    requests.put(False)
    syncer.join()
    os.close(fd)
    path.unlink()
    return statistics.median(finals), elapsed / instances


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("."), help="on the archive's disk")
    parser.add_argument("--instances", type=int, default=150)
    args = parser.parse_args()
    target = args.dir / "fsync-pattern.bin"
    for prewritten in (False, True):
        for early in ("nothing", "sync_file_range", "background fdatasync"):
            final, per_instance = replay(target, args.instances, early, prewritten)
            kind = "pre-written" if prewritten else "appended"
            print(
                f"{kind:<12} {early:<21} final fdatasync {final * 1e3:5.2f} ms, "
                f"per instance {per_instance * 1e3:5.2f} ms"
            )


if __name__ == "__main__":
    main()
