"""Copying one archive into another (``dicomvault migrate to``): every instance byte for byte,
resumably, then verified on the destination.

Any archive into any other (packs + LMDB into S3 + PostgreSQL, the move the issue is about, or
back). The source's instances are taken in batches of record keys: one index read on the
destination tells which of a batch it holds already (by record key: the SOP Instance UID), and
only the others are copied, so that a run interrupted at any point (Ctrl-C, SIGKILL) and run
again copies only what is missing. Each instance streams from the source's blobs into the
destination's writer (nothing holds it whole) and goes through the destination's commit path
with the source's ``received_at`` and ``source``, its provenance; a batch's commits are waited
for together, so that they share group commits.

Verification, once everything is copied: every source instance is looked up on the
destination. When its manifest there is the source's (the same blobs by BLAKE3 hash and length,
in the same order, hence the same bytes), every blob is read back from the destination and
checked against its hash; otherwise both instances are streamed and their digests compared.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice

from dicomvault import _native
from dicomvault.index import CommitOutcome, Level, Record
from dicomvault.store.archive import Archive, IndexUnavailable, Pending

# Source instances looked up on the destination at once (one index read per batch).
BATCH = 200

# What the store raises for one instance it cannot give whole (a blob missing or failing its
# hash), as opposed to the store itself failing (any other OSError).
_LOST = (_native.DamagedError, FileNotFoundError)


class CopyError(RuntimeError):
    """The source or the destination failed (storage or index): the copy stopped, and what
    the destination had acknowledged stays copied."""


@dataclass
class CopyReport:
    """What a run found and did: the source's instances and their bytes, those this run
    copied, those the destination held already, those verified there, and each instance
    missing or different on the destination (record key -> why)."""

    instances: int = 0
    bytes: int = 0
    copied: int = 0
    present: int = 0
    verified: int = 0
    problems: dict[str, str] = field(default_factory=dict)


def batches(records: Iterable[Record], size: int) -> Iterator[list[Record]]:
    it = iter(records)
    while batch := list(islice(it, size)):
        yield batch


def _digest(chunks: Iterable[bytes]) -> bytes:
    """BLAKE2b of a stream (Python has no BLAKE3): the fallback comparison's."""
    h = hashlib.blake2b()
    for chunk in chunks:
        h.update(chunk)
    return h.digest()


