"""The child process ``ijg12`` runs: the Part 10 file named by its argument decoded by GDCM,
its pixels on stdout (a failure: a message on stderr and exit status 1). It imports GDCM alone,
to start fast.
"""

from __future__ import annotations

import sys

import gdcm  # type: ignore[import-untyped]


def main() -> int:
    gdcm.Trace.WarningOff()  # it warns about every 12-bit stream before decoding it right
    reader = gdcm.ImageReader()
    reader.SetFileName(sys.argv[1])
    if not reader.Read():
        print("GDCM cannot read the data set", file=sys.stderr)
        return 1
    # The binding hands the buffer over as a str of surrogate-escaped bytes.
    buffer = reader.GetImage().GetBuffer()
    if buffer is None:
        print("GDCM cannot decode the pixel data", file=sys.stderr)
        return 1
    sys.stdout.buffer.write(buffer.encode("utf-8", "surrogateescape"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
