"""Importing trees of files: walk, ingest in parallel, commit in groups, report each file.

Workers stream files into the store (the Rust side releases the GIL for reading, scanning,
hashing and writing, so they run in parallel) and queue the instances for group commit without
waiting; a file is reported as stored only once its commit is durable.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from dicomvault.index import CommitOutcome
from dicomvault.store.applier import Pending
from dicomvault.store.archive import Archive, IngestOutcome, final

# Files in flight at least: two group commits' worth (the journal commits up to 256 records
# at a time), so that the workers go on scanning while one commit waits for its fsync.
IN_FLIGHT = 512


@dataclass
class ImportSummary:
    files: int = 0
    stored: int = 0
    # The same bytes were stored already.
    duplicate: int = 0
    # Other bytes were stored under its key: kept (on_duplicate = "keep"), or replaced.
    different: int = 0
    replaced: int = 0
    bytes: int = 0
    rejected: list[tuple[Path, str]] = field(default_factory=list)
    not_dicom: list[Path] = field(default_factory=list)
    # The archive could not store them (a full disk, an I/O error): import stops at the first.
    failed: list[tuple[Path, str]] = field(default_factory=list)
    # Files not tried because the archive could not store more.
    not_tried: int = 0
    seconds: float = 0.0

    def count(self, path: Path, outcome: IngestOutcome) -> None:
        self.files += 1
        self.bytes += outcome.size
        if outcome.status in ("stored", "duplicate", "different", "replaced"):
            setattr(self, outcome.status, getattr(self, outcome.status) + 1)
        elif outcome.status == "not-dicom":
            self.not_dicom.append(path)
        elif outcome.status == "failed":
            self.failed.append((path, outcome.reason or "failed"))
        else:
            self.rejected.append((path, outcome.reason or "rejected"))


def iter_files(paths: Iterable[Path]) -> Iterator[Path]:
    """Files under the given paths, recursively, in a stable order."""
    for path in paths:
        if path.is_dir():
            for directory, subdirs, names in os.walk(path):
                subdirs.sort()
                for name in sorted(names):
                    yield Path(directory, name)
        elif path.exists():
            yield path
        else:
            raise FileNotFoundError(f"{path} does not exist")


def import_paths(
    archive: Archive,
    paths: Iterable[Path],
    *,
    workers: int = 0,
    on_file: Callable[[Path, IngestOutcome], None] | None = None,
) -> ImportSummary:
    """Imports every file under ``paths``; ``on_file`` hears about each once it is final.
    Stops taking new files once one failed for want of storage (the files in flight are still
    reported); the rest are counted as not tried."""
    workers = workers or os.cpu_count() or 1
    summary = ImportSummary()
    started = time.perf_counter()
    # Enough files in flight to keep the workers busy while a group commit fsyncs, and bounded
    # so that a tree of millions of files never holds millions of futures.
    window = max(workers * 8, IN_FLIGHT)
    pending: deque[tuple[Path, Future[tuple[IngestOutcome, Pending[CommitOutcome] | None]]]] = (
        deque()
    )

    def ready(ingest: Future[tuple[IngestOutcome, Pending[CommitOutcome] | None]]) -> bool:
        if not ingest.done():
            return False
        commit = ingest.result()[1]
        return commit is None or commit.done()

    def settle(limit: int) -> None:
        """Reports finished files, in order, waiting while more than ``limit`` are pending."""
        while pending and (len(pending) > limit or ready(pending[0][1])):
            path, ingest = pending.popleft()
            outcome = final(*ingest.result())
            summary.count(path, outcome)
            if on_file is not None:
                on_file(path, outcome)

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="import") as pool:
        files = iter_files(paths)
        for path in files:
            if summary.failed:
                summary.not_tried = 1 + sum(1 for _ in files)
                break
            pending.append((path, pool.submit(archive.ingest_file, path)))
            settle(window)
        settle(0)
    summary.seconds = time.perf_counter() - started
    return summary
