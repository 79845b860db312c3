"""I/O errors injected into a server process from outside it: ``eio.c`` built with the system's
C compiler and preloaded, failing the Nth fsync or write on a chosen file with EIO."""

from __future__ import annotations

import subprocess
from pathlib import Path

SOURCE = Path(__file__).with_name("eio.c")


def eio_environment(build_dir: Path, call: str, path: str, after: int, times: int = 1) -> dict:
    """Environment variables making a process fail call ``call`` ("fsync" or "write") number
    ``after`` (counting from 0) on files whose path contains ``path``, ``times`` times."""
    library = build_dir / "eio.so"
    if not library.exists():
        subprocess.run(
            ["gcc", "-shared", "-fPIC", "-O2", "-o", library, SOURCE, "-ldl"], check=True
        )
    return {
        "LD_PRELOAD": str(library),
        "DICOMVAULT_FAULT_CALL": call,
        "DICOMVAULT_FAULT_PATH": path,
        "DICOMVAULT_FAULT_AFTER": str(after),
        "DICOMVAULT_FAULT_TIMES": str(times),
    }
