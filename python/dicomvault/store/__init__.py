"""The archive's storage side: the Archive that ties the content-addressed pack store (Rust,
with its one commit path) and the index together, the index's applier, import."""

from dicomvault.store.archive import Archive, IngestOutcome

__all__ = ["Archive", "IngestOutcome"]
