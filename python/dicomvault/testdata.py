"""pydicom's shipped test files, for tests of the import/export path."""

from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError


def pydicom_test_files() -> list[Path]:
    """Every file under pydicom's data/test_files and data/charset_files."""
    root = Path(pydicom.__file__).parent / "data"
    return sorted(
        p for d in ("test_files", "charset_files") for p in (root / d).rglob("*") if p.is_file()
    )


def readable_pydicom_test_files() -> list[Path]:
    """Those that pydicom.dcmread reads without ``force``."""
    readable = []
    for path in pydicom_test_files():
        try:
            pydicom.dcmread(path)
        except (InvalidDicomError, OSError, ValueError, EOFError):
            continue
        readable.append(path)
    return readable
