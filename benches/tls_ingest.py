"""C-STORE throughput over DICOM TLS against plain TCP, in one run (issue 14): DCMTK's
storescu with +tls (its default Non-downgrading BCP 195 profile, PS3.15 B.10; mutual TLS) to
the TLS port and plain storescu to the plain port of the same `dicomvault serve`
configuration, a fresh archive per run, alternating, CT instances (512x512x16, 0.5 MB) over 1
and 4 associations; the median instances/s of each and TLS's ratio to plain (target >= 0.8).
Certificates are made with the openssl command line.

python benches/tls_ingest.py [--runs 3] [--count 1000] [--work DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
from pathlib import Path

from dicomvault.bench.corpus import ct_corpus
from dicomvault.bench.ingest import store
from dicomvault.bench.peers import Dicomvault, free_port


def openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


def certificates(directory: Path) -> dict[str, Path]:
    """A CA, and a server and a client certificate it signed (P-256, for 127.0.0.1)."""
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl("req", "-x509", *ec, "-keyout", directory / "ca.key", "-out", directory / "ca.pem",
            "-subj", "/CN=bench CA", "-days", "2")  # fmt: skip
    san = directory / "san.cnf"
    san.write_text("subjectAltName=IP:127.0.0.1\n")
    for name in ("server", "client"):
        openssl("req", *ec, "-keyout", directory / f"{name}.key", "-out", directory / f"{name}.csr",
                "-subj", f"/CN={name}")  # fmt: skip
        openssl("x509", "-req", "-in", directory / f"{name}.csr", "-CA", directory / "ca.pem",
                "-CAkey", directory / "ca.key", "-CAcreateserial", "-days", "2",
                "-extfile", san, "-out", directory / f"{name}.pem")  # fmt: skip
    return {
        **{name: directory / f"{name}.pem" for name in ("ca", "server", "client")},
        **{f"{name}.key": directory / f"{name}.key" for name in ("server", "client")},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--count", type=int, default=1000, help="CT instances")
    parser.add_argument("--work", type=Path, default=Path("dicomvault-bench"))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    corpus = args.work / f"ct-{args.count}"
    if not (corpus / ".complete").exists():
        ct_corpus(corpus, args.count)
        (corpus / ".complete").touch()
    files = sorted(corpus.rglob("*.dcm"))
    megabytes = sum(f.stat().st_size for f in files) / 1e6
    with tempfile.TemporaryDirectory(dir=args.work) as scratch:
        keys = certificates(Path(scratch))
        config = Path(scratch) / "dicomvault.toml"
        tls_port = free_port()
        config.write_text(
            f'[dicom]\ntls_port = {tls_port}\ntls_certificate = "{keys["server"]}"\n'
            f'tls_private_key = "{keys["server.key"]}"\ntls_ca = "{keys["ca"]}"\n'
        )
        tls_options = ("+tls", str(keys["client.key"]), str(keys["client"]), "+cf", str(keys["ca"]))
        peer = Dicomvault(config=config)
        print(f"{len(files)} CT instances, {megabytes:.0f} MB; {args.runs} runs each")
        for associations in (1, 4):
            seconds: dict[str, list[float]] = {"plain": [], "TLS": []}
            for _ in range(args.runs):
                for kind in seconds:
                    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
                        os.sync()  # nothing of the previous run left to write back
                        peer.start(Path(tmp))
                        try:
                            if kind == "TLS":
                                took = store(peer, files, associations, tls_port, tls_options)
                            else:
                                took = store(peer, files, associations)
                        finally:
                            peer.stop()
                    seconds[kind].append(took)
            rate = {k: len(files) / statistics.median(v) for k, v in seconds.items()}
            print(
                f"{associations} association(s): plain {rate['plain']:.0f} instances/s "
                f"({rate['plain'] * megabytes / len(files):.0f} MB/s), TLS {rate['TLS']:.0f} "
                f"instances/s ({rate['TLS'] * megabytes / len(files):.0f} MB/s): "
                f"TLS/plain {rate['TLS'] / rate['plain']:.2f}x"
            )


if __name__ == "__main__":
    main()
