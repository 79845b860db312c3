"""The migration journal keeps each item's state on the archive's index backend: under the
root beside LMDB, or in the PostgreSQL index, where every node sharing the archive sees what
one node's migration did at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicomvault.config import Settings, load
from dicomvault.migrate.journal import JournalRow, open_journal, rows_of


def node_settings(tmp_path: Path, name: str, pg_url: str | None) -> Settings:
    """The settings of a node with its own root, its index on LMDB or at ``pg_url``."""
    path = tmp_path / f"{name}.toml"
    index = f'[index]\nbackend = "postgresql"\nurl = "{pg_url}"\n' if pg_url else ""
    path.write_text(f'[archive]\nroot = "{tmp_path / name}"\n{index}')
    return load(path)


@pytest.fixture(params=["lmdb", "postgresql"])
def settings(request, tmp_path) -> Settings:
    url = request.getfixturevalue("pg_url") if request.param == "postgresql" else None
    return node_settings(tmp_path, "a", url)


def test_rows_keep_their_state_and_come_in_item_order(settings):
    with open_journal(settings) as journal:
        journal.enumerated("PACS", "1.2.10", "20240101", 3)
        journal.put_many([JournalRow("PACS", "1.2.9", "verified"), JournalRow("OTHER", "1.2")])
        again = journal.enumerated("PACS", "1.2.9", "20240102", 5)
        assert (again.state, again.expected) == ("verified", 5)  # a known study keeps its state
        assert [r.item for r in journal.rows("PACS")] == ["1.2.10", "1.2.9"]  # by bytes
        assert [r.item for r in journal.unsettled("PACS")] == ["1.2.10"]
        unknown = journal.get("PACS", "1.2.11")
        assert (unknown.state, unknown.attempts) == ("pending", 0)
    assert {r.item: r.state for r in rows_of(settings, "PACS")} == {
        "1.2.10": "pending",
        "1.2.9": "verified",
    }


def test_on_postgresql_another_node_sees_a_migration_at_once(tmp_path, pg_url):
    a, b = node_settings(tmp_path, "a", pg_url), node_settings(tmp_path, "b", pg_url)
    with open_journal(a) as on_a, open_journal(b) as on_b:
        on_a.put(JournalRow("PACS", "1.2.3", "running", expected=4))
        assert [(r.item, r.state) for r in on_b.rows("PACS")] == [("1.2.3", "running")]
        # Node B resumes it: what it records, node A sees.
        row = on_b.get("PACS", "1.2.3")
        row.state, row.received = "verified", 4
        on_b.put(row)
        assert on_a.get("PACS", "1.2.3").state == "verified"
    assert not (tmp_path / "a" / "migrate").exists()  # nothing under either root
