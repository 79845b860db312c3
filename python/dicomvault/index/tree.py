"""Tree upkeep, the same for every backend: what a batch of instances does to the index (stored,
duplicate, kept or replaced), and instances inserted into, replaced in and removed from the
patient -> study -> series -> instance tree within one write transaction, with their ancestors'
counts, sizes, ModalitiesInStudy and secondary index entries kept right.

A backend provides the ``Batch``: how records are read, linked under their parents, indexed
and written within its transaction."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

from dicomvault import _native
from dicomvault.index.levels import Level
from dicomvault.index.records import (
    CommitOutcome,
    CommitStatus,
    InstanceEntry,
    Record,
    level_tags,
    record_keys,
)

log = logging.getLogger("dicomvault.index")

COUNT_NAMES = {
    Level.PATIENT: ("studies", "series", "instances"),
    Level.STUDY: ("series", "instances"),
    Level.SERIES: ("instances",),
    Level.IMAGE: (),
}
CHILD_COUNT = {Level.PATIENT: "studies", Level.STUDY: "series", Level.SERIES: "instances"}

# An instance a commit changes the index with: its entry, record keys and status.
Change = tuple[InstanceEntry, tuple[str, str, str, str], CommitStatus]


def _new_record(level: Level, key: str, parent: str | None, tags: dict[str, str]) -> Record:
    """A patient, study or series record made for its first instance: that instance's
    attributes of the level, no children counted yet."""
    return Record(level, key, parent, level_tags(level, tags), dict.fromkeys(COUNT_NAMES[level], 0))


def no_totals() -> dict[str, int]:
    """What a commit or delete changes the index's totals by (see ``apply``, ``unlink``)."""
    return {"instances": 0, "size": 0, "patient_conflicts": 0}


def version(record: Record) -> dict[str, Any]:
    """An instance's stored version, as its history keeps it once replaced."""
    return {
        "manifest": record.instance_manifest(),
        "size": record.size,
        "received_at": record.received_at,
        "source": record.source,
    }


class Batch(ABC):
    """Records read and changed within one write transaction of a backend, written once at the
    end (``flush``)."""

    def __init__(self) -> None:
        self.changed: dict[tuple[Level, str], Record | None] = {}

    def get(self, level: Level, key: str) -> Record | None:
        if (level, key) in self.changed:
            return self.changed[(level, key)]
        return self.load(level, key)

    def put(self, record: Record) -> None:
        self.changed[(record.level, record.key)] = record

    def drop(self, level: Level, key: str) -> None:
        self.changed[(level, key)] = None

    @abstractmethod
    def load(self, level: Level, key: str) -> Record | None:
        """The record as stored before this batch (a new object on every call)."""

    @abstractmethod
    def child_keys(self, level: Level, parent: str) -> list[str]:
        """The keys of ``parent``'s children at ``level``, links made in this batch included,
        in key order."""

    @abstractmethod
    def link(self, record: Record, add: bool) -> None:
        """Links a record under its parent (or unlinks it)."""

    @abstractmethod
    def index(self, record: Record, add: bool) -> None:
        """Adds (or removes) a record's secondary index entries (``secondary.entries``)."""

    @abstractmethod
    def flush(self) -> None:
        """Writes the changed records."""


def same_instance(
    same_data_set: Callable[[bytes, bytes], bool] | None, indexed: bytes, received: bytes
) -> bool:
    """Whether a received instance is the one indexed under its key, byte for byte in its data
    set (``same_data_set`` compares two manifests whatever their File Meta; without it, only
    equal manifests are the same); an indexed one that cannot be read counts as different."""
    if indexed == received or same_data_set is None:
        return indexed == received
    try:
        return same_data_set(indexed, received)
    except OSError as e:
        log.error("comparing two versions of an instance failed: %s", e)
        return False


