"""Whether an instance handed to the archive by STOW-RS or import may be stored: the checks
C-STORE makes in the listener, on what the store's writer found. It must be complete (not cut
short), carry its SOP Class, SOP Instance, Study and Series Instance UIDs (PS3.4 C.2.2.1.1:
every entity has a non-empty unique key; the Rust identity check says which is missing) and
be of a storage SOP class the archive accepts. Its transfer syntax may be one the archive
cannot decode (a vendor's private one, an old archive's): it is kept as received, served as
received, and a retrieve that would need it decoded is refused (406, 415)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from dicomvault.net.status import (
    CANNOT_UNDERSTAND,
    DATA_SET_DOES_NOT_MATCH,
    SOP_CLASS_NOT_SUPPORTED,
)
from dicomvault.net.vocabulary import ALL_STORAGE_SOP_CLASSES

SOP_CLASS_UID = 0x00080016
SOP_INSTANCE_UID = 0x00080018
STUDY_INSTANCE_UID = 0x0020000D


class Refusal(NamedTuple):
    """Why an instance is not stored: the status (a C-STORE status, which is also STOW-RS's
    Failure Reason, PS3.18 Table I.2-2) and the reason in words."""

    status: int
    reason: str


_STORAGE_SOP_CLASSES = frozenset(ALL_STORAGE_SOP_CLASSES)


def storage_sop_classes() -> frozenset[str]:
    """Every storage SOP class the archive accepts (the listener negotiates the same)."""
    return _STORAGE_SOP_CLASSES


def uid_of(ingested: Mapping[str, Any], tag: int) -> str:
    """A UI value the writer collected (its padding removed), "" when absent."""
    found = ingested["elements"].get(tag)
    return found[1].decode("ascii", "replace").strip("\0 ") if found else ""


def refusal(ingested: Mapping[str, Any]) -> Refusal | None:
    """Why what the writer ingested cannot be stored, or None."""
    if ingested["truncated_at"] is not None:
        return Refusal(
            CANNOT_UNDERSTAND, f"the data set is cut short at byte {ingested['truncated_at']}"
        )
    if ingested["identity_error"]:
        return Refusal(DATA_SET_DOES_NOT_MATCH, ingested["identity_error"])
    sop_class = uid_of(ingested, SOP_CLASS_UID)
    if sop_class not in storage_sop_classes():
        return Refusal(
            SOP_CLASS_NOT_SUPPORTED, f"SOP class {sop_class} is not one the archive stores"
        )
    return None
