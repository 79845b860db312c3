"""Log lines a peer cannot forge: control characters in a message (a calling AE title with CR
and LF, a user name, a path) are escaped where the message is written, at the logging sink
every logger of the process goes through, the Rust listener's lines included (they reach
Python's logging through the host's ``log`` callback)."""

from __future__ import annotations

import logging
import re

# C0 and C1 controls, DEL, and the Unicode line and paragraph separators.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escape(text: str) -> str:
    """``text`` with each control character as ``\\xNN`` (``\\uNNNN`` beyond Latin-1): one
    message stays one line."""
    return _CONTROL.sub(
        lambda m: f"\\x{ord(m[0]):02x}" if ord(m[0]) < 0x100 else f"\\u{ord(m[0]):04x}", text
    )


class EscapingFormatter(logging.Formatter):
    """A formatter whose message part is escaped; a traceback the process itself adds keeps
    its lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape(record.message)
        return super().formatMessage(record)
