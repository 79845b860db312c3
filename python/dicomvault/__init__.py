"""dicomvault: a Rust-accelerated DICOM archive engine.

The package is organised by responsibility: ``store`` (content-addressed packs, via the Rust
extension), ``index`` (the LMDB patient/study/series/instance index and its query engine),
``dicom`` (DICOM value handling shared by both), ``net`` (DICOM network services), ``cli``
(the admin command line) and ``bench`` (corpora and measurements).
"""

__version__ = "0.1.0"
