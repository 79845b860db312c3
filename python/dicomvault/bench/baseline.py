"""Another git ref of this repository built for the benchmarks, so that a change is measured
against the code before it in the same run ("a refactor must not cost speed").

The ref's tree is exported with ``git archive`` (the repository's worktrees are left alone),
built into a wheel by maturin (release, ``CARGO_BUILD_JOBS`` jobs, a Cargo target directory
kept in the cache so that later refs rebuild only what changed) and unpacked into a
directory that goes first on the baseline server's PYTHONPATH. Builds are cached by commit.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import dicomvault


def repository() -> Path:
    """The git repository the running dicomvault was installed from (editable installs)."""
    package = Path(dicomvault.__file__).resolve().parent
    found = subprocess.run(
        ["git", "-C", str(package), "rev-parse", "--show-toplevel"],
        capture_output=True,
        text=True,
    )
    if found.returncode != 0:
        raise RuntimeError(f"dicomvault at {package} is not in a git repository: give --repo")
    return Path(found.stdout.strip())


def build(ref: str, cache: Path, jobs: int = 1, repo: Path | None = None) -> tuple[str, Path]:
    """(short commit, directory to put on PYTHONPATH) of ``ref`` built into ``cache``."""
    repo = repo or repository()
    commit = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "--verify", f"{ref}^{{commit}}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()[:12]
    installed = cache / f"baseline-{commit}"
    if (installed / ".complete").exists():
        return commit, installed
    shutil.rmtree(installed, ignore_errors=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        tree, wheels = Path(tmp) / "tree", Path(tmp) / "wheels"
        tree.mkdir()
        archive = subprocess.Popen(
            ["git", "-C", str(repo), "archive", commit], stdout=subprocess.PIPE
        )
        subprocess.run(["tar", "-x", "-C", str(tree)], stdin=archive.stdout, check=True)
        if archive.wait() != 0:
            raise RuntimeError(f"git archive {commit} failed")
        env = {
            **os.environ,
            "CARGO_BUILD_JOBS": str(jobs),
            "CARGO_TARGET_DIR": str(cache / "baseline-target"),
        }
        maturin = shutil.which("maturin")
        if maturin is None:
            raise RuntimeError("maturin is needed to build a baseline (pip install maturin)")
        subprocess.run(
            [maturin, "build", "--release", "--out", str(wheels), "--interpreter", sys.executable],
            cwd=tree,
            env=env,
            check=True,
        )
        (wheel,) = wheels.glob("*.whl")
        with zipfile.ZipFile(wheel) as unpacked:
            unpacked.extractall(installed)
    (installed / ".complete").touch()
    return commit, installed
