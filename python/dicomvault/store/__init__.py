"""The archive's storage side: the content-addressed pack store (Rust), the group committer
that makes instances durable in batches, and the Archive that ties store and index together."""

from dicomvault.store.archive import Archive, IngestOutcome

__all__ = ["Archive", "IngestOutcome"]
