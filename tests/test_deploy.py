"""deploy/: the example deployment holds together without Docker. Each node's file, with the
environment compose.yaml gives the node, loads with the real configuration loader and passes
the checks `serve` makes; the nodes are one archive (one bucket, endpoint, prefix and index)
with a node number each; compose.yaml starts them after init-db, mounts files that exist and
takes its secrets from deploy/.env; HAProxy sends to the ports the nodes listen on."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from dicomvault.config import Settings, load
from dicomvault.http.auth import check_settings
from dicomvault.net.policy import AccessPolicy
from dicomvault.store.backends import storage_identity

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
# Compose's interpolation: ${NAME}, ${NAME:-default}, ${NAME:?error}.
VARIABLE = re.compile(r"\$\{(?P<name>\w+)(?::(?P<op>[-?])(?P<arg>[^}]*))?\}")
# What .env.example must leave empty for each deployment to set.
SECRETS = ("POSTGRES_PASSWORD", "S3_SECRET_ACCESS_KEY")


def dotenv(path: Path) -> dict[str, str]:
    """The NAME=value lines of an env file."""
    pairs = (line.split("=", 1) for line in path.read_text().splitlines())
    return {
        name.strip(): value.strip()
        for name, value in (p for p in pairs if len(p) == 2 and not p[0].startswith("#"))
    }


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """``value`` (a string, list or mapping from compose.yaml) with its variables replaced as
    compose replaces them; a required one unset fails, as compose refuses to start then."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        if env.get(match["name"]):
            return env[match["name"]]
        assert match["op"] != "?", f"{match['name']} unset: compose says {match['arg']!r}"
        return match["arg"] or ""

    return VARIABLE.sub(one, value)


@pytest.fixture(scope="module")
def example_env() -> dict[str, str]:
    """deploy/.env.example with its secrets set, as a deployment sets them."""
    env = dotenv(DEPLOY / ".env.example")
    return {name: value or f"{name.lower()}-0123456789abcdef" for name, value in env.items()}


@pytest.fixture(scope="module")
def compose(example_env: dict[str, str]) -> dict[str, Any]:
    return interpolate(yaml.safe_load((DEPLOY / "compose.yaml").read_text()), example_env)


