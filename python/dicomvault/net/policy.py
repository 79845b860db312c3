"""Who may do what: the [dicom] policy keys and the [modalities] table.

Known AEs (a [modalities.NAME] table) may use the services in their ``allow`` list (all five
by default); with ``check_modality_host`` they count as known only when they connect from their
configured host. Unknown AEs may C-ECHO and C-STORE (per ``always_allow_echo`` and
``always_allow_store``) and nothing else, as in Orthanc.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

from dicomvault import _native

SERVICES = ("echo", "store", "find", "move", "get")

_TARGET = re.compile(r"^(?P<aet>[^@]{1,16})@(?P<host>[^:]+):(?P<port>\d+)$")


@dataclass(frozen=True)
class Modality:
    """A remote Application Entity."""

    name: str
    aet: str
    host: str
    port: int
    allow: frozenset[str] = frozenset(SERVICES)
    # Associations to it use DICOM TLS.
    tls: bool = False


class PolicyError(ValueError):
    """A [modalities] table or a TARGET argument that cannot be used."""


@cache
def _addresses(host: str) -> frozenset[str]:
    try:
        return frozenset(str(info[4][0]) for info in socket.getaddrinfo(host, None))
    except OSError:
        return frozenset({host})


class AccessPolicy:
    def __init__(
        self, dicom: Mapping[str, Any], modalities: Mapping[str, Mapping[str, Any]]
    ) -> None:
        self.dicom = dicom
        self.modalities: dict[str, Modality] = {}
        for name, table in modalities.items():
            try:
                allow = frozenset(table.get("allow", SERVICES))
                unknown = allow - set(SERVICES)
                if unknown:
                    raise PolicyError(f"[modalities.{name}] allow: unknown {sorted(unknown)}")
                tls = table.get("tls", False)
                if not isinstance(tls, bool):
                    raise PolicyError(f"[modalities.{name}] tls must be true or false")
                self.modalities[name] = Modality(
                    name, str(table["aet"]), str(table["host"]), int(table["port"]), allow, tls
                )
            except KeyError as e:
                raise PolicyError(f"[modalities.{name}] needs {e.args[0]}") from e

    def by_aet(self, aet: str) -> Modality | None:
        return next((m for m in self.modalities.values() if m.aet == aet.strip()), None)

    def known(self, calling_aet: str, host: str) -> Modality | None:
        """The modality a peer is, or None when it is unknown (or on the wrong host)."""
        modality = self.by_aet(calling_aet)
        if modality is None:
            return None
        if self.dicom["check_modality_host"] and host not in _addresses(modality.host):
            return None
        return modality

    def allows(self, calling_aet: str, host: str, service: str) -> bool:
        modality = self.known(calling_aet, host)
        if modality is not None:
            return service in modality.allow
        if service == "echo":
            return bool(self.dicom["always_allow_echo"])
        if service == "store":
            return bool(self.dicom["always_allow_store"])
        return False

    def listener_rules(self) -> list[_native.KnownAe]:
        """Each known AE as the storage listener checks it, applying the same rules without
        calling back."""
        return [
            _native.KnownAe(
                m.aet, sorted(_addresses(m.host)), echo="echo" in m.allow, store="store" in m.allow
            )
            for m in self.modalities.values()
        ]

    def target(self, target: str) -> Modality:
        """A [modalities] name (or AE title), or ``AET@host:port``."""
        if target in self.modalities:
            return self.modalities[target]
        match = _TARGET.match(target)
        if match:
            return Modality(target, match["aet"], match["host"], int(match["port"]))
        modality = self.by_aet(target)
        if modality is not None:
            return modality
        raise PolicyError(
            f"unknown target {target!r}: name a [modalities] entry or give AET@host:port"
        )