def decide(
    batch: Batch,
    entries: Sequence[InstanceEntry],
    same_data_set: Callable[[bytes, bytes], bool] | None,
) -> tuple[list[CommitOutcome], list[Change]]:
    """What committing ``entries`` does: one outcome each, and the changes to make. An
    instance whose key is indexed already (or earlier in the batch) is a duplicate when it is
    the same; with other bytes it replaces the indexed one if its ``replace`` says so, else the
    first is kept; both are logged with the two manifests' hashes."""
    outcomes: list[CommitOutcome] = []
    changes: list[Change] = []
    ahead: dict[str, InstanceEntry] = {}  # this batch's changes, by instance key
    for entry in entries:
        keys = record_keys(entry)
        instance = keys[3]
        earlier = ahead.get(instance)
        indexed: bytes | None
        if earlier is not None:
            indexed = earlier.manifest
        else:
            record = batch.get(Level.IMAGE, instance)
            indexed = record.manifest if record is not None else None
        status: CommitStatus
        if indexed is None:
            status = "stored"
        elif same_instance(same_data_set, indexed, entry.manifest):
            status = "duplicate"
        else:
            status = "replaced" if entry.replace else "different"
            log.warning(
                "instance %s received again with other bytes (manifest %s; indexed %s): %s",
                instance,
                _native.manifest_hash(entry.manifest),
                _native.manifest_hash(indexed),
                "replaced, the earlier version kept for `show --history` until gc"
                if entry.replace
                else 'the first kept ([storage] on_duplicate = "keep")',
            )
        outcomes.append(CommitOutcome(status, instance))
        if status in ("stored", "replaced"):
            changes.append((entry, keys, status))
            ahead[instance] = entry
    return outcomes, changes


def apply(batch: Batch, changes: list[Change]) -> dict[str, int]:
    """Makes ``changes`` (from ``decide``) and flushes the batch; returns what the totals
    changed by."""
    totals = no_totals()
    modalities_changed: set[str] = set()
    for entry, keys, status in changes:
        history = None
        if status == "replaced":
            old = batch.get(Level.IMAGE, keys[3])
            if old is None:
                raise LookupError(f"instance {keys[3]}, to be replaced, is not indexed")
            history = [version(old), *(old.history or [])]
            unlink(batch, old, totals)
        conflict = insert(batch, entry, keys, modalities_changed, history)
        totals["instances"] += 1
        totals["size"] += entry.size
        totals["patient_conflicts"] += conflict
    reindex_studies(batch, modalities_changed)
    return totals


def subtree(batch: Batch, top: Record) -> list[Record]:
    """``top`` and every record below it."""
    found: list[Record] = []
    stack = [top]
    while stack:
        record = stack.pop()
        found.append(record)
        child_level = record.level.child
        if child_level is None:
            continue
        for child_key in batch.child_keys(child_level, record.key):
            child = batch.get(child_level, child_key)
            if child is not None:
                stack.append(child)
    return found


def insert(
    batch: Batch,
    entry: InstanceEntry,
    keys: tuple[str, str, str, str],
    modalities_changed: set[str],
    history: list[dict[str, Any]] | None = None,
) -> bool:
    """Inserts an instance, creating its ancestors; whether it names a patient (or study)
    other than the one its study (or series) is kept under (a patient conflict)."""
    pkey, skey, ekey, ikey = keys
    tags = entry.tags
    conflict = None
    series = batch.get(Level.SERIES, ekey)
    if series is not None and series.parent != skey:
        log.warning(
            "instance %s names study %s but its series %s belongs to study %s: kept there",
            ikey,
            skey,
            ekey,
            series.parent,
        )
        conflict = pkey
        skey = series.parent or skey
    study = batch.get(Level.STUDY, skey)
    if study is not None and study.parent != pkey:
        log.warning(
            "instance %s of study %s names patient %r but the study belongs to %r: "
            "kept under the existing patient, not merged",
            ikey,
            skey,
            pkey.replace("\x00", "/"),
            (study.parent or "").replace("\x00", "/"),
        )
        conflict = pkey
        pkey = study.parent or pkey
    patient = batch.get(Level.PATIENT, pkey)
    created: list[Record] = []
    if patient is None:
        patient = _new_record(Level.PATIENT, pkey, None, tags)
        created.append(patient)
    if study is None:
        study = _new_record(Level.STUDY, skey, pkey, tags)
        study.tags["ModalitiesInStudy"] = ""
        patient.counts["studies"] += 1
        created.append(study)
        batch.link(study, add=True)
    if series is None:
        series = _new_record(Level.SERIES, ekey, skey, tags)
        study.counts["series"] += 1
        patient.counts["series"] += 1
        created.append(series)
        batch.link(series, add=True)
        modality = series.tags.get("Modality", "")
        present = [m for m in study.tags.get("ModalitiesInStudy", "").split("\\") if m]
        if modality and modality not in present:
            study.tags["ModalitiesInStudy"] = "\\".join(sorted([*present, modality]))
            modalities_changed.add(skey)
    instance = Record(
        Level.IMAGE,
        ikey,
        ekey,
        level_tags(Level.IMAGE, tags),
        {},
        entry.size,
        entry.received_at,
        entry.source,
        entry.manifest,
        conflict,
        history,
    )
    batch.link(instance, add=True)
    for record in (series, study, patient):
        record.counts["instances"] += 1
        record.size += entry.size
        record.received_at = max(record.received_at, entry.received_at)
    for record in created:
        batch.index(record, add=True)
    for record in (patient, study, series, instance):
        batch.put(record)
    return conflict is not None


