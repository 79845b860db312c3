"""The archive's upkeep of its log and index: replaying the log into the index (at open, and
to rebuild it: ``reindex``), and reclaiming space (``gc`` rewriting packs, ``collect`` on S3,
``repack``) — what rewrites what is stored rather than serving it. Functions of an open
``Archive``, whose methods of the same names call them."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypedDict

import msgpack

from dicomvault import _native
from dicomvault.index import InstanceEntry, Level

if TYPE_CHECKING:
    from dicomvault.store.archive import Archive

log = logging.getLogger("dicomvault.archive")


@dataclass(frozen=True, slots=True)
class PackRewritten:
    """A pack gc or repack replaced: its size, and what its records take now."""

    pack: int
    bytes_before: int
    bytes_after: int


class RewriteReport(TypedDict):
    """What gc or repack did, JSON-ready (a running server sends it to ``migrate repack``):
    the store's figures (``_native.GcReport``), each damaged record's message, and the bytes
    of all the packs before and after."""

    packs_rewritten: int
    packs_skipped: int
    bytes_before: int
    bytes_after: int
    blobs_kept: int
    records_dropped: int
    missing: list[str]
    damaged: list[str]
    pack_bytes_before: int
    pack_bytes_after: int


class RepackReport(RewriteReport):
    """A repack's report, and then what verify found: records re-hashed and each defect as
    [key, reason]."""

    verified: int
    defects: list[list[str]]


# The mark of a pack gc claimed: everything in it is a copy of a record already applied.
_WHOLE_PACK = 2**64 - 1


# The lock gc and reindex take (``Index.exclusive``): either would see the other's index half
# made, and take blobs for garbage.
MAINTENANCE = "maintenance"
# While a node serves, gc keeps what it trashed at least this long (seconds): the longest a
# C-STORE may take from putting a blob to committing its instance.
TRASH_KEPT_WHILE_SERVING = 600.0


def replay(
    archive: Archive,
    applied: dict[int, int],
    batch: int = 1000,
    *,
    audit: bool = True,
    every_node: bool = False,
    before: tuple[int, int] | None = None,
) -> int:
    """Applies the pack log's manifest and tombstone records beyond ``applied`` to the
    index, in the order they were written; returns how many records it went through. A
    damaged record is logged (what it recorded is lost to the index; ``verify`` lists
    it); an instance whose header cannot be read even from a damaged blob is remembered
    as unindexed (``verify`` lists it; storing it again repairs it); one indexed from a
    damaged header blob is logged (``verify`` names its damaged blob). ``audit``: the
    instances' store records are written (again: readers keep one per id).
    ``every_node``: on S3, every node's log rather than this node's (a reindex).
    ``before``: only the records before this log position."""
    events = archive.store.history(applied, every_node)
    if before is not None:
        events = [e for e in events if (e.pack, e.end) < before]
    entries: list[InstanceEntry] = []
    positions: list[tuple[int, int]] = []
    logged: list[tuple[int, int]] = []

    def flush() -> None:
        if entries:
            if audit:
                archive.audit.stored(entries, logged)
            archive.index.commit(entries)
        if positions:
            archive.index.mark_applied(positions)
        entries.clear()
        positions.clear()
        logged.clear()

    # An instance deleted later in this history is not indexed on the way: gc may have taken
    # its blobs since, and it would only be deleted again.
    cancelled = {e.target: i for i, e in enumerate(events) if e.kind == "tombstone"}
    for i, event in enumerate(events):
        pack, end, manifest = event.pack, event.end, event.manifest
        positions.append((pack, end))
        if event.kind == "manifest" and cancelled.get(event.target, -1) > i:
            continue
        if event.kind == "damaged":
            log.error(
                "log position (%d, %d): %s: what it recorded, if a manifest or a tombstone, "
                "cannot be replayed (run verify)",
                pack,
                end,
                event.why,
            )
            continue
        if event.kind == "tombstone":
            flush()
            archive.index.delete(Level.IMAGE, event.key)
            continue
        notes = msgpack.unpackb(event.annotations) if event.annotations else {}
        try:
            info = _native.manifest_info(manifest)
            scanned = archive.store.rescan(manifest)
        except (_native.ScanError, _native.ManifestError, OSError) as e:
            log.error("the instance recorded at log position (%d, %d): %s", pack, end, e)
            archive.index.record_unindexed(manifest, pack, end, str(e))
            continue
        entry = archive.entry(
            {
                **scanned,
                "manifest": manifest,
                "size": info.size,
                "transfer_syntax": info.transfer_syntax,
            },
            notes.get("source", "replay"),
            notes.get("received_at"),
            replace=bool(notes.get("replace")),
        )
        if scanned["salvaged"]:
            log.error(
                "instance %s indexed from a damaged header blob: its tags may be wrong; "
                "storing it again repairs it",
                entry.tags.get("SOPInstanceUID", "?"),
            )
        entries.append(entry)
        logged.append((pack, end))
        if len(entries) >= batch:
            flush()
    flush()
    return len(events)


def reindex(archive: Archive) -> tuple[int, list[_native.Damage]] | None:
    """Rebuilds the instance index from the log alone — the packs (and their blob index
    first), or every node's segments on S3: every intact record indexed, every damaged
    one returned (torn pack tails moved to quarantine/; a damaged segment is logged and
    listed by ``verify``). None when another maintenance job runs, on any node."""
    with archive.index.exclusive(MAINTENANCE) as mine:
        if not mine:
            return None
        serving = [n for n in archive.index.nodes() if n.serving]
        if serving:
            raise RuntimeError(
                "stop every node before a reindex: "
                + ", ".join(
                    f"node {n.node} at {n.address} beat {n.seen_ago:.0f} s ago" for n in serving
                )
            )
        damaged = [] if archive.store.on_objects else archive.store.rebuild_blob_index().damaged
        archive.index.clear()
        replay(archive, {}, audit=False, every_node=True)
        return archive.index.stats()["instances"], damaged


def settle_marks(archive: Archive) -> None:
    """Brings the index's marks that lie past their pack's end back to it: a pack gc
    claimed (see ``_rewrite``) counts as applied up to its end, and what is appended to it
    from now on is replayed after a crash like anything else."""
    lengths = archive.store.settled_pack_lengths()
    past = {
        pack: lengths[pack]
        for pack, end in archive.index.applied().items()
        if pack in lengths and end > lengths[pack]
    }
    if past:
        archive.index.set_applied(past)


def gc(archive: Archive, progress: Callable[[PackRewritten], None] | None = None) -> RewriteReport:
    """Rewrites the packs keeping only what indexed instances reference (the versions
    replaced instances kept go: their history is dropped). The archive must be open
    exclusively: an instance still arriving references blobs no indexed one does."""
    report = _rewrite(archive, _live_manifests(archive), None, 3, progress)
    archive.index.forget_history()
    return report


def collect(archive: Archive, grace: float) -> _native.Collected | None:
    """gc on S3, while every node goes on serving: the blob objects no indexed instance
    and no record of the log not yet indexed references, written more than ``grace``
    seconds before it began, go to the trash and are deleted from it ``grace`` seconds
    later — at least ``TRASH_KEPT_WHILE_SERVING`` while a node serves, a C-STORE in flight
    may have put blobs it has not committed yet (see ``_native.Store.collect``). One
    maintenance job at a time across the nodes: None when another runs."""
    with archive.index.exclusive(MAINTENANCE) as mine:
        if not mine:
            return None
        started = time.time()
        # The marks first: a record indexed after they are read is in the log past them.
        marks = archive.index.applied()
        live = _live_manifests(archive)
        serving = any(n.serving for n in archive.index.nodes())
        kept = max(grace, TRASH_KEPT_WHILE_SERVING) if serving else grace
        return archive.store.collect(live, marks, started - grace, started - kept)


def _live_manifests(archive: Archive) -> list[bytes]:
    """The manifests of the indexed instances, what gc keeps; refused (RuntimeError)
    when one cannot be decoded, whose blobs gc would take for garbage."""
    live = []
    for record in archive.index.iter_level(Level.IMAGE):
        try:
            _native.manifest_info(record.manifest or b"")
        except _native.ManifestError as e:
            raise RuntimeError(
                f"gc refused: instance {record.key}'s manifest cannot be decoded ({e})"
            ) from e
        live.append(record.manifest or b"")
    return live


def repack(
    archive: Archive,
    compression: str,
    level: int,
    progress: Callable[[PackRewritten], None] | None = None,
) -> RepackReport:
    """Rewrites every pack with every blob stored anew with ``compression`` ("none", or
    "zstd" at ``level``), keeping every record, while the archive goes on being read and
    written; then verifies every blob."""
    report = _rewrite(archive, None, compression, level, progress)
    checked, defects = archive.verify()
    return {
        **report,
        "verified": checked.records,
        "defects": [[d.key, d.reason] for d in defects],
    }


def _rewrite(
    archive: Archive,
    live: list[bytes] | None,
    compression: str | None,
    level: int,
    progress: Callable[[PackRewritten], None] | None,
) -> RewriteReport:
    if archive.index.marks_frozen:
        # A claimed pack counts as applied whole: copies of records the index lacks would
        # never be replayed.
        raise RuntimeError(
            "part of the pack log could not be indexed; restart to replay it before a gc"
        )

    def on_event(kind: str, pack: int, bytes_before: int, bytes_after: int) -> None:
        if kind == "claim":
            # Before gc writes into it: its records are copies the index already reflects
            # (once the applier has applied what the listener acknowledged).
            archive.store.log_barrier()
            archive.index.set_applied({pack: _WHOLE_PACK})
            return
        archive.index.set_applied({pack: None})
        if progress is not None:
            progress(PackRewritten(pack, bytes_before, bytes_after))

    before = archive.store.stats().pack_bytes
    report = archive.store.gc(live, compression, level, on_event=on_event)
    return {
        "packs_rewritten": report.packs_rewritten,
        "packs_skipped": report.packs_skipped,
        "bytes_before": report.bytes_before,
        "bytes_after": report.bytes_after,
        "blobs_kept": report.blobs_kept,
        "records_dropped": report.records_dropped,
        "missing": report.missing,
        "damaged": [d.message for d in report.damaged],
        "pack_bytes_before": before,
        "pack_bytes_after": archive.store.stats().pack_bytes,
    }