def nodes(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run `dicomvault serve`."""
    return {
        name: service
        for name, service in compose["services"].items()
        if service.get("command", [None])[0] == "serve"
    }


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """A service's bind mounts of files under deploy/: where in the container, from where."""
    pairs = (volume.split(":")[:2] for volume in service.get("volumes", []))
    return {target: source for source, target in pairs if source.startswith("./")}


def node_settings(service: dict[str, Any]) -> Settings:
    """What `serve` runs with: the file it is given and the node's environment only."""
    command = service["command"]
    config = mounts(service)[command[command.index("--config") + 1]]
    return load(DEPLOY / config, environ=service["environment"])


@pytest.mark.parametrize("path", sorted(DEPLOY.glob("*.toml")), ids=lambda p: p.name)
def test_every_configuration_file_loads(path):
    assert load(path, environ={}).source == path


def test_the_nodes_are_one_archive_each_with_its_own_node_number(
    compose, example_env, tmp_path, monkeypatch
):
    services = compose["services"]
    settings = {name: node_settings(service) for name, service in nodes(compose).items()}
    assert len(settings) >= 2
    for conf in settings.values():
        assert conf["storage"]["backend"] == "s3"
        assert conf["index"]["backend"] == "postgresql"
        # The secrets come from the node's environment, which compose takes from deploy/.env.
        assert conf["storage"]["access_key_id"] == example_env["S3_ACCESS_KEY_ID"]
        assert conf["storage"]["secret_access_key"] == example_env["S3_SECRET_ACCESS_KEY"]
        url = urlsplit(conf["index"]["url"])
        assert url.password == example_env["POSTGRES_PASSWORD"]
        assert url.hostname in services
        assert urlsplit(conf["storage"]["endpoint"]).hostname in services
        # What serve checks before it listens beyond loopback, and the access policy it builds.
        assert conf["http"]["enabled"] and conf["http"]["auth"] != "none"
        check_settings(conf)
        assert AccessPolicy(conf["dicom"], conf["modalities"]).modalities
    numbers = [conf["storage"]["node"] for conf in settings.values()]
    assert len(set(numbers)) == len(numbers) and all(1 <= n < 1 << 32 for n in numbers)
    # One archive: the same bucket at the same endpoint and prefix, the same index.
    assert len({storage_identity(conf) for conf in settings.values()}) == 1
    # init-db is given no file: the environment alone (and no ./dicomvault.toml where it runs).
    monkeypatch.chdir(tmp_path)
    init_db = load(environ=services["init-db"]["environment"])
    assert {conf["index"]["url"] for conf in settings.values()} == {init_db["index"]["url"]}
    assert init_db["index"]["backend"] == "postgresql"
    # Nothing else tells the nodes apart: each node's file is the others' with its own number.
    for conf in settings.values():
        conf["storage"]["node"] = None
    first, *others = settings.values()
    assert all(conf.values == first.values for conf in others)


def test_compose_starts_the_nodes_after_init_db_on_files_that_exist(compose, example_env):
    services = compose["services"]
    assert {"postgres", "seaweedfs", "init-db", "haproxy"} <= set(services)
    assert services["init-db"]["command"] == ["init-db"]
    assert services["init-db"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name, service in nodes(compose).items():
        assert service["depends_on"]["init-db"]["condition"] == "service_completed_successfully"
        # The HTTP server refuses a Host header naming another machine: scraped as nodeN:8042,
        # the node must be called so.
        assert service["hostname"] == name
        assert service["depends_on"]["seaweedfs"]["condition"] == "service_healthy"
    for service in services.values():
        for source in mounts(service).values():
            assert (DEPLOY / source).is_file(), f"compose.yaml mounts {source}"
        if "build" in service:
            context = DEPLOY / service["build"]["context"]
            assert (context / service["build"]["dockerfile"]).is_file()
    # SeaweedFS's one identity is the key pair the nodes sign with; PostgreSQL's password is
    # the one in the nodes' index URL.
    seaweedfs = services["seaweedfs"]["environment"]
    assert seaweedfs["AWS_ACCESS_KEY_ID"] == example_env["S3_ACCESS_KEY_ID"]
    assert seaweedfs["AWS_SECRET_ACCESS_KEY"] == example_env["S3_SECRET_ACCESS_KEY"]
    assert (
        services["postgres"]["environment"]["POSTGRES_PASSWORD"] == example_env["POSTGRES_PASSWORD"]
    )


def test_the_secrets_come_from_deploy_env_and_none_is_committed():
    used = set(VARIABLE.findall((DEPLOY / "compose.yaml").read_text()))
    declared = dotenv(DEPLOY / ".env.example")
    assert {name for name, _, _ in used} <= set(declared)
    assert all(declared[name] == "" for name in SECRETS)
    assert "/deploy/.env" in (DEPLOY.parent / ".gitignore").read_text().splitlines()


def test_the_lifecycle_rule_covers_the_archive(compose):
    rules = json.loads((DEPLOY / "s3-lifecycle.json").read_text())["Rules"]
    [prefix] = {conf["storage"]["prefix"] for conf in map(node_settings, nodes(compose).values())}
    [abort] = [r for r in rules if "AbortIncompleteMultipartUpload" in r]
    assert abort["Status"] == "Enabled" and abort["Filter"]["Prefix"] == f"{prefix}/"
    assert abort["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"] >= 1


def haproxy_sections(text: str) -> dict[str, list[list[str]]]:
    """haproxy.cfg's sections ("frontend dicom", "backend dicom_nodes"...): their lines, split
    into words, comments left out."""
    sections: dict[str, list[list[str]]] = {}
    current: list[list[str]] = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        if not line[0].isspace():
            current = sections.setdefault(" ".join(words), [])
        else:
            current.append(words)
    return sections


def test_haproxy_sends_to_the_ports_the_nodes_listen_on(compose):
    sections = haproxy_sections((DEPLOY / "haproxy.cfg").read_text())
    settings = {name: node_settings(service) for name, service in nodes(compose).items()}
    published = {int(p.rsplit(":", 1)[-1]) for p in compose["services"]["haproxy"]["ports"]}
    # Each listener's frontend binds a port compose publishes, and its backend has every node,
    # at the port that node listens on.
    for section in ("dicom", "http"):
        frontend = dict((w[0], w[1:]) for w in sections[f"frontend {section}"])
        assert int(frontend["bind"][0].rsplit(":", 1)[-1]) in published
        backend = sections[f"backend {frontend['default_backend'][0]}"]
        servers = {w[1]: w[2] for w in backend if w[0] == "server"}
        assert servers == {
            name: f"{name}:{conf[section]['port']}" for name, conf in settings.items()
        }
