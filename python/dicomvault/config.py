"""Configuration: one TOML file, overridable by environment variables, with defaults.

The file is ``--config FILE``, else ``./dicomvault.toml`` when present, else none. Any key of
a section can be overridden by ``DICOMVAULT_<SECTION>_<KEY>`` (``DICOMVAULT_ARCHIVE_ROOT``,
``DICOMVAULT_STORAGE_SYNC``...); the value is read as a TOML value when it parses as one (so
``true``, ``42`` and ``["a", "b"]`` work) and as a plain string otherwise.
"""

from __future__ import annotations

import copy
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on Python 3.10
    import tomli as tomllib

DEFAULT_FILE = Path("dicomvault.toml")
ENV_PREFIX = "DICOMVAULT_"

DEFAULTS: dict[str, dict[str, Any]] = {
    "archive": {"root": "dicomvault-data"},
    "storage": {
        # "packs" (embedded, under the archive root) or "s3": an S3-compatible bucket
        # (SeaweedFS, MinIO, AWS) shared by every node of the archive, whose index is then
        # PostgreSQL's ([index] backend) for the nodes to share it too.
        "backend": "packs",
        "endpoint": "",  # "http://127.0.0.1:8333"; empty: AWS itself, from the region
        "bucket": "",
        "region": "us-east-1",
        # Empty: the standard AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY variables.
        "access_key_id": "",
        "secret_access_key": "",
        "prefix": "",  # keys start with it: several archives in one bucket
        # This node's number (1 or more), different on every node writing to the bucket:
        # required with backend = "s3".
        "node": 0,
        # Packs roll over at this size; each holds many instances' blobs.
        "pack_size": 1 << 30,
        # "none" or "zstd" (per blob, kept only where it saves space).
        "compression": "none",
        "compression_level": 3,
        # "always": fsync before acknowledging; "batch": fsync every sync_interval_ms (a killed
        # process loses nothing, a power loss that window); "never": leave it to the OS.
        "sync": "always",
        "sync_interval_ms": 1000,
        # Instances are refused (C-STORE 0xA700, HTTP 507) before they are acknowledged once
        # the archive's filesystem has less free space than this, so that what was
        # acknowledged can always be indexed. 0 turns the check off.
        "min_free_space_mb": 100,
        # An instance received again with other bytes: "keep" the first, or "replace" it
        # (the replaced version is kept for `show --history` until gc).
        "on_duplicate": "keep",
    },
    "index": {
        # "lmdb" (embedded, under the archive root) or "postgresql" (a server: url).
        "backend": "lmdb",
        # The PostgreSQL database ("postgresql://user:password@host:5432/dbname", or the
        # DICOMVAULT_INDEX_URL environment variable); its schema is made by `dicomvault
        # init-db`, or at the first open of an empty database.
        "url": "",
        # Connections the archive keeps to PostgreSQL at most.
        "pool_size": 8,
        # Virtual size of the LMDB map; the file grows only as data is written.
        "map_size": 1 << 40,
        "case_insensitive_pn": True,
    },
    "import": {
        # 0: one worker per CPU.
        "workers": 0,
    },
    "dicom": {
        "aet": "DICOMVAULT",
        "host": "0.0.0.0",
        "port": 11112,
        "max_associations": 32,
        # Listener limits: associations from one calling AE title at once; seconds from a
        # connection to its whole A-ASSOCIATE-RQ (TLS handshake included: ARTIM, PS3.8 9.1.5);
        # seconds each PDU of an association may take to arrive (idle included); the largest
        # PDU accepted (advertised); the largest C-STORE data set (MiB), refused beyond it.
        "max_associations_per_ae": 16,
        "association_timeout_s": 30,
        "dimse_timeout_s": 60,
        "max_pdu": 4194304,
        "max_instance_size_mb": 4096,
        "always_allow_echo": True,
        "always_allow_store": True,
        "check_called_aet": False,
        "check_modality_host": False,
        # Instances of private SOP classes (UIDs outside 1.2.840.10008) stored as any other
        # (Orthanc's UnknownSopClassAccepted, storescp's --promiscuous); refused by default.
        "accept_private_sop_classes": False,
        # DICOM TLS (PS3.15 Annex B): a second listener on tls_port (0: none). The SCU verbs
        # and C-MOVE sub-associations to a [modalities] entry with tls = true use the same
        # certificate, key and trusted CAs.
        "tls_port": 0,
        "tls_certificate": "",
        "tls_private_key": "",
        "tls_ca": "",
        "tls_require_client_certificate": True,
    },
    "http": {
        "enabled": False,
        "host": "127.0.0.1",
        "port": 8042,
        # A request body larger than this is refused (413): uploads and STOW-RS included.
        "max_body_mb": 4096,
        # The request line and headers together at most (larger: 431, from uvicorn's parser).
        "max_header_kb": 64,
        # HTTPS when both are set (PEM files).
        "tls_certificate": "",
        "tls_private_key": "",
        # "none" (only when host is a loopback address), "users" (the archive's users and
        # tokens) or "oidc" (bearer JWTs of oidc_issuer, and the archive's users and tokens).
        "auth": "none",
        "oidc_issuer": "",
        "oidc_audience": "dicomvault",
        # Where the roles are in a token's claims; a dotted path reaches into objects
        # ("realm_access.roles" for Keycloak's realm roles).
        "oidc_roles_claim": "roles",
        # Host names the server answers to besides IP addresses, localhost and this
        # machine's names (a name not listed is a DNS rebinding attempt).
        "allowed_hosts": [],
        # A web UI session ends after this long without a request.
        "session_idle_minutes": 30,
        # Failed logins a user name may make per window (a client address: ten times as
        # many).
        "max_failed_logins": 10,
        "failed_login_window_s": 300,
    },
    "audit": {
        # JSON lines, one file a day (UTC), relative to the archive root unless absolute.
        "path": "audit",
        # "" (none), "tcp://host:port", "tcp+tls://host:port" or "udp://host:port": RFC 5424
        # messages carrying DICOM Audit Messages (PS3.15 A.5).
        "syslog": "",
        # CA certificates that tcp+tls trusts ("": the system's).
        "syslog_ca": "",
    },
    "modalities": {},
}


