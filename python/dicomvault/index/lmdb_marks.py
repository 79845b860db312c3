"""Replay marks: how far into each pack of the log the index reflects its manifest and
tombstone records (what lies beyond is replayed when the archive opens), and the records it
could not index."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import lmdb

from dicomvault import _native
from dicomvault.index.lmdb_layout import Layout
from dicomvault.index.records import Positions


class Marks:
    """The marks of one index."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.frozen = False

    def freeze(self) -> None:
        """Stops advancing the marks for this process's lifetime: part of the log could not
        be applied, and a mark that passed it would keep it from being replayed. What is
        applied from now on is replayed again at the next open (harmless: a duplicate keeps
        the first)."""
        self.frozen = True

    def advance(self, txn: lmdb.Transaction[bytes], positions: Positions | None) -> None:
        """Moves the marks past ``positions`` (pack, end), in the transaction that applies
        them."""
        if not positions or self.frozen:
            return
        applied = self.read(txn)
        for pack, end in positions:
            applied[pack] = max(applied.get(pack, 0), end)
        self.layout.meta_put(txn, b"applied", applied)

    def read(self, txn: lmdb.Transaction[bytes]) -> dict[int, int]:
        return dict(self.layout.meta_get(txn, b"applied", {}))

    def set(self, marks: Mapping[int, int | None]) -> None:
        """Sets packs' marks outright (None forgets a pack), durably: for packs whose records
        gc moved, where the log did not simply advance."""
        with self.layout.env.begin(write=True) as txn:
            applied = self.read(txn)
            for pack, end in marks.items():
                if end is None:
                    applied.pop(pack, None)
                else:
                    applied[pack] = end
            self.layout.meta_put(txn, b"applied", applied)
        self.layout.env.sync(True)

    def record_unindexed(self, manifest: bytes, pack: int, end: int, why: str) -> None:
        """Remembers a manifest record of the log that could not be indexed (its instance's
        header cannot be read), until an instance with that manifest is committed."""
        with self.layout.env.begin(write=True) as txn:
            unindexed = self.unindexed(txn)
            unindexed[_native.manifest_hash(manifest)] = {"pack": pack, "end": end, "why": why}
            self.layout.meta_put(txn, b"unindexed", unindexed)

    def unindexed(self, txn: lmdb.Transaction[bytes]) -> dict[str, dict[str, Any]]:
        """Manifest records that could not be indexed: manifest hash -> {pack, end, why}."""
        return dict(self.layout.meta_get(txn, b"unindexed", {}))

    def forget_unindexed(self, txn: lmdb.Transaction[bytes], manifests: Iterable[bytes]) -> None:
        """Indexed after all (stored again): no longer unindexed."""
        unindexed = self.unindexed(txn)
        if not unindexed:
            return
        for manifest in manifests:
            unindexed.pop(_native.manifest_hash(manifest), None)
        self.layout.meta_put(txn, b"unindexed", unindexed)
