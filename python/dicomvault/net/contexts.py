"""The presentation contexts a C-MOVE proposes to its destination (what the listener accepts is
in ``net/vocabulary.py``)."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.presentation import PresentationContext, build_context

from dicomvault.net.outbound import StoredInstance

log = logging.getLogger("dicomvault.net")

# DICOM allows at most 128 presentation contexts in one association request.
MAX_PROPOSED = 128


def for_instances(instances: Iterable[StoredInstance]) -> list[PresentationContext]:
    """Contexts a C-STORE of these instances needs: each SOP class in each stored transfer
    syntax (so that they go byte for byte), then each SOP class in Explicit and in Implicit VR
    Little Endian, a context each, for a destination that takes none of the stored syntaxes
    (the transcoder makes any instance in them). Past the limit of 128, the fallbacks go
    first."""
    stored: dict[tuple[str, str], None] = {}
    for instance in instances:
        stored[(str(instance.SOPClassUID), str(instance.transfer_syntax))] = None
    classes = list(dict.fromkeys(sop for sop, _ in stored))
    wanted = list(stored)
    for fallback in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        wanted += [(sop, fallback) for sop in classes if (sop, fallback) not in stored]
    if len(wanted) > MAX_PROPOSED:
        log.warning(
            "%d presentation contexts needed, proposing the first %d: instances outside them fail",
            len(wanted),
            MAX_PROPOSED,
        )
    return [build_context(sop, [ts]) for sop, ts in wanted[:MAX_PROPOSED]]
