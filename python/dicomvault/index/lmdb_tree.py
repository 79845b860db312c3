"""Tree upkeep: instances inserted into, replaced in and removed from the patient -> study ->
series -> instance tree within one write transaction, with their ancestors' counts, sizes,
ModalitiesInStudy and secondary index keys kept right, and the totals."""

from __future__ import annotations

import logging
from typing import Any

import lmdb

from dicomvault.index.levels import Level
from dicomvault.index.lmdb_layout import Layout, decode, encode
from dicomvault.index.records import InstanceEntry, Record, level_tags

log = logging.getLogger("dicomvault.index")

COUNT_NAMES = {
    Level.PATIENT: ("studies", "series", "instances"),
    Level.STUDY: ("series", "instances"),
    Level.SERIES: ("instances",),
    Level.IMAGE: (),
}
CHILD_COUNT = {Level.PATIENT: "studies", Level.STUDY: "series", Level.SERIES: "instances"}


def version(record: Record) -> dict[str, Any]:
    """An instance's stored version, as its history keeps it once replaced."""
    return {
        "manifest": record.instance_manifest(),
        "size": record.size,
        "received_at": record.received_at,
        "source": record.source,
    }


class Batch:
    """Records read and changed within one write transaction, written once at the end."""

    def __init__(self, layout: Layout, txn: lmdb.Transaction[bytes]) -> None:
        self.layout = layout
        self.txn = txn
        self.changed: dict[tuple[Level, str], Record | None] = {}

    def get(self, level: Level, key: str) -> Record | None:
        if (level, key) in self.changed:
            return self.changed[(level, key)]
        return self.layout.get(self.txn, level, key)

    def put(self, record: Record) -> None:
        self.changed[(record.level, record.key)] = record

    def drop(self, level: Level, key: str) -> None:
        self.changed[(level, key)] = None

    def flush(self) -> None:
        for (level, key), record in self.changed.items():
            db = self.layout.dbs[level]
            if record is None:
                self.txn.delete(key.encode("utf-8"), db=db)
            else:
                self.txn.put(key.encode("utf-8"), encode(record), db=db)


class Tree:
    """Changes to the tree of one index, made through a ``Batch``."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout

    def totals(self, txn: lmdb.Transaction[bytes]) -> dict[str, int]:
        return dict(
            self.layout.meta_get(
                txn, b"totals", {"instances": 0, "size": 0, "patient_conflicts": 0}
            )
        )

    def put_totals(self, txn: lmdb.Transaction[bytes], totals: dict[str, int]) -> None:
        self.layout.meta_put(txn, b"totals", totals)

    def insert(
        self,
        batch: Batch,
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
                dict.fromkeys(COUNT_NAMES[Level.PATIENT], 0),
            )
            created.append(patient)
        if study is None:
            study = Record(
                Level.STUDY,
                skey,
                pkey,
                level_tags(Level.STUDY, tags),
                dict.fromkeys(COUNT_NAMES[Level.STUDY], 0),
            )
            study.tags["ModalitiesInStudy"] = ""
            patient.counts["studies"] += 1
            created.append(study)
            txn.put(
                self.layout.child_prefix(Level.STUDY, pkey) + skey.encode("utf-8"),
                b"",
                db=self.layout.children,
            )
        if series is None:
            series = Record(
                Level.SERIES,
                ekey,
                skey,
                level_tags(Level.SERIES, tags),
                dict.fromkeys(COUNT_NAMES[Level.SERIES], 0),
            )
            study.counts["series"] += 1
            patient.counts["series"] += 1
            created.append(series)
            txn.put(
                self.layout.child_prefix(Level.SERIES, skey) + ekey.encode("utf-8"),
                b"",
                db=self.layout.children,
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
            self.layout.child_prefix(Level.IMAGE, ekey) + ikey.encode("utf-8"),
            b"",
            db=self.layout.children,
        )
        for record in (series, study, patient):
            record.counts["instances"] += 1
            record.size += entry.size
            record.received_at = max(record.received_at, entry.received_at)
        for record in created:
            self.layout.index_record(txn, record, add=True)
        for record in (patient, study, series, instance):
            batch.put(record)
        return conflict is not None

    def unlink(
        self,
        batch: Batch,
        top: Record,
        totals: dict[str, int],
        subtree: list[Record] | None = None,
    ) -> None:
        """Removes ``top`` and ``subtree`` (the records below it and itself; ``top`` alone for
        an instance) from the index and from its ancestors' counts and the totals."""
        subtree = subtree if subtree is not None else [top]
        instances = [r for r in subtree if r.level is Level.IMAGE]
        totals["instances"] -= len(instances)
        totals["size"] -= sum(r.size for r in instances)
        totals["patient_conflicts"] -= sum(r.patient_conflict is not None for r in instances)
        for record in subtree:
            self.remove(batch, record)
        self.detach(batch, top)

    def remove(self, batch: Batch, record: Record) -> None:
        """Takes one record out: its index keys, its link from its parent, itself."""
        self.layout.index_record(batch.txn, record, add=False)
        if record.parent is not None:
            link = self.layout.child_prefix(record.level, record.parent) + record.key.encode()
            batch.txn.delete(link, db=self.layout.children)
        batch.drop(record.level, record.key)

    def detach(self, batch: Batch, top: Record) -> None:
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
                self.drop_modality(batch, parent, child)
            if parent.counts[CHILD_COUNT[parent.level]] > 0:
                batch.put(parent)
            else:
                self.remove(batch, parent)
                if parent.level is Level.SERIES:
                    removed["series"] += 1
                elif parent.level is Level.STUDY:
                    removed["studies"] += 1
            child = parent

    def drop_modality(self, batch: Batch, study: Record, series: Record) -> None:
        modality = series.tags.get("Modality", "")
        if not modality:
            return
        siblings = [
            batch.get(Level.SERIES, k)
            for k in self.layout.child_keys(batch.txn, Level.SERIES, study.key)
        ]
        still = {
            s.tags.get("Modality", "") for s in siblings if s is not None and s.key != series.key
        }
        if modality not in still:
            self.layout.index_record(batch.txn, study, add=False)
            present = [
                m
                for m in study.tags.get("ModalitiesInStudy", "").split("\\")
                if m and m != modality
            ]
            study.tags["ModalitiesInStudy"] = "\\".join(present)
            self.layout.index_record(batch.txn, study, add=True)

    def reindex_studies(self, batch: Batch, studies: set[str]) -> None:
        """Flushes ``batch``; the studies whose ModalitiesInStudy changed get their index keys
        anew (the old ones read from before the batch)."""
        txn = batch.txn
        for study_key in studies:
            old = txn.get(study_key.encode("utf-8"), db=self.layout.dbs[Level.STUDY])
            if old is not None:
                self.layout.index_record(txn, decode(Level.STUDY, study_key, old), add=False)
        batch.flush()
        for study_key in studies:
            study = batch.get(Level.STUDY, study_key)
            if study is not None:
                self.layout.index_record(txn, study, add=True)
