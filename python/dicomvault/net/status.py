"""DIMSE status codes the archive answers with, and their names for messages."""

from __future__ import annotations

from typing import Final

from dicomvault._native import STATUS

# The codes live in Rust (rust/src/status.rs, where each is documented with its section of
# the standard); these names are the Python side's view of the same table.
SUCCESS: Final[int] = STATUS["SUCCESS"]
PENDING: Final[int] = STATUS["PENDING"]
PENDING_WARNING: Final[int] = STATUS["PENDING_WARNING"]
CANCEL: Final[int] = STATUS["CANCEL"]
NOT_AUTHORIZED: Final[int] = STATUS["NOT_AUTHORIZED"]
OUT_OF_RESOURCES: Final[int] = STATUS["OUT_OF_RESOURCES"]
OUT_OF_RESOURCES_MATCHES: Final[int] = STATUS["OUT_OF_RESOURCES_MATCHES"]
SUB_OPERATIONS_FAILED: Final[int] = STATUS["SUB_OPERATIONS_FAILED"]
SUB_OPERATIONS_WARNING: Final[int] = STATUS["SUB_OPERATIONS_WARNING"]
CANNOT_UNDERSTAND: Final[int] = STATUS["CANNOT_UNDERSTAND"]
# A query or retrieve whose identifier cannot be read ("Unable to process": Cxxx, PS3.4 C.4).
UNABLE_TO_PROCESS: Final[int] = CANNOT_UNDERSTAND
DATA_SET_DOES_NOT_MATCH: Final[int] = STATUS["DATA_SET_DOES_NOT_MATCH"]
SOP_CLASS_NOT_SUPPORTED: Final[int] = STATUS["SOP_CLASS_NOT_SUPPORTED"]
PROCESSING_FAILURE: Final[int] = STATUS["PROCESSING_FAILURE"]
MISSING_ATTRIBUTE: Final[int] = STATUS["MISSING_ATTRIBUTE"]
NO_SUCH_OBJECT_INSTANCE: Final[int] = STATUS["NO_SUCH_OBJECT_INSTANCE"]
CLASS_INSTANCE_CONFLICT: Final[int] = STATUS["CLASS_INSTANCE_CONFLICT"]
MOVE_DESTINATION_UNKNOWN: Final[int] = STATUS["MOVE_DESTINATION_UNKNOWN"]
# What a C-MOVE sub-operation that could not be carried out counts as: a failure, whatever
# the cause (no association with the destination, nothing it accepts, damage here).
SUB_OPERATION_FAILED: Final[int] = OUT_OF_RESOURCES

# A STOW-RS Failure Reason (see rust/src/status.rs).
DUPLICATE_SOP_INSTANCE: Final[int] = STATUS["DUPLICATE_SOP_INSTANCE"]


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
    if status & 0xF000 == CANNOT_UNDERSTAND:
        return f"0x{status:04X} Unable To Process"
    return f"0x{status:04X}"
