"""The Rust extension's stub (python/dicomvault/_native.pyi) says what the built module has:
every class, attribute, method signature and constant, as mypy's stubtest finds them by
importing it."""

import subprocess
import sys
from pathlib import Path

ALLOWLIST = Path(__file__).with_name("native_stub_allowlist.txt")


def test_the_stub_matches_the_built_module(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "dicomvault._native", "--allowlist", ALLOWLIST],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
