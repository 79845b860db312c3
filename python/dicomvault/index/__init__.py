"""The archive's index: patient -> study -> series -> instance, with secondary indexes and the
C-FIND matching engine that C-FIND, QIDO-RS and ``ls`` sit on. ``Index`` is what a backend
implements (``protocol``); ``LmdbIndex`` is the one on LMDB."""

from dicomvault.index.levels import Level
from dicomvault.index.lmdb_index import LmdbIndex
from dicomvault.index.protocol import Index
from dicomvault.index.records import CommitOutcome, InstanceEntry, Positions, Record

__all__ = ["CommitOutcome", "Index", "InstanceEntry", "Level", "LmdbIndex", "Positions", "Record"]
