"""`migrate pacs --method get` from a source that answers lists of UIDs in its C-FINDs but
retrieves only the first UID of a list (a pynetdicom Q/R SCP written so): the studies a
request names together, and the parts of a large one, come short, and each is then asked
for alone and whole, so that every study ends verified."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, StoragePresentationContexts, evt
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
)

from dicomvault.bench.corpus import ct_corpus
from dicomvault.bench.peers import free_port
from dicomvault.config import load
from dicomvault.migrate.journal import rows_of
from dicomvault.migrate.pacs import MIN_PART
from tests.conftest import Cli
from tests.migrate.test_dicomweb import held as held_by
from tests.migrate.test_pacs import migrator_config
from tests.net.test_integrity import dataset_bytes

PENDING = 0xFF00
LEVEL_KEY = {"STUDY": "StudyInstanceUID", "SERIES": "SeriesInstanceUID", "IMAGE": "SOPInstanceUID"}


class FirstOfListSource:
    """A Q/R SCP over ``files``: C-FIND matches lists of UIDs (PS3.4 C.2.2.2.2), and names
    no SOP Class unless ``lists_classes`` (as DCMTK's dcmqrscp); C-GET takes the first UID
    of a list only."""

    def __init__(self, files: list[Path], lists_classes: bool = True) -> None:
        self.held = {f: pydicom.dcmread(f, stop_before_pixels=True) for f in files}
        self.lists_classes = lists_classes
        self.port = free_port()
        ae = AE(ae_title="QUIRKY")
        ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
        ae.add_supported_context(StudyRootQueryRetrieveInformationModelGet)
        for cx in StoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, scu_role=False, scp_role=True)
        self.server = ae.start_server(
            ("127.0.0.1", self.port),
            block=False,
            evt_handlers=[(evt.EVT_C_FIND, self.find), (evt.EVT_C_GET, self.get)],
        )

    def matching(self, identifier: Dataset, first_only: bool) -> Iterator[Path]:
        wanted = {}
        for keyword in LEVEL_KEY.values():
            value = identifier.get(keyword)
            if value:
                values = list(value) if isinstance(value, pydicom.multival.MultiValue) else [value]
                wanted[keyword] = set(values[:1] if first_only else values)
        for path, ds in self.held.items():
            if all(str(ds.get(k)) in v for k, v in wanted.items()):
                yield path

    def find(self, event: evt.Event) -> Iterator[tuple[int, Dataset]]:
        identifier = event.identifier
        level = identifier.QueryRetrieveLevel
        answered = set()
        for path in self.matching(identifier, first_only=False):
            ds = self.held[path]
            if ds.get(LEVEL_KEY[level]) in answered:
                continue
            answered.add(ds.get(LEVEL_KEY[level]))
            answer = Dataset()
            answer.QueryRetrieveLevel = level
            for element in identifier:
                if element.keyword == "NumberOfStudyRelatedInstances":
                    same = [
                        d for d in self.held.values() if d.StudyInstanceUID == ds.StudyInstanceUID
                    ]
                    answer.NumberOfStudyRelatedInstances = len(same)
                elif element.keyword == "SOPClassUID" and not self.lists_classes:
                    continue
                elif element.keyword != "QueryRetrieveLevel":
                    setattr(answer, element.keyword, ds.get(element.keyword, ""))
            yield PENDING, answer

    def get(self, event: evt.Event) -> Iterator[object]:
        paths = list(self.matching(event.identifier, first_only=True))
        yield len(paths)
        for path in paths:
            yield PENDING, pydicom.dcmread(path)

    def stop(self) -> None:
        self.server.shutdown()


@pytest.mark.timeout(300)
def test_a_source_taking_only_the_first_uid_of_a_list_still_gives_every_study(tmp_path):
    small = ct_corpus(tmp_path / "small", 4, rows=16, columns=16, studies=4)
    large = ct_corpus(tmp_path / "large", 2 * MIN_PART, rows=16, columns=16, seed=1, studies=1)
    source = FirstOfListSource([g.path for g in small + large])
    config = migrator_config(
        tmp_path / "dicomvault.toml", free_port(), "QUIRKY", source.port, name="quirky"
    )
    cli = Cli(tmp_path / "archive", tmp_path)
    try:
        result = cli.run(
            "migrate",
            "pacs",
            "quirky",
            "--method",
            "get",
            "--parallel",
            "2",
            "--config",
            config,
            check=False,
        )
    finally:
        source.stop()
    assert "5 of 5 studies verified" in result.stdout, result.stdout + result.stderr
    rows = {r.item: r for r in rows_of(load(None, root=cli.root), "quirky")}
    # The large study came short in parts, then whole.
    [study] = {g.study_instance_uid for g in large}
    assert (rows[study].state, rows[study].attempts) == ("verified", 2)
    held = {i["key"] for i in cli.ls("instances")}
    assert held == {g.sop_instance_uid for g in small + large}


def test_a_source_naming_no_sop_class_gives_every_study_as_held(tmp_path):
    """A C-GET refuses what comes on a context of several transfer syntaxes; from a source
    that does not say of what SOP Class its instances are, the request comes again with
    the classes it sent proposed in a context per syntax: every data set as it holds it."""
    corpus = ct_corpus(tmp_path / "corpus", 6, rows=16, columns=16, studies=3)
    source = FirstOfListSource([g.path for g in corpus], lists_classes=False)
    config = migrator_config(
        tmp_path / "dicomvault.toml", free_port(), "QUIRKY", source.port, name="quirky"
    )
    cli = Cli(tmp_path / "archive", tmp_path)
    try:
        result = cli.run("migrate", "pacs", "quirky", "--method", "get", "--config", config)
    finally:
        source.stop()
    assert "3 of 3 studies verified" in result.stdout, result.stdout + result.stderr
    # At the first attempt: the classes refused are asked for again at once.
    rows = rows_of(load(None, root=cli.root), "quirky")
    assert {(r.state, r.attempts) for r in rows} == {("verified", 1)}
    held = {uid: dataset_bytes(data) for uid, data in held_by(cli.root).items()}
    assert held == {g.sop_instance_uid: dataset_bytes(g.path.read_bytes()) for g in corpus}


@pytest.mark.parametrize("into", ["archive", "files"])
def test_dicomvault_get_from_a_source_naming_no_sop_class(tmp_path, into):
    """`dicomvault get` from such a source: what came on a context of several syntaxes is
    refused, then asked for again with its classes proposed in each syntax; every data set
    as the source sends it, none converted on the way."""
    corpus = ct_corpus(tmp_path / "corpus", 4, rows=16, columns=16, studies=1)
    source = FirstOfListSource([g.path for g in corpus], lists_classes=False)
    config = migrator_config(
        tmp_path / "dicomvault.toml", free_port(), "QUIRKY", source.port, name="quirky"
    )
    cli = Cli(tmp_path / "archive", tmp_path)
    out = tmp_path / "out"
    where = ["--out", str(out)] if into == "files" else []
    try:
        study = f"StudyInstanceUID={corpus[0].study_instance_uid}"
        result = cli.run("get", "quirky", "-k", study, *where, "--config", config)
    finally:
        source.stop()
    assert "refused" not in result.stderr, result.stderr
    if into == "files":
        held = {path.stem: dataset_bytes(path.read_bytes()) for path in out.glob("*.dcm")}
    else:
        held = {uid: dataset_bytes(data) for uid, data in held_by(cli.root).items()}
    assert held == {g.sop_instance_uid: dataset_bytes(g.path.read_bytes()) for g in corpus}
