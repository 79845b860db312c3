"""The patient -> study -> series -> instance index on LMDB.

Sub-databases: one per level (record key -> msgpack record), ``children`` (parent/child key
pairs, so a level's children are a key range) and ``ix`` (secondary indexes: field, value and
record key in one key, so exact and prefix matches and date ranges are key ranges). A batch
of instances is committed in one write transaction, together with whatever the caller makes
durable in ``before_commit`` (the pack store's manifests), so the index never refers to
storage that is not there. The packs are the log: the index records how far into them it
is (``applied``), so that after a crash what it lost is replayed from them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import lmdb
import msgpack

from dicomvault import _native
from dicomvault.index.levels import COMPUTED, LEVEL_OF, TAGS, Level
from dicomvault.index.matching import Matcher, literal_prefix, matcher
from dicomvault.index.records import (
    CommitOutcome,
    CommitStatus,
    InstanceEntry,
    Record,
    level_tags,
    record_keys,
)

log = logging.getLogger("dicomvault.index")

_DB_NAMES = {
    Level.PATIENT: b"patients",
    Level.STUDY: b"studies",
    Level.SERIES: b"series",
    Level.IMAGE: b"instances",
}
_SEP = b"\x00"
# LMDB keys are at most 511 bytes: long values are cut in index keys and re-checked.
_MAX_VALUE = 160

# Secondary indexes: field code -> (level, keyword, case-folded).
_FIELDS: dict[bytes, tuple[Level, str, bool]] = {
    b"pid": (Level.PATIENT, "PatientID", False),
    b"pn": (Level.PATIENT, "PatientName", False),
    b"pnf": (Level.PATIENT, "PatientName", True),
    b"acc": (Level.STUDY, "AccessionNumber", False),
    b"sd": (Level.STUDY, "StudyDate", False),
    b"mod": (Level.SERIES, "Modality", False),
}
# Positions in the pack log: (pack id, offset just past a record).
Positions = Iterable[tuple[int, int]]

_COUNT_NAMES = {
    Level.PATIENT: ("studies", "series", "instances"),
    Level.STUDY: ("series", "instances"),
    Level.SERIES: ("instances",),
    Level.IMAGE: (),
}
_CHILD_COUNT = {Level.PATIENT: "studies", Level.STUDY: "series", Level.SERIES: "instances"}


manifest_hash = _native.manifest_hash


def _cut(value: str) -> bytes:
    raw = value.encode("utf-8")[:_MAX_VALUE]
    return raw.decode("utf-8", "ignore").encode("utf-8").replace(_SEP, b" ")


def _ix_values(code: bytes, level: Level, tags: Mapping[str, str]) -> list[str]:
    _, keyword, fold = _FIELDS[code]
    value = tags.get(keyword, "")
    if code == b"sd":
        value = value.replace(".", "")
    if keyword == "PatientName":
        # The whole name and each component group, since a query may match either.
        values = list(dict.fromkeys([value, *(g for g in value.split("=") if g)]))
    else:
        values = value.split("\\")
    return [v.casefold() if fold else v for v in values if v]


def _encode(record: Record) -> bytes:
    return msgpack.packb(
        {
            "p": record.parent,
            "t": record.tags,
            "c": record.counts,
            "s": record.size,
            "r": record.received_at,
            "src": record.source,
            "m": record.manifest,
            "pc": record.patient_conflict,
            "h": record.history,
        }
    )


def _decode(level: Level, key: str, raw: bytes) -> Record:
    d = msgpack.unpackb(raw)
    return Record(
        level,
        key,
        d["p"],
        d["t"],
        d["c"],
        d["s"],
        d["r"],
        d.get("src"),
        d.get("m"),
        d.get("pc"),
        d.get("h"),
    )


def _version(record: Record) -> dict[str, Any]:
    """An instance's stored version, as its history keeps it once replaced."""
    return {
        "manifest": record.manifest,
        "size": record.size,
        "received_at": record.received_at,
        "source": record.source,
    }


