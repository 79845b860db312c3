"""What goes into the index (``InstanceEntry``, with the pack log ``Positions`` it applies) and
what comes out (``Record``, and its stored form), and how record keys are made from an
entry's tags."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import msgpack

from dicomvault import _native
from dicomvault.index.levels import TAGS, Level


class NoManifest(_native.DamagedError):
    """A record asked for its instance's manifest holds none: an instance record that lost it
    (``verify`` reports it), or a patient, study or series."""


@dataclass(frozen=True, slots=True)
class InstanceEntry:
    """An instance handed to the index: its tags (keyword -> text, DICOM formatting kept,
    multiple values joined by '\\', absent tags absent), its storage manifest, size, receive
    time (ISO 8601 UTC) and source; ``replace``: whether it replaces an instance stored before
    under its key with other bytes (``[storage] on_duplicate``), else the first is kept."""

    tags: dict[str, str]
    manifest: bytes
    size: int
    received_at: str
    source: str
    replace: bool = False


@dataclass
class Record:
    """A patient, study, series or instance as the index holds it."""

    level: Level
    key: str
    parent: str | None
    tags: dict[str, str]
    counts: dict[str, int] = field(default_factory=dict)
    size: int = 0
    received_at: str = ""
    source: str | None = None
    manifest: bytes | None = None
    patient_conflict: str | None = None
    # Versions this instance replaced (``on_duplicate = "replace"``), newest first, each
    # {"manifest", "size", "received_at", "source"}: kept until gc reclaims their blobs.
    history: list[dict[str, Any]] | None = None

    def instance_manifest(self) -> bytes:
        """The manifest of the instance this record is; NoManifest if it has none."""
        if self.manifest is None:
            raise NoManifest(f"{self.level.value} record {self.key} has no manifest")
        return self.manifest

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "level": self.level.value,
            "key": self.key,
            "parent": self.parent,
            "tags": dict(sorted(self.tags.items())),
            "counts": dict(sorted(self.counts.items())),
            "size": self.size,
            "received_at": self.received_at,
        }
        if self.level is Level.IMAGE:
            out["source"] = self.source
            if self.patient_conflict is not None:
                out["patient_conflict"] = self.patient_conflict
        return out


def encode(record: Record) -> bytes:
    """A record's stored form (every backend stores records so: msgpack; its level and key
    are where it is stored)."""
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


def decode(level: Level, key: str, raw: bytes) -> Record:
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


# What committing an instance did: stored anew; "duplicate" (the same bytes were stored
# already); "different" (other bytes are stored under its key, and were kept); "replaced".
CommitStatus = Literal["stored", "duplicate", "different", "replaced"]


# A serving node beats this often (seconds); one silent for SILENT_AFTER is taken for stopped
# (killed, or cut off from the index).
BEAT_INTERVAL = 5.0
SILENT_AFTER = 3 * BEAT_INTERVAL


class NodeSeen(NamedTuple):
    """A node serving the archive, as its heartbeat left it: its number, the address it
    serves at, since when (a Unix time), and how many seconds ago it last beat."""

    node: int
    address: str
    started: float
    seen_ago: float

    @property
    def serving(self) -> bool:
        return self.seen_ago < SILENT_AFTER


class CommitOutcome(NamedTuple):
    status: CommitStatus
    key: str


# Positions in the pack log: (pack id, offset just past a record).
Positions = Iterable[tuple[int, int]]


def patient_key(tags: dict[str, str]) -> str:
    """PatientID + IssuerOfPatientID: two hospitals' "12345" are two patients."""
    return tags.get("PatientID", "") + "\x00" + tags.get("IssuerOfPatientID", "")


def instance_key(entry: InstanceEntry) -> str:
    tags = entry.tags
    return (
        tags.get("SOPInstanceUID")
        or tags.get("MediaStorageSOPInstanceUID")
        or "~" + hashlib.sha256(entry.manifest).hexdigest()[:32]
    )


def record_keys(entry: InstanceEntry) -> tuple[str, str, str, str]:
    """(patient, study, series, instance) keys. A missing Study or Series Instance UID gives
    the instance a study/series of its own rather than merging unrelated files."""
    instance = instance_key(entry)
    study = entry.tags.get("StudyInstanceUID") or "~" + instance
    series = entry.tags.get("SeriesInstanceUID") or "~" + instance
    return patient_key(entry.tags), study, series, instance


def level_tags(level: Level, tags: dict[str, str]) -> dict[str, str]:
    return {k: tags[k] for k in TAGS[level] if k in tags}
