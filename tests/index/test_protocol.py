"""The ``Index`` protocol is honoured: each backend (LMDB, PostgreSQL) has every member with the
same signature, and what the archive's side calls on an index is in the protocol (nothing one
backend's alone)."""

import ast
import inspect
from pathlib import Path

import pytest

import dicomvault
from dicomvault.index import Index, LmdbIndex
from dicomvault.index.pg_index import PgIndex
from dicomvault.store import Archive

PACKAGE = Path(dicomvault.__file__).parent


def members(protocol: type) -> dict[str, object]:
    return {name: m for name, m in vars(protocol).items() if not name.startswith("_")}


def mismatches(protocol: type, implementation: type) -> list[str]:
    """How ``implementation`` departs from ``protocol``: a member missing, a property that is
    not one, or a signature (parameters, kinds, defaults, annotations) that differs."""
    found = []
    for name, wanted in members(protocol).items():
        actual = inspect.getattr_static(implementation, name, None)
        if actual is None:
            found.append(f"{name}: missing")
            continue
        if isinstance(wanted, property):
            if not isinstance(actual, property):
                found.append(f"{name}: not a property")
                continue
            wanted, actual = wanted.fget, actual.fget
        if not inspect.isfunction(actual):
            found.append(f"{name}: not a method")
            continue
        expected = inspect.signature(wanted, eval_str=True)
        got = inspect.signature(actual, eval_str=True)
        if expected != got:
            found.append(f"{name}: {got} instead of {expected}")
    return found


@pytest.mark.parametrize("backend", [LmdbIndex, PgIndex])
def test_each_backend_has_every_member_of_the_protocol_with_its_signature(backend):
    assert len(members(Index)) >= 20
    assert mismatches(Index, backend) == []


def test_a_backend_that_drifts_from_the_protocol_is_caught():
    class Drifted(LmdbIndex):
        def find(self, level, filters):  # return_keys, limit, offset... dropped
            return iter(())

        def headroom(self) -> float:  # another return type
            return 0.0

        marks_frozen = False  # a plain attribute, not a property

    class Bare:
        pass

    assert [m.split(":")[0] for m in mismatches(Index, Drifted)] == [
        "find",
        "headroom",
        "marks_frozen",
    ]
    assert len(mismatches(Index, Bare)) == len(members(Index))


def _index_uses(path: Path) -> set[str]:
    """Attributes read off an index in a module: ``<anything>.index.<name>``, or
    ``index.<name>`` where ``index`` is a variable."""
    used = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Attribute):
            continue
        value = node.value
        if (isinstance(value, ast.Attribute) and value.attr == "index") or (
            isinstance(value, ast.Name) and value.id == "index"
        ):
            used.add(node.attr)
    return used


def test_what_the_archive_side_calls_on_an_index_is_in_the_protocol():
    # store/ (the archive, its finder), the audit trail and the benchmarks hold an index;
    # everything else goes through the archive (tests/store/test_door.py).
    modules = [p for d in ("store", "audit", "bench") for p in sorted((PACKAGE / d).rglob("*.py"))]
    used: dict[str, list[str]] = {}
    for path in modules:
        for name in _index_uses(path):
            used.setdefault(name, []).append(str(path.relative_to(PACKAGE)))
    assert {"commit", "delete", "get", "find", "applied"} <= used.keys()  # the walk sees them
    beyond = {name: where for name, where in used.items() if name not in members(Index)}
    assert beyond == {}, "calls outside the Index protocol"


def test_the_archive_holds_its_index_as_the_protocol():
    assert inspect.get_annotations(Archive, eval_str=True)["index"] is Index
