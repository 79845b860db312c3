"""The archive's index: patient -> study -> series -> instance on LMDB, with secondary
indexes and the C-FIND matching engine that C-FIND, QIDO-RS and ``ls`` sit on."""

from dicomvault.index.levels import Level
from dicomvault.index.lmdb_index import Index
from dicomvault.index.records import CommitOutcome, InstanceEntry, Record

__all__ = ["CommitOutcome", "Index", "InstanceEntry", "Level", "Record"]
