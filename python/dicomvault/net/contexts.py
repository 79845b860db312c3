"""Presentation contexts: what the SCP accepts and what C-MOVE proposes to a destination."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from pydicom.uid import (
    AllTransferSyntaxes,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom.presentation import (
    AllStoragePresentationContexts,
    PresentationContext,
    build_context,
)

from dicomvault.net import vocabulary
from dicomvault.net.outbound import StoredInstance

log = logging.getLogger("dicomvault.net")

# DICOM allows at most 128 presentation contexts in one association request.
MAX_PROPOSED = 128

# Who we are on the network (re-exported: the listener and pynetdicom's AEs read them here).
IMPLEMENTATION_CLASS_UID = vocabulary.IMPLEMENTATION_CLASS_UID
IMPLEMENTATION_VERSION_NAME = vocabulary.IMPLEMENTATION_VERSION_NAME


def storage_sop_classes() -> list[str]:
    return [cx.abstract_syntax for cx in AllStoragePresentationContexts]


def accepted_syntaxes() -> list[str]:
    """Every transfer syntax, in the order the SCP takes them when one presentation context
    offers several (pynetdicom picks the first of ours that the peer proposed).

    Explicit VR Little Endian comes first because the archive can always produce it (it
    decompresses, it cannot compress): a C-GET context covers every instance of its SOP class,
    whatever syntax each is stored in. A peer that wants an instance as stored offers that
    syntax in a context of its own, as DCMTK's storescu does and dicomvault's C-MOVE does."""
    first, rest = (
        [ExplicitVRLittleEndian],
        [DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian],
    )
    encapsulated = [ts for ts in AllTransferSyntaxes if ts not in first + rest]
    return [str(ts) for ts in first + encapsulated + rest]


def for_instances(instances: Iterable[StoredInstance]) -> list[PresentationContext]:
    """Contexts a C-STORE of these instances needs: each SOP class in each stored transfer
    syntax (so that they go byte for byte), plus a native fallback per SOP class."""
    wanted: dict[tuple[str, str], None] = {}
    classes: dict[str, None] = {}
    for instance in instances:
        wanted[(str(instance.SOPClassUID), str(instance.transfer_syntax))] = None
        classes[str(instance.SOPClassUID)] = None
    proposed = [build_context(sop, [ts]) for sop, ts in wanted]
    proposed += [
        build_context(sop, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]) for sop in classes
    ]
    if len(proposed) > MAX_PROPOSED:
        log.warning(
            "%d presentation contexts needed, proposing the first %d: instances outside them fail",
            len(proposed),
            MAX_PROPOSED,
        )
    return proposed[:MAX_PROPOSED]