def unlink(
    batch: Batch,
    top: Record,
    totals: dict[str, int],
    records: list[Record] | None = None,
) -> None:
    """Removes ``top`` and ``records`` (the records below it and itself; ``top`` alone for an
    instance) from the index and from its ancestors' counts, and subtracts them from
    ``totals``."""
    records = records if records is not None else [top]
    instances = [r for r in records if r.level is Level.IMAGE]
    totals["instances"] -= len(instances)
    totals["size"] -= sum(r.size for r in instances)
    totals["patient_conflicts"] -= sum(r.patient_conflict is not None for r in instances)
    for record in records:
        remove(batch, record)
    detach(batch, top)


def remove(batch: Batch, record: Record) -> None:
    """Takes one record out: its index entries, its link from its parent, itself."""
    batch.index(record, add=False)
    if record.parent is not None:
        batch.link(record, add=False)
    batch.drop(record.level, record.key)


def detach(batch: Batch, top: Record) -> None:
    """Subtracts a removed subtree from its ancestors, removing those it empties."""
    removed = {
        "instances": top.counts.get("instances", 0) + (top.level is Level.IMAGE),
        "series": top.counts.get("series", 0) + (top.level is Level.SERIES),
        "studies": top.counts.get("studies", 0) + (top.level is Level.STUDY),
    }
    child = top
    while child.parent is not None and child.level.parent is not None:
        parent = batch.get(child.level.parent, child.parent)
        if parent is None:
            break
        for name in parent.counts:
            parent.counts[name] -= removed[name]
        parent.size -= top.size
        if parent.level is Level.STUDY and child.level is Level.SERIES:
            drop_modality(batch, parent, child)
        if parent.counts[CHILD_COUNT[parent.level]] > 0:
            batch.put(parent)
        else:
            remove(batch, parent)
            if parent.level is Level.SERIES:
                removed["series"] += 1
            elif parent.level is Level.STUDY:
                removed["studies"] += 1
        child = parent


def drop_modality(batch: Batch, study: Record, series: Record) -> None:
    modality = series.tags.get("Modality", "")
    if not modality:
        return
    siblings = [batch.get(Level.SERIES, k) for k in batch.child_keys(Level.SERIES, study.key)]
    still = {s.tags.get("Modality", "") for s in siblings if s is not None and s.key != series.key}
    if modality not in still:
        batch.index(study, add=False)
        present = [
            m for m in study.tags.get("ModalitiesInStudy", "").split("\\") if m and m != modality
        ]
        study.tags["ModalitiesInStudy"] = "\\".join(present)
        batch.index(study, add=True)


def reindex_studies(batch: Batch, studies: set[str]) -> None:
    """Flushes ``batch``; the studies whose ModalitiesInStudy changed get their index entries
    anew (the old ones read from before the batch)."""
    for study_key in studies:
        old = batch.load(Level.STUDY, study_key)
        if old is not None:
            batch.index(old, add=False)
    batch.flush()
    for study_key in studies:
        study = batch.get(Level.STUDY, study_key)
        if study is not None:
            batch.index(study, add=True)