class _Batch:
    """Records read and changed within one write transaction, written once at the end."""

    def __init__(self, index: Index, txn: lmdb.Transaction) -> None:
        self.index = index
        self.txn = txn
        self.changed: dict[tuple[Level, str], Record | None] = {}

    def get(self, level: Level, key: str) -> Record | None:
        if (level, key) in self.changed:
            return self.changed[(level, key)]
        return self.index._get(self.txn, level, key)

    def put(self, record: Record) -> None:
        self.changed[(record.level, record.key)] = record

    def drop(self, level: Level, key: str) -> None:
        self.changed[(level, key)] = None

    def flush(self) -> None:
        for (level, key), record in self.changed.items():
            db = self.index._dbs[level]
            if record is None:
                self.txn.delete(key.encode("utf-8"), db=db)
            else:
                self.txn.put(key.encode("utf-8"), _encode(record), db=db)


class Index:
    """The archive's index. Thread-safe; several processes may share the directory."""

    def __init__(
        self,
        path: Path,
        *,
        map_size: int = 1 << 40,
        sync: bool = True,
        readonly: bool = False,
        barrier: Callable[[], None] | None = None,
        same_data_set: Callable[[bytes, bytes], bool] | None = None,
    ) -> None:
        """``barrier``, when given, is called before every read: it returns once what was
        acknowledged before it was called is in the index (see ``Archive``).
        ``same_data_set(a, b)`` says whether two manifests hold the same data set whatever
        their File Meta (the store reads them); without it, only equal manifests are."""
        path.mkdir(parents=True, exist_ok=True)
        self.env = lmdb.open(
            str(path),
            map_size=map_size,
            max_dbs=16,
            sync=sync,
            readonly=readonly,
            readahead=False,
            max_readers=1024,
        )
        self._dbs = {lvl: self.env.open_db(name) for lvl, name in _DB_NAMES.items()}
        self._children = self.env.open_db(b"children")
        self._ix = self.env.open_db(b"ix")
        self._meta = self.env.open_db(b"meta")
        self._barrier = barrier
        self._same_data_set = same_data_set
        self.marks_frozen = False
        # Counts records decoded: lets tests prove that indexed keys use key ranges.
        self.records_read = 0

    def barrier(self) -> None:
        """Returns once every instance acknowledged before the call is indexed (the barrier
        may raise instead: see ``Archive``)."""
        if self._barrier is not None:
            self._barrier()

    def _same(self, indexed: bytes, received: bytes) -> bool:
        """Whether a received instance is the one indexed under its key, byte for byte in
        its data set; an indexed one that cannot be read counts as different."""
        if indexed == received or self._same_data_set is None:
            return indexed == received
        try:
            return self._same_data_set(indexed, received)
        except OSError as e:
            log.error("comparing two versions of an instance failed: %s", e)
            return False

    def _snapshot(self) -> lmdb.Transaction:
        """A read transaction that sees every instance acknowledged before it began."""
        self.barrier()
        return self.env.begin()

    def close(self) -> None:
        self.env.close()

    def sync(self) -> None:
        self.env.sync(True)

    def headroom(self) -> int:
        """Bytes of the map beyond the highest page ever used: what the index can still grow
        by (pages freed inside it are reused first, so this is the least it has)."""
        info = self.env.info()
        return int(info["map_size"]) - (int(info["last_pgno"]) + 1) * int(self.env.stat()["psize"])

    def __enter__(self) -> Index:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # Low level ----------------------------------------------------------------------------

    def _get(self, txn: lmdb.Transaction, level: Level, key: str) -> Record | None:
        raw = txn.get(key.encode("utf-8"), db=self._dbs[level])
        if raw is None:
            return None
        self.records_read += 1
        return _decode(level, key, raw)

    def _child_prefix(self, level: Level, parent: str) -> bytes:
        return level.value[:2].encode() + _SEP + parent.encode("utf-8") + _SEP

    def _child_keys(self, txn: lmdb.Transaction, level: Level, parent: str) -> list[str]:
        prefix = self._child_prefix(level, parent)
        cursor = txn.cursor(db=self._children)
        keys = []
        if cursor.set_range(prefix):
            for k in cursor.iternext(values=False):
                if not k.startswith(prefix):
                    break
                keys.append(k[len(prefix) :].decode("utf-8"))
        return keys

    def _ix_key(self, code: bytes, value: str, key: str) -> bytes:
        return code + _SEP + _cut(value) + _SEP + key.encode("utf-8")

    def _index_record(self, txn: lmdb.Transaction, record: Record, add: bool) -> None:
        for code, (level, _, _) in _FIELDS.items():
            if level is not record.level:
                continue
            for value in _ix_values(code, level, record.tags):
                k = self._ix_key(code, value, record.key)
                if add:
                    txn.put(k, b"", db=self._ix)
                else:
                    txn.delete(k, db=self._ix)
        if record.level is Level.STUDY:
            for modality in record.tags.get("ModalitiesInStudy", "").split("\\"):
                if modality:
                    k = self._ix_key(b"mis", modality, record.key)
                    txn.put(k, b"", db=self._ix) if add else txn.delete(k, db=self._ix)

    def freeze_marks(self) -> None:
        """Stops advancing the marks of applied log positions, for this process's lifetime:
        part of the log could not be applied, and a mark that passed it would keep it from
        being replayed. What is applied from now on is replayed again at the next open
        (harmless: a duplicate keeps the first)."""
        self.marks_frozen = True

    def _advance(self, txn: lmdb.Transaction, positions: Positions | None) -> None:
        if not positions or self.marks_frozen:
            return
        applied = self._applied(txn)
        for pack, end in positions:
            applied[pack] = max(applied.get(pack, 0), end)
        txn.put(b"applied", msgpack.packb(applied), db=self._meta)

    def _applied(self, txn: lmdb.Transaction) -> dict[int, int]:
        raw = txn.get(b"applied", db=self._meta)
        return msgpack.unpackb(raw, strict_map_key=False) if raw else {}

    def mark_applied(self, positions: Positions) -> None:
        with self.env.begin(write=True) as txn:
            self._advance(txn, positions)

    def set_applied(self, marks: Mapping[int, int | None]) -> None:
        """Sets packs' marks outright (None forgets a pack), durably: for packs whose records
        gc moved, where the log did not simply advance (see ``mark_applied``)."""
        with self.env.begin(write=True) as txn:
            applied = self._applied(txn)
            for pack, end in marks.items():
                if end is None:
                    applied.pop(pack, None)
                else:
                    applied[pack] = end
            txn.put(b"applied", msgpack.packb(applied), db=self._meta)
        self.sync()

    def applied(self) -> dict[int, int]:
        """How far into each pack (pack id -> offset) the index reflects the log of manifest
        and tombstone records: what lies beyond is replayed when the archive opens."""
        with self.env.begin() as txn:
            return self._applied(txn)

    def record_unindexed(self, manifest: bytes, pack: int, end: int, why: str) -> None:
        """Remembers a manifest record of the log that could not be indexed (its instance's
        header cannot be read), until an instance with that manifest is committed."""
        with self.env.begin(write=True) as txn:
            unindexed = self._unindexed(txn)
            unindexed[manifest_hash(manifest)] = {"pack": pack, "end": end, "why": why}
            txn.put(b"unindexed", msgpack.packb(unindexed), db=self._meta)

    def unindexed(self) -> dict[str, dict[str, Any]]:
        """Manifest records that could not be indexed: manifest hash -> {pack, end, why}."""
        with self.env.begin() as txn:
            return self._unindexed(txn)

    def _unindexed(self, txn: lmdb.Transaction) -> dict[str, dict[str, Any]]:
        raw = txn.get(b"unindexed", db=self._meta)
        return msgpack.unpackb(raw) if raw else {}

    def _forget_unindexed(self, txn: lmdb.Transaction, manifests: Iterable[bytes]) -> None:
        unindexed = self._unindexed(txn)
        if not unindexed:
            return
        for manifest in manifests:
            unindexed.pop(manifest_hash(manifest), None)
        txn.put(b"unindexed", msgpack.packb(unindexed), db=self._meta)

    def forget_history(self) -> int:
        """Drops every instance's replaced versions (gc has reclaimed their blobs); returns
        how many instances had some."""
        with self.env.begin(write=True) as txn:
            changed = []
            for k, v in txn.cursor(db=self._dbs[Level.IMAGE]):
                record = _decode(Level.IMAGE, k.decode("utf-8"), v)
                if record.history:
                    record.history = None
                    changed.append((k, _encode(record)))
            for k, v in changed:
                txn.put(k, v, db=self._dbs[Level.IMAGE])
        return len(changed)

    def _totals(self, txn: lmdb.Transaction) -> dict[str, int]:
        raw = txn.get(b"totals", db=self._meta)
        return msgpack.unpackb(raw) if raw else {"instances": 0, "size": 0, "patient_conflicts": 0}

    # Writing ------------------------------------------------------------------------------

    def commit(
        self,
        entries: Sequence[InstanceEntry],
        before_commit: Callable[[list[InstanceEntry]], Positions | None] | None = None,
    ) -> list[CommitOutcome]:
        """Indexes a batch in one transaction. An instance whose key is indexed already is a
        duplicate when its manifest is the same; with other bytes it replaces the indexed one
        if its ``replace`` says so (the replaced version goes into its history), else the
        first is kept; both are logged with the two manifests' hashes. ``before_commit`` runs
        inside the transaction with the entries that change the index (none, when nothing
        does); the log positions it returns (pack, offset) are recorded as applied, in the
        same transaction."""
        with self.env.begin(write=True) as txn:
            batch = _Batch(self, txn)
            outcomes: list[CommitOutcome] = []
            new: list[tuple[InstanceEntry, tuple[str, str, str, str], CommitStatus]] = []
            ahead: dict[str, InstanceEntry] = {}  # this batch's changes, by instance key
            for entry in entries:
                keys = record_keys(entry)
                instance = keys[3]
                earlier = ahead.get(instance)
                record = batch.get(Level.IMAGE, instance) if earlier is None else None
                indexed = earlier.manifest if earlier is not None else record and record.manifest
                status: CommitStatus
                if indexed is None:
                    status = "stored"
                elif self._same(indexed, entry.manifest):
                    status = "duplicate"
                else:
                    status = "replaced" if entry.replace else "different"
                    log.warning(
                        "instance %s received again with other bytes (manifest %s; indexed %s): %s",
                        instance,
                        manifest_hash(entry.manifest),
                        manifest_hash(indexed),
                        "replaced, the earlier version kept for `show --history` until gc"
                        if entry.replace
                        else 'the first kept ([storage] on_duplicate = "keep")',
                    )
                outcomes.append(CommitOutcome(status, instance))
                if status in ("stored", "replaced"):
                    new.append((entry, keys, status))
                    ahead[instance] = entry
            if before_commit is not None:
                self._advance(txn, before_commit([e for e, _, _ in new]))
            if not new:
                return outcomes
            totals = self._totals(txn)
            modalities_changed: set[str] = set()
            for entry, keys, status in new:
                history = None
                if status == "replaced":
                    old = batch.get(Level.IMAGE, keys[3])
                    assert old is not None and old.manifest is not None
                    history = [_version(old), *(old.history or [])]
                    self._unlink(batch, old, totals)
                conflict = self._insert(batch, entry, keys, modalities_changed, history)
                totals["instances"] += 1
                totals["size"] += entry.size
                totals["patient_conflicts"] += conflict
            self._forget_unindexed(txn, [e.manifest for e, _, _ in new])
            for study_key in modalities_changed:
                old_study = txn.get(study_key.encode("utf-8"), db=self._dbs[Level.STUDY])
                if old_study is not None:
                    self._index_record(txn, _decode(Level.STUDY, study_key, old_study), add=False)
            batch.flush()
            for study_key in modalities_changed:
                study = batch.get(Level.STUDY, study_key)
                if study is not None:
                    self._index_record(txn, study, add=True)
            txn.put(b"totals", msgpack.packb(totals), db=self._meta)
        return outcomes

    def _insert(
        self,
        batch: _Batch,
        entry: InstanceEntry,
        keys: tuple[str, str, str, str],
        modalities_changed: set[str],
        history: list[dict[str, Any]] | None = None,
    ) -> bool:
        txn = batch.txn
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
            patient = Record(
                Level.PATIENT,
                pkey,
                None,
                level_tags(Level.PATIENT, tags),
                dict.fromkeys(_COUNT_NAMES[Level.PATIENT], 0),
            )
            created.append(patient)
        if study is None:
            study = Record(
                Level.STUDY,
                skey,
                pkey,
                level_tags(Level.STUDY, tags),
                dict.fromkeys(_COUNT_NAMES[Level.STUDY], 0),
            )
            study.tags["ModalitiesInStudy"] = ""
            patient.counts["studies"] += 1
            created.append(study)
            txn.put(
                self._child_prefix(Level.STUDY, pkey) + skey.encode("utf-8"), b"", db=self._children
            )
        if series is None:
            series = Record(
                Level.SERIES,
                ekey,
                skey,
                level_tags(Level.SERIES, tags),
                dict.fromkeys(_COUNT_NAMES[Level.SERIES], 0),
            )
            study.counts["series"] += 1
            patient.counts["series"] += 1
            created.append(series)
            txn.put(
                self._child_prefix(Level.SERIES, skey) + ekey.encode("utf-8"),
                b"",
                db=self._children,
            )
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
        txn.put(
            self._child_prefix(Level.IMAGE, ekey) + ikey.encode("utf-8"), b"", db=self._children
        )
        for record in (series, study, patient):
            record.counts["instances"] += 1
            record.size += entry.size
            record.received_at = max(record.received_at, entry.received_at)
        for record in created:
            self._index_record(txn, record, add=True)
        for record in (patient, study, series, instance):
            batch.put(record)
        return conflict is not None

    def delete(
        self,
        level: Level,
        key: str,
        before_commit: Callable[[list[Record]], Positions | None] | None = None,
    ) -> list[Record]:
        """Deletes a record and everything below it; emptied ancestors go too."""
        with self.env.begin(write=True) as txn:
            batch = _Batch(self, txn)
            top = batch.get(level, key)
            if top is None:
                return []
            subtree: list[Record] = []
            stack = [top]
            while stack:
                record = stack.pop()
                subtree.append(record)
                child_level = record.level.child
                if child_level is None:
                    continue
                for child_key in self._child_keys(txn, child_level, record.key):
                    child = batch.get(child_level, child_key)
                    if child is not None:
                        stack.append(child)
            removed = [r for r in subtree if r.level is Level.IMAGE]
            if before_commit is not None:
                self._advance(txn, before_commit(removed))
            totals = self._totals(txn)
            self._unlink(batch, top, totals, subtree)
            batch.flush()
            txn.put(b"totals", msgpack.packb(totals), db=self._meta)
            return removed

    def _unlink(
        self,
        batch: _Batch,
        top: Record,
        totals: dict[str, int],
        subtree: list[Record] | None = None,
    ) -> None:
        """Removes ``top`` and ``subtree`` (the records below it and itself; ``top`` alone for
        an instance) from the index and from its ancestors' counts and the totals."""
        txn = batch.txn
        subtree = subtree if subtree is not None else [top]
        instances = [r for r in subtree if r.level is Level.IMAGE]
        totals["instances"] -= len(instances)
        totals["size"] -= sum(r.size for r in instances)
        totals["patient_conflicts"] -= sum(r.patient_conflict is not None for r in instances)
        for record in subtree:
            self._index_record(txn, record, add=False)
            if record.parent is not None:
                txn.delete(
                    self._child_prefix(record.level, record.parent) + record.key.encode("utf-8"),
                    db=self._children,
                )
            batch.drop(record.level, record.key)
        self._detach(batch, top)

    def _detach(self, batch: _Batch, top: Record) -> None:
        """Subtracts a removed subtree from its ancestors, removing those it empties."""
        txn = batch.txn
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
                self._drop_modality(batch, parent, child)
            if parent.counts[_CHILD_COUNT[parent.level]] > 0:
                batch.put(parent)
            else:
                self._index_record(txn, parent, add=False)
                if parent.parent is not None:
                    txn.delete(
                        self._child_prefix(parent.level, parent.parent)
                        + parent.key.encode("utf-8"),
                        db=self._children,
                    )
                batch.drop(parent.level, parent.key)
                if parent.level is Level.SERIES:
                    removed["series"] += 1
                elif parent.level is Level.STUDY:
                    removed["studies"] += 1
            child = parent

    def _drop_modality(self, batch: _Batch, study: Record, series: Record) -> None:
        modality = series.tags.get("Modality", "")
        if not modality:
            return
        siblings = [
            batch.get(Level.SERIES, k) for k in self._child_keys(batch.txn, Level.SERIES, study.key)
        ]
        still = {
            s.tags.get("Modality", "") for s in siblings if s is not None and s.key != series.key
        }
        if modality not in still:
            self._index_record(batch.txn, study, add=False)
            present = [
                m
                for m in study.tags.get("ModalitiesInStudy", "").split("\\")
                if m and m != modality
            ]
            study.tags["ModalitiesInStudy"] = "\\".join(present)
            self._index_record(batch.txn, study, add=True)

    def clear(self) -> None:
        with self.env.begin(write=True) as txn:
            for db in (*self._dbs.values(), self._children, self._ix, self._meta):
                txn.drop(db, delete=False)

    # Reading ------------------------------------------------------------------------------

    def get(self, level: Level, key: str) -> Record | None:
        with self._snapshot() as txn:
            return self._get(txn, level, key)

    def children(self, level: Level, key: str) -> list[Record]:
        child_level = level.child
        if child_level is None:
            return []
        with self._snapshot() as txn:
            records = (
                self._get(txn, child_level, k) for k in self._child_keys(txn, child_level, key)
            )
            return [r for r in records if r is not None]

    def instances_under(self, level: Level, key: str) -> Iterator[Record]:
        with self._snapshot() as txn:
            record = self._get(txn, level, key)
            if record is None:
                return
            stack = [record]
            while stack:
                r = stack.pop()
                if r.level is Level.IMAGE:
                    yield r
                    continue
                child_level = r.level.child
                assert child_level is not None
                for k in reversed(self._child_keys(txn, child_level, r.key)):
                    child = self._get(txn, child_level, k)
                    if child is not None:
                        stack.append(child)

    def iter_level(self, level: Level) -> Iterator[Record]:
        with self._snapshot() as txn:
            for k, v in txn.cursor(db=self._dbs[level]):
                yield _decode(level, k.decode("utf-8"), v)

    def lookup(self, value: str) -> list[Record]:
        """Records named by ``value`` as a PatientID, AccessionNumber, UID or record key."""
        found: dict[tuple[Level, str], Record] = {}
        with self._snapshot() as txn:
            for level in Level:
                r = self._get(txn, level, value)
                if r is not None:
                    found[(level, r.key)] = r
            for code, level in ((b"pid", Level.PATIENT), (b"acc", Level.STUDY)):
                for key in self._ix_range(txn, code, value, exact=True):
                    r = self._get(txn, level, key)
                    if r is not None:
                        found[(level, key)] = r
        order = {lvl: i for i, lvl in enumerate(Level)}
        return sorted(found.values(), key=lambda r: (order[r.level], r.key))

    def stats(self) -> dict[str, int]:
        with self._snapshot() as txn:
            totals = self._totals(txn)
            counts = {
                name.decode(): txn.stat(db)["entries"]
                for name, db in ((_DB_NAMES[lvl], self._dbs[lvl]) for lvl in Level)
            }
        return {
            "patients": counts["patients"],
            "studies": counts["studies"],
            "series": counts["series"],
            "instances": counts["instances"],
            "size": totals["size"],
            "patient_conflicts": totals["patient_conflicts"],
        }

    # Querying -----------------------------------------------------------------------------

    def _ix_range(
        self,
        txn: lmdb.Transaction,
        code: bytes,
        value: str,
        *,
        exact: bool,
        upper: str | None = None,
    ) -> Iterator[str]:
        """Record keys whose indexed ``code`` value equals ``value`` (exact), starts with it,
        or (``upper`` given) lies in [value, upper]."""
        base = code + _SEP
        start = base + _cut(value) + (_SEP if exact else b"")
        cursor = txn.cursor(db=self._ix)
        if not cursor.set_range(start):
            return
        stop = base + _cut(upper) + b"\xff" if upper is not None else None
        for k in cursor.iternext(values=False):
            if stop is not None:
                if k > stop or not k.startswith(base):
                    return
            elif not k.startswith(start):
                return
            # Index values never hold the separator, record keys may (patient keys do).
            yield k[len(base) :].partition(_SEP)[2].decode("utf-8")

    def _candidates(
        self, txn: lmdb.Transaction, level: Level, matchers: list[Matcher]
    ) -> Iterable[str] | None:
        """Keys at ``level`` from the most selective indexed matcher, or None (scan)."""
        by_keyword = {m.keyword: m for m in matchers if not m.universal}

        def lift(source: Level, keys: Iterable[str]) -> set[str]:
            current = set(keys)
            lvl = source
            while lvl is not level:
                child = lvl.child
                assert child is not None
                current = {c for k in current for c in self._child_keys(txn, child, k)}
                lvl = child
            return current

        for lvl in reversed(list(Level)):
            unique = {
                Level.STUDY: "StudyInstanceUID",
                Level.SERIES: "SeriesInstanceUID",
                Level.IMAGE: "SOPInstanceUID",
            }.get(lvl)
            m = by_keyword.get(unique or "")
            if (
                m is not None
                and lvl.depth <= level.depth
                and "*" not in m.query
                and "?" not in m.query
            ):
                keys = [
                    k
                    for k in m.query.strip().split("\\")
                    if txn.get(k.encode("utf-8"), db=self._dbs[lvl])
                ]
                return sorted(lift(lvl, keys))
        plans: list[tuple[bytes, Matcher]] = []
        for code, (lvl, keyword, fold) in _FIELDS.items():
            m = by_keyword.get(keyword)
            if m is None or lvl.depth > level.depth:
                continue
            if keyword == "PatientName" and fold != m.case_insensitive:
                continue
            plans.append((code, m))
        if level.depth >= Level.STUDY.depth and "ModalitiesInStudy" in by_keyword:
            plans.append((b"mis", by_keyword["ModalitiesInStudy"]))
        for code, m in sorted(plans, key=lambda p: self._cost(p[1])):
            ranges = [self._value_range(txn, code, v) for v in m.query.strip().split("\\")]
            if any(r is None for r in ranges):
                continue  # a value with a leading wildcard: no key range
            source = _FIELDS[code][0] if code in _FIELDS else Level.STUDY
            return sorted(lift(source, (k for r in ranges if r is not None for k in r)))
        return None

    def _value_range(self, txn: lmdb.Transaction, code: bytes, value: str) -> Iterator[str] | None:
        """Record keys an index holds for one query value, or None when no range applies."""
        fold = code == b"pnf"
        if code == b"sd" and "-" in value:
            low, _, high = value.replace(".", "").partition("-")
            return self._ix_range(txn, code, low, exact=False, upper=high or "99999999")
        if "*" in value or "?" in value:
            prefix = literal_prefix(value)
            if not prefix:
                return None
            return self._ix_range(txn, code, prefix.casefold() if fold else prefix, exact=False)
        value = value.replace(".", "") if code == b"sd" else value
        return self._ix_range(txn, code, value.casefold() if fold else value, exact=True)

    @staticmethod
    def _cost(m: Matcher) -> int:
        query = m.query
        if "*" in query or "?" in query:
            return 2
        if m.keyword == "StudyDate":
            return 3 if "-" in query else 1
        if m.keyword in ("Modality", "ModalitiesInStudy"):
            return 4
        return 0

    def find(
        self,
        level: Level,
        filters: Mapping[str, str],
        return_keys: Iterable[str] = (),
        *,
        case_insensitive_pn: bool = True,
        limit: int | None = None,
        offset: int = 0,
    ) -> Iterator[dict[str, str]]:
        """C-FIND matching at ``level``: one dict per match with the filter and return keys
        (empty when not held), the unique keys of the level and above, and "_key"."""
        matchers = [
            matcher(k, v, case_insensitive_pn=case_insensitive_pn)
            for k, v in filters.items()
            if LEVEL_OF.get(k, level).depth <= level.depth
        ]
        wanted = list(dict.fromkeys([*filters, *return_keys]))
        with self._snapshot() as txn:
            candidates = self._candidates(txn, level, matchers)
            if candidates is None:
                candidates = (
                    k.decode("utf-8")
                    for k in txn.cursor(db=self._dbs[level]).iternext(values=False)
                )
            skipped = returned = 0
            for key in candidates:
                record = self._get(txn, level, key)
                if record is None:
                    continue
                chain = self._chain(txn, record)
                if not all(m.matches(self._value(chain, m.keyword)) for m in matchers):
                    continue
                if skipped < offset:
                    skipped += 1
                    continue
                if limit is not None and returned >= limit:
                    return
                returned += 1
                yield self._result(chain, level, wanted)

    def _chain(self, txn: lmdb.Transaction, record: Record) -> dict[Level, Record]:
        chain = {record.level: record}
        while record.parent is not None and record.level.parent is not None:
            parent = self._get(txn, record.level.parent, record.parent)
            if parent is None:
                break
            chain[parent.level] = parent
            record = parent
        return chain

    @staticmethod
    def _value(chain: dict[Level, Record], keyword: str) -> str | None:
        level = LEVEL_OF.get(keyword)
        if level is None or level not in chain:
            return None
        record = chain[level]
        if keyword in COMPUTED and keyword != "ModalitiesInStudy":
            name = keyword.removeprefix("Number").removeprefix("Of").split("Related")[1].lower()
            return str(record.counts.get(name, 0))
        if keyword in TAGS[level] or keyword == "ModalitiesInStudy":
            return record.tags.get(keyword)
        return None

    def _result(
        self, chain: dict[Level, Record], level: Level, wanted: list[str]
    ) -> dict[str, str]:
        out = {k: self._value(chain, k) or "" for k in wanted}
        for lvl, unique in (
            (Level.PATIENT, "PatientID"),
            (Level.STUDY, "StudyInstanceUID"),
            (Level.SERIES, "SeriesInstanceUID"),
            (Level.IMAGE, "SOPInstanceUID"),
        ):
            if lvl.depth <= level.depth and lvl in chain:
                out.setdefault(unique, chain[lvl].tags.get(unique, ""))
        out["_key"] = chain[level].key
        return out