class ConfigError(ValueError):
    """The configuration file or an override is invalid."""


def _parse_env_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _coerce(section: str, key: str, value: Any, default: Any) -> Any:
    if default is None or isinstance(value, type(default)):
        return value
    if isinstance(default, bool):
        raise ConfigError(f"[{section}] {key} must be true or false, not {value!r}")
    if isinstance(default, int) and isinstance(value, str) and value.isdigit():
        return int(value)
    if isinstance(default, str):
        return str(value)
    raise ConfigError(f"[{section}] {key} must be a {type(default).__name__}, not {value!r}")


class Settings:
    """Resolved settings: ``settings["storage"]["sync"]``, or ``settings.root``."""

    def __init__(self, values: dict[str, dict[str, Any]], source: Path | None) -> None:
        self.values = values
        self.source = source

    def __getitem__(self, section: str) -> dict[str, Any]:
        return self.values[section]

    @property
    def root(self) -> Path:
        return Path(self.values["archive"]["root"])


def load(
    path: Path | None = None,
    *,
    root: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Defaults, then the file, then environment overrides, then ``root`` (``--root``)."""
    environ = os.environ if environ is None else environ
    values = copy.deepcopy(DEFAULTS)
    source = path if path is not None else (DEFAULT_FILE if DEFAULT_FILE.is_file() else None)
    if source is not None:
        try:
            loaded = tomllib.loads(source.read_text())
        except FileNotFoundError as e:
            raise ConfigError(f"configuration file {source} does not exist") from e
        except OSError as e:  # a directory, unreadable
            raise ConfigError(f"configuration file {source}: {e.strerror}") from e
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{source}: {e}") from e
        for section, table in loaded.items():
            if not isinstance(table, dict):
                raise ConfigError(f"{source}: {section} must be a [table]")
            if section not in values:
                raise ConfigError(f"{source}: unknown section [{section}]")
            if section == "modalities":
                values[section].update(table)
                continue
            for key, value in table.items():
                if key not in values[section]:
                    raise ConfigError(f"{source}: unknown key {key} in [{section}]")
                values[section][key] = _coerce(section, key, value, DEFAULTS[section][key])
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        rest = name[len(ENV_PREFIX) :].lower()
        named = next((s for s in values if rest.startswith(s + "_")), None)
        if named is None or named == "modalities":
            continue
        key = rest[len(named) + 1 :]
        if key in values[named]:
            values[named][key] = _coerce(named, key, _parse_env_value(raw), DEFAULTS[named][key])
    if root is not None:
        values["archive"]["root"] = str(root)
    return Settings(values, source)
