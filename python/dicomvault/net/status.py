"""DIMSE status codes the archive answers with, and their names for messages."""

from __future__ import annotations

SUCCESS = 0x0000
PENDING = 0xFF00
CANCEL = 0xFE00
NOT_AUTHORIZED = 0x0124
OUT_OF_RESOURCES = 0xA700
# C-GET and C-MOVE refused before any sub-operation: "Out of resources: unable to calculate
# number of matches" (PS3.4 C.4.2.1.5, C.4.3.1.4).
OUT_OF_RESOURCES_MATCHES = 0xA701
CANNOT_UNDERSTAND = 0xC000
# C-STORE (PS3.4 B.2.3) and STOW-RS Failure Reasons (PS3.18 Table I.2-2): the data set is not
# the instance it says, or lacks its identifiers; a SOP class not stored here; a failure of
# the archive itself.
DATA_SET_DOES_NOT_MATCH = 0xA900
SOP_CLASS_NOT_SUPPORTED = 0x0122
PROCESSING_FAILURE = 0x0110
# DIMSE-N statuses (PS3.7 C) and Storage Commitment Failure Reasons (PS3.4 J.3.3.1.1).
MISSING_ATTRIBUTE = 0x0120
NO_SUCH_OBJECT_INSTANCE = 0x0112
CLASS_INSTANCE_CONFLICT = 0x0119
MOVE_DESTINATION_UNKNOWN = 0xA801
# What a C-MOVE sub-operation that could not be carried out counts as: a failure, whatever
# the cause (no association with the destination, nothing it accepts, damage here).
SUB_OPERATION_FAILED = OUT_OF_RESOURCES
# A query or retrieve whose identifier cannot be read ("Unable to process": Cxxx, PS3.4 C.4).
UNABLE_TO_PROCESS = 0xC000


def describe(status: int) -> str:
    """``0xA801 Move Destination Unknown``-style text for a status code."""
    if status == SUCCESS:
        return "0x0000 Success"
    # pynetdicom's tables, imported only for a message: a migration need not load it.
    from pynetdicom.status import (
        GENERAL_STATUS,
        QR_FIND_SERVICE_CLASS_STATUS,
        QR_GET_SERVICE_CLASS_STATUS,
        QR_MOVE_SERVICE_CLASS_STATUS,
        STORAGE_SERVICE_CLASS_STATUS,
    )

    tables = (
        QR_MOVE_SERVICE_CLASS_STATUS,
        QR_GET_SERVICE_CLASS_STATUS,
        QR_FIND_SERVICE_CLASS_STATUS,
        STORAGE_SERVICE_CLASS_STATUS,
        GENERAL_STATUS,
    )
    for table in tables:
        if status in table:
            return f"0x{status:04X} {table[status][1].title()}"
    if 0xC000 <= status <= 0xCFFF:
        return f"0x{status:04X} Unable To Process"
    return f"0x{status:04X}"
