"""Coverage-guided fuzzing of the Rust core, as one command: builds the cargo-fuzz targets
(rust/fuzz/) with the nightly toolchain, runs each for a number of executions or seconds on
its committed corpus and regression inputs, and prints per target the executions, the
coverage libFuzzer reports (`cov`: edges, `ft`: features), the corpus, the wall time and the
crashes found (kept in rust/fuzz/artifacts/<target>/).

    python benches/fuzz.py --target all --runs 10000000      # the full campaign
    python benches/fuzz.py --target scan,pdata --seconds 60 --merge

New inputs go to rust/fuzz/work/<target>/; after the run, `--merge` adds those that bring new
coverage to the committed corpus, and `--minimize` shrinks the committed corpus to the inputs
that reach all its edges. Needs `cargo install cargo-fuzz` and the nightly toolchain.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FUZZ = ROOT / "rust" / "fuzz"
# Slowest first, so that two workers finish together.
TARGETS = ("deflate", "scan", "associate", "pdata", "dimse", "manifest", "pack")
BINARIES = FUZZ / "target" / "x86_64-unknown-linux-gnu" / "release"
# Per input: a hang is an input that takes longer than this; memory beyond the limit is a bug.
OPTIONS = ["-timeout=10", "-rss_limit_mb=2048", "-print_final_stats=1", "-close_fd_mask=1"]
# An A-ASSOCIATE-RQ may be up to 256 KiB, and what its items overflow needs more than 64 KiB.
MAX_LEN = {"associate": 131072}


@dataclass
class Result:
    target: str
    executions: int = 0
    cov: int = 0
    ft: int = 0
    corpus: str = ""
    seconds: float = 0.0
    crashes: list[str] = field(default_factory=list)


def build() -> None:
    """Release build with debug assertions (integer overflow panics), without a sanitizer:
    the code under test is safe Rust, and the sanitizer halves the executions per second."""
    argv = ["cargo", "+nightly", "fuzz", "build", "--fuzz-dir", str(FUZZ), "-a", "-s", "none"]
    subprocess.run(["nice", "-n", "10", *argv], cwd=ROOT, check=True)


def parse(target: str, log: str, seconds: float) -> Result:
    result = Result(target, seconds=seconds)
    executed = re.search(r"stat::number_of_executed_units: (\d+)", log)
    result.executions = int(executed.group(1)) if executed else 0
    progress = re.findall(r"cov: (\d+) ft: (\d+) corp: (\S+)", log)
    if progress:
        cov, ft, corpus = progress[-1]
        result.cov, result.ft, result.corpus = int(cov), int(ft), corpus
    result.crashes = re.findall(r"Test unit written to (\S+)", log)
    return result


def run(target: str, runs: int | None, seconds: int | None) -> Result:
    work = FUZZ / "work" / target
    artifacts = FUZZ / "artifacts" / target
    work.mkdir(parents=True, exist_ok=True)
    artifacts.mkdir(parents=True, exist_ok=True)
    corpora = [work, FUZZ / "corpus" / target]
    corpora += [d for d in [FUZZ / "regressions" / target] if d.is_dir()]
    limit = [f"-runs={runs}"] if runs else [f"-max_total_time={seconds}"]
    argv = [str(BINARIES / target), *map(str, corpora), *OPTIONS, *limit]
    if target in MAX_LEN:
        argv.append(f"-max_len={MAX_LEN[target]}")
    argv.append(f"-artifact_prefix={artifacts}/")
    started = time.monotonic()
    proc = subprocess.run(["nice", "-n", "10", *argv], capture_output=True, text=True, check=False)
    log = proc.stderr
    (FUZZ / "work" / f"{target}.log").write_text(log)
    return parse(target, log, time.monotonic() - started)


def merge(target: str, into: Path, *sources: Path, edges_only: bool = False) -> None:
    """libFuzzer's merge: adds to `into` the inputs of `sources` that bring new coverage (new
    features, or with `edges_only` new edges)."""
    argv = [str(BINARIES / target), "-merge=1", str(into), *map(str, sources), *OPTIONS]
    argv += ["-use_counters=0"] if edges_only else []
    subprocess.run(["nice", "-n", "10", *argv], capture_output=True, check=True)


def minimize(target: str) -> None:
    """Keeps the fewest inputs that reach every edge the corpus reaches (a small corpus to
    commit; the fuzzer finds the features between them again quickly)."""
    corpus = FUZZ / "corpus" / target
    with tempfile.TemporaryDirectory() as kept:
        merge(target, Path(kept), corpus, edges_only=True)
        shutil.rmtree(corpus)
        shutil.copytree(kept, corpus)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="all", help=f"all, or some of {','.join(TARGETS)}")
    limit = parser.add_mutually_exclusive_group()
    limit.add_argument("--runs", type=int, help="executions per target")
    limit.add_argument("--seconds", type=int, help="seconds per target (default 60)")
    parser.add_argument("--parallel", type=int, default=2, help="targets run at once")
    parser.add_argument("--merge", action="store_true", help="add new coverage to the corpus")
    parser.add_argument("--minimize", action="store_true", help="then minimise the corpus")
    args = parser.parse_args()
    targets = TARGETS if args.target == "all" else tuple(args.target.split(","))
    unknown = set(targets) - set(TARGETS)
    if unknown:
        parser.error(f"unknown targets: {', '.join(sorted(unknown))}")
    if shutil.which("cargo-fuzz") is None:
        parser.error("cargo-fuzz is not installed: cargo install cargo-fuzz")
    build()
    seconds = None if args.runs else (args.seconds or 60)
    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        results = list(pool.map(lambda t: run(t, args.runs, seconds), targets))
    for target in targets:
        if args.merge:
            merge(target, FUZZ / "corpus" / target, FUZZ / "work" / target)
        if args.minimize:
            minimize(target)
    print(f"{'target':10} {'executions':>12} {'cov':>6} {'ft':>7} {'corpus':>14} {'seconds':>8}")
    for r in results:
        print(
            f"{r.target:10} {r.executions:>12,} {r.cov:>6} {r.ft:>7} {r.corpus:>14}"
            f" {r.seconds:>8.0f}  {'crashes: ' + ' '.join(r.crashes) if r.crashes else 'ok'}"
        )
    return 1 if any(r.crashes for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
