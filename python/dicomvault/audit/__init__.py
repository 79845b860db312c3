"""The audit trail: who stored, queried, retrieved, read, exported, sent, deleted or migrated
which patient's data, and every login, as JSON lines (``trail``), optionally forwarded as
RFC 5424 syslog carrying DICOM Audit Messages (``syslog``)."""

from dicomvault.audit.trail import AuditTrail, Who, read_records

__all__ = ["AuditTrail", "Who", "read_records"]
