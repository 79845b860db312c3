"""The ingest benchmark, as `dicomvault bench ingest` runs it (options are the same):

python benches/ingest.py [--runs 3] [--quick] [--server dicomvault --server storescp ...]
    [--sync always --sync batch ...] [--baseline REF [--jobs 1]] [--work DIR]
"""

import sys

from dicomvault.cli.app import app

if __name__ == "__main__":
    app(["bench", "ingest", *sys.argv[1:]])
