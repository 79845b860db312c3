"""The live view of a migration: its figures (studies done of those to do, instances, bytes,
rates, ETA), published while it runs in ``<root>/migrate/live-<source>.json`` for ``migrate
status`` to show from another process, and to the foreground command's progress bar."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import quote

# Published at most this often (and when the migration ends).
PUBLISH_INTERVAL_S = 0.5


def live_path(root: Path, source: str) -> Path:
    return root / "migrate" / f"live-{quote(source, safe='')}.json"


@dataclass
class Progress:
    """A migration's figures; ``path`` is where they are published (None: nowhere)."""

    source: str
    path: Path | None = None
    # Studies to do in this run; grows while the source is enumerated.
    total: int = 0
    enumerated: bool = False
    done: int = 0
    verified: int = 0
    instances: int = 0
    bytes: int = 0
    started: float = field(default_factory=time.time)
    finished: float | None = None
    pid: int = field(default_factory=os.getpid)
    _published: float = field(default=0.0, repr=False)

    def study_done(self, verified: bool, instances: int, size: int) -> None:
        self.done += 1
        self.verified += verified
        self.instances += instances
        self.bytes += size
        self.publish()

    def elapsed(self) -> float:
        return max((self.finished or time.time()) - self.started, 1e-6)

    def eta(self) -> float | None:
        """Seconds left at the rate so far (None before the first study)."""
        if not self.done:
            return None
        return max(0, self.total - self.done) * self.elapsed() / self.done

    def line(self) -> str:
        """``[3/50 studies, 12 instances, 1.6 MB, 19.8 studies/s, 10.5 MB/s, ETA 2 s]``."""
        elapsed, eta = self.elapsed(), self.eta()
        return (
            f"[{self.done}/{self.total} studies, {self.instances} instances, "
            f"{self.bytes / 1e6:.1f} MB, {self.done / elapsed:.1f} studies/s, "
            f"{self.bytes / 1e6 / elapsed:.1f} MB/s, "
            f"ETA {'?' if eta is None else f'{eta:.0f}'} s]"
        )

    def publish(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.path is None or (not force and now - self._published < PUBLISH_INTERVAL_S):
            return
        self._published = now
        figures = {k: v for k, v in asdict(self).items() if not k.startswith("_") and k != "path"}
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(figures))
        os.replace(temporary, self.path)

    def finish(self) -> None:
        self.finished = time.time()
        self.publish(force=True)

    @classmethod
    def load(cls, root: Path, source: str) -> Progress | None:
        """The figures the last (or running) migration from ``source`` published."""
        try:
            figures = json.loads(live_path(root, source).read_text())
        except (OSError, ValueError):
            return None
        return cls(**figures)

    @property
    def running(self) -> bool:
        """Whether the migration that published these figures is still at it."""
        if self.finished is not None:
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False  # killed: its figures stop where it did
        except PermissionError:
            pass
        return True