class ArchiveCopy:
    """Copies ``source`` into ``destination``; ``parallel`` instances stream at once;
    ``report`` gets a line of progress after each batch."""

    def __init__(
        self,
        source: Archive,
        destination: Archive,
        *,
        parallel: int = 4,
        batch: int = BATCH,
        report: Callable[[str], None] | None = None,
    ) -> None:
        self.source = source
        self.destination = destination
        self.parallel = parallel
        self.batch = batch
        self.report = report or (lambda _line: None)

    def run(self) -> CopyReport:
        """Copies what the destination misses, then verifies every instance there. CopyError
        when either archive fails."""
        result = CopyReport()
        try:
            total = self.source.stats()["instances"]
            with ThreadPoolExecutor(self.parallel, thread_name_prefix="migrate-to") as pool:
                for batch in batches(self.source.instances(), self.batch):
                    self._copy_batch(batch, pool, result)
                    self.report(
                        f"{result.instances} of {total} instances: {result.copied} copied, "
                        f"{result.present} already there"
                    )
                for batch in batches(self.source.instances(), self.batch):
                    self._verify_batch(batch, pool, result)
        except (OSError, IndexUnavailable) as e:  # one the calls below do not attribute
            raise CopyError(str(e)) from e
        return result

    # Copying ------------------------------------------------------------------------------

    def _copy_batch(
        self, batch: list[Record], pool: ThreadPoolExecutor, result: CopyReport
    ) -> None:
        result.instances += len(batch)
        result.bytes += sum(r.size for r in batch)
        there = self._on_destination(batch)
        result.present += len(there)
        missing = [r for r in batch if r.key not in there]
        queued = list(zip(missing, pool.map(self._copy, missing), strict=True))
        for record, pending in queued:
            if isinstance(pending, str):
                result.problems[record.key] = pending
                continue
            try:
                status = pending.result().status
            except (OSError, IndexUnavailable) as e:
                raise CopyError(f"the destination failed: {e}") from e
            if status == "duplicate":  # another writer stored it meanwhile
                result.present += 1
            elif status in ("stored", "replaced"):
                result.copied += 1
            # "different": other bytes are kept under its key; verification says so.

    def _on_destination(self, batch: list[Record]) -> dict[str, Record]:
        try:
            return self.destination.records_by_key(Level.IMAGE, [r.key for r in batch])
        except IndexUnavailable as e:
            raise CopyError(f"the destination failed: {e}") from e

    def _copy(self, record: Record) -> Pending[CommitOutcome] | str:
        """Streams one instance into the destination and queues its commit; or why not, when
        the source cannot give it whole or the destination refuses it."""
        if record.manifest is None:
            return "no manifest on the source (run dicomvault verify there)"
        chunks = self.source.chunks(record.manifest)
        try:
            writer = self.destination.writer()
        except OSError as e:
            raise CopyError(f"the destination failed: {e}") from e
        try:
            while True:
                try:
                    chunk = next(chunks, None)
                except _LOST as e:
                    writer.abort()
                    return f"cannot be read whole on the source: {e}"
                except OSError as e:
                    raise CopyError(f"the source failed: {e}") from e
                if chunk is None:
                    break
                writer.write(chunk)
            ingested = writer.finish()
        except _native.ScanError as e:
            writer.abort()
            return f"the destination refuses it: {e}"
        except OSError as e:
            writer.abort()
            raise CopyError(f"the destination failed: {e}") from e
        except BaseException:
            writer.abort()
            raise
        # Not the blobs the source lists: one of them does not hold what its hash says, or
        # this destination cut the blobs otherwise. Only the latter is committed.
        if ingested["manifest"] != record.manifest and (
            why := _lost(self.source, record.manifest, "source")
        ):
            return why
        entry = self.destination.entry(
            ingested, record.source or "migrate", record.received_at or None
        )
        return self.destination.submit(entry)

    # Verifying ----------------------------------------------------------------------------

    def _verify_batch(
        self, batch: list[Record], pool: ThreadPoolExecutor, result: CopyReport
    ) -> None:
        there = self._on_destination(batch)
        pairs = [(r, there.get(r.key)) for r in batch]
        for record, why in zip(batch, pool.map(self._compare, pairs), strict=True):
            if why is None:
                result.verified += 1
            else:  # the copy's own reason, when it gave one, says more
                result.problems.setdefault(record.key, why)

    def _compare(self, pair: tuple[Record, Record | None]) -> str | None:
        """Why the destination's copy is not the source's instance, byte for byte, or None."""
        record, copy = pair
        if record.manifest is None:
            return "no manifest on the source (run dicomvault verify there)"
        if copy is None or copy.manifest is None:
            return "missing on the destination"
        if copy.manifest == record.manifest:
            return _lost(self.destination, copy.manifest, "destination")
        if why := _lost(self.source, record.manifest, "source"):
            return why
        # The source reads intact (every blob checked against its hash): the destination's
        # bytes must be those.
        try:
            same = _digest(self.source.chunks(record.manifest)) == _digest(
                self.destination.chunks(copy.manifest)
            )
        except _LOST as e:
            return f"damaged on the destination: {e}"
        return None if same else "different bytes on the destination"


def _lost(archive: Archive, manifest: bytes, side: str) -> str | None:
    """Why the instance cannot be read whole from ``archive`` (every blob is read and checked
    against its hash), or None; CopyError if the archive's storage fails."""
    try:
        archive.check_intact(manifest)
    except _LOST as e:
        return f"damaged on the {side}: {e}"
    except OSError as e:
        raise CopyError(f"the {side} failed: {e}") from e
    return None
