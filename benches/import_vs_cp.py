"""`dicomvault import` against `cp -r` + `sync` of the same generated CT files.

    python benches/import_vs_cp.py [--count 1000] [--runs 3]

Both copy the same tree from the page cache to the same disk; the import also scans, hashes,
indexes and fsyncs (sync = always) every instance before it reports it stored. Target: at least
0.8x cp's files/s. Medians of --runs runs; both measured in this run.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dicomvault.bench.corpus import ct_corpus


def timed(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        work = Path(tmp)
        made = ct_corpus(work / "src", args.count)
        size = sum(g.path.stat().st_size for g in made)
        subprocess.run(["sync"], check=True)
        cp_times, import_times = [], []
        for run in range(args.runs):
            dst = work / f"cp{run}"
            cp_times.append(timed(["sh", "-c", f"cp -r '{work / 'src'}' '{dst}' && sync"]))
            shutil.rmtree(dst)
            root = work / f"archive{run}"
            import_times.append(
                timed(
                    [
                        sys.executable,
                        "-m",
                        "dicomvault",
                        "import",
                        str(work / "src"),
                        "--root",
                        str(root),
                        "--quiet",
                        "--workers",
                        str(args.workers),
                    ]
                )
            )
            shutil.rmtree(root)
            subprocess.run(["sync"], check=True)
        cp_t, imp_t = statistics.median(cp_times), statistics.median(import_times)
        print(f"{args.count} CT files, {size / 1e6:.0f} MB, median of {args.runs} runs")
        for label, seconds in (("cp -r + sync", cp_t), ("dicomvault import", imp_t)):
            rate, throughput = args.count / seconds, size / seconds / 1e6
            print(f"  {label:<18} {seconds:7.2f} s  {rate:7.0f} files/s  {throughput:6.0f} MB/s")
        print("  (the import's time includes its process start; sync = always)")
        print(f"  ratio (import / cp files/s): {cp_t / imp_t:.2f}x  (target >= 0.8x)")


if __name__ == "__main__":
    main()
