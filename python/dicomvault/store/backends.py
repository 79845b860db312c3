"""The one place the archive's storage is chosen and opened from ``[storage] backend``: packs
under the archive root, or an S3 bucket that every node of the archive shares; and the
storage's identity, which the index keeps its replay marks under."""

from __future__ import annotations

from dicomvault import _native
from dicomvault.config import Settings
from dicomvault.dicom.values import wanted
from dicomvault.index.backends import open_index, store_identity
from dicomvault.index.levels import INDEXED_KEYWORDS
from dicomvault.index.records import NodeSeen

BACKENDS = ("packs", "s3")


class StorageError(RuntimeError):
    """The configured storage cannot be used as configured."""


def _backend(settings: Settings) -> str:
    backend = str(settings["storage"]["backend"])
    if backend not in BACKENDS:
        raise StorageError(f"[storage] backend must be packs or s3, not {backend!r}")
    if backend == "s3":
        storage = settings["storage"]
        if not storage["bucket"]:
            raise StorageError('[storage] backend = "s3" needs [storage] bucket')
        if not 1 <= int(storage["node"]) < 1 << 32:
            raise StorageError(
                '[storage] backend = "s3" needs [storage] node: this node\'s number, 1 or more, '
                "different on every node writing to the bucket"
            )
    return backend


def on_object_storage(settings: Settings) -> bool:
    """Whether the archive's blobs are on S3 (StorageError when misconfigured)."""
    return _backend(settings) == "s3"


def require_packs(settings: Settings, what: str) -> None:
    """StorageError unless the archive is on packs: what ``what`` (gc, verify...) works on."""
    if on_object_storage(settings):
        raise StorageError(
            f"{what} works on packs only: it is not built for [storage] backend = "
            f'"{settings["storage"]["backend"]}" yet'
        )


def open_storage(settings: Settings, *, exclusive: bool = False) -> _native.Store:
    """The archive's store as ``settings`` configure it; ``exclusive`` for maintenance that
    rewrites packs (gc, reindex)."""
    storage = settings["storage"]
    if on_object_storage(settings):
        return _native.Store.on_s3(
            str(storage["bucket"]),
            node=int(storage["node"]),
            endpoint=str(storage["endpoint"]) or None,
            region=str(storage["region"]),
            access_key_id=str(storage["access_key_id"]) or None,
            secret_access_key=str(storage["secret_access_key"]) or None,
            prefix=str(storage["prefix"]),
            wanted=wanted(INDEXED_KEYWORDS),
        )
    return _native.Store(
        str(settings.root),
        pack_size=int(storage["pack_size"]),
        compression=storage["compression"],
        level=int(storage["compression_level"]),
        sync=storage["sync"],
        sync_interval_ms=int(storage["sync_interval_ms"]),
        wanted=wanted(INDEXED_KEYWORDS),
        exclusive=exclusive,
        min_free_space=int(storage["min_free_space_mb"]) << 20,
    )


def storage_identity(settings: Settings) -> str:
    """What the index keeps replay marks under: the pack store's own identity (made once under
    the root), or the bucket's location, the same on every node sharing it."""
    storage = settings["storage"]
    if on_object_storage(settings):
        endpoint = storage["endpoint"] or f"aws:{storage['region']}"
        return f"s3:{endpoint}/{storage['bucket']}/{storage['prefix']}"
    return store_identity(settings.root)


def serving_nodes(settings: Settings) -> list[NodeSeen]:
    """The nodes' heartbeats (none on packs), read from the index alone: an operator lists
    them while the bucket cannot be reached, which is when they are wanted."""
    if not on_object_storage(settings):
        return []
    index = open_index(settings, store=storage_identity(settings))
    try:
        return index.nodes()
    finally:
        index.close()
