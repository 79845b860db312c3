"""The archive is the only door to its index and pack store: no module outside ``store/`` and
``index/`` reaches ``archive.index`` or ``archive.store`` (so that another index backend, or
another store, changes nothing in the services) — readers and writers alike."""

import ast
from pathlib import Path

import dicomvault

PACKAGE = Path(dicomvault.__file__).parent

# Where the index and the pack store live, behind the archive.
BEHIND_THE_DOOR = ("store", "index")


def _is_archive(node: ast.expr) -> bool:
    """``archive``, or any ``<…>.archive`` (``self.archive``, ``self.finder.archive``)."""
    return (isinstance(node, ast.Name) and node.id == "archive") or (
        isinstance(node, ast.Attribute) and node.attr == "archive"
    )


def reaches(source: str, filename: str) -> list[tuple[int, str]]:
    """Where a module reaches an archive's index or store: (line, the expression up to the
    attribute read off it, if any)."""
    tree = ast.parse(source, filename)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and node.attr in ("index", "store")
            and _is_archive(node.value)
        ):
            outer = parents.get(node)
            shown = outer if isinstance(outer, ast.Attribute) else node
            found.append((node.lineno, ast.unparse(shown)))
    return sorted(found)


def _modules() -> list[Path]:
    return [
        p
        for p in sorted(PACKAGE.rglob("*.py"))
        if p.relative_to(PACKAGE).parts[0] not in BEHIND_THE_DOOR
    ]


def test_the_walk_finds_each_way_of_reaching_the_index_or_the_store():
    source = (
        "def f(archive, self):\n"
        "    archive.index.get(1, 2)\n"
        "    store = self.archive.store\n"
        "    self.finder.archive.index.find()\n"
        "    g(archive.store)\n"
        "    self.store.chunks(b'')\n"  # not an archive: a REST handler's own method
        "    archive.record(1, 2)\n"
    )
    assert reaches(source, "f.py") == [
        (2, "archive.index.get"),
        (3, "self.archive.store"),
        (4, "self.finder.archive.index.find"),
        (5, "archive.store"),
    ]


def test_only_the_archive_reaches_its_index_and_store():
    modules = _modules()
    assert any(p.parts[-2] == "http" for p in modules) and len(modules) > 50
    found = {
        (str(p.relative_to(PACKAGE)), line, expression)
        for p in modules
        for line, expression in reaches(p.read_text(), str(p))
    }
    assert sorted(found) == [], "use (or add) an Archive method instead"
