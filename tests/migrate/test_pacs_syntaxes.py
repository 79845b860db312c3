"""`dicomvault migrate pacs` keeps every instance in the transfer syntax the source holds it
in: Orthanc and a dicomvault `serve` holding one study in Implicit VR, Deflated, RLE, JPEG
Lossless (Process 14 and SV1) and JPEG-LS (made by DCMTK), by C-GET and by C-MOVE, every
data set byte-identical to the source's (the deflated one inflates to the same bytes: DCMTK
sends an odd-length deflated stream with a NUL byte added, so the wire carries one byte more
than the file holds).

A context accepts one transfer syntax (PS3.8 7.1.1.13), and a C-GET source sends an
instance on a context of its class, converting it to that context's syntax if need be. So a
migration's C-GET proposes the classes it has met in a context per syntax (an abstract
syntax may be proposed in several contexts), and refuses an instance sent on a context of
several syntaxes; those (and those the source failed, as Orthanc fails what it cannot
convert) come again by series, their classes listed and proposed in each syntax. More
classes than one C-GET proposes so (a study of many, many small studies of different
classes retrieved together) come as held too.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from dicomvault.bench.corpus import ct_corpus
from dicomvault.net.as_held import MAX_CLASSES_IN_EACH_SYNTAX
from dicomvault.net.vocabulary import STORAGE_SOP_CLASSES, VIDEO_SOP_CLASSES
from tests.conftest import Cli
from tests.migrate.test_dicomweb import held as data_sets_files
from tests.migrate.test_pacs import OUR_AET, migrator_config
from tests.net.conftest import Orthanc, Server, dcmtk, free_port
from tests.net.test_integrity import dataset_bytes

DEFLATED = "1.2.840.10008.1.2.1.99"  # Deflated Explicit VR Little Endian
JPEG_2000_LOSSLESS = "1.2.840.10008.1.2.4.90"
# DCMTK's converter for each syntax, and the syntax it writes.
CONVERTERS = {
    "1.2.840.10008.1.2": ("dcmconv", "+ti"),  # Implicit VR Little Endian
    DEFLATED: ("dcmconv", "+td"),
    "1.2.840.10008.1.2.5": ("dcmcrle",),  # RLE Lossless
    "1.2.840.10008.1.2.4.57": ("dcmcjpeg", "+el"),  # JPEG Lossless (Process 14)
    "1.2.840.10008.1.2.4.70": ("dcmcjpeg",),  # JPEG Lossless, First-Order Prediction
    "1.2.840.10008.1.2.4.80": ("dcmcjpls",),  # JPEG-LS Lossless
}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> list[Path]:
    """One study: an instance in Explicit VR Little Endian and one in each other syntax."""
    work = tmp_path_factory.mktemp("syntaxes")
    corpus = ct_corpus(work / "ct", 1 + len(CONVERTERS), rows=16, columns=16, studies=1)
    made = [corpus[0].path]
    for generated, (syntax, converter) in zip(corpus[1:], CONVERTERS.items(), strict=True):
        out = work / f"{syntax}.dcm"
        dcmtk(*converter, generated.path, out)
        assert _syntax(out.read_bytes()) == syntax
        made.append(out)
    return made


def _stored(orthanc: Orthanc, files: list[Path]) -> dict[str, bytes]:
    """``files`` stored in Orthanc over REST: SOP Instance UID -> the file it serves."""
    stored = {}
    for path in files:
        instance = orthanc.rest("/instances", path.read_bytes())
        file = orthanc.rest(f"/instances/{instance['ID']}/file")
        assert isinstance(file, bytes)
        stored[str(pydicom.dcmread(path).SOPInstanceUID)] = file
    return stored


def _comparable(file: bytes) -> tuple[str, bytes]:
    """A Part 10 file's transfer syntax and data set, inflated when deflated (a data set
    re-encoded in another syntax compares other, the deflated one by its syntax)."""
    data = dataset_bytes(file)
    return _syntax(file), zlib.decompress(data, -15) if _syntax(file) == DEFLATED else data


def _syntax(data: bytes) -> str:
    at = data.index(b"\x02\x00\x10\x00UI")
    length = int.from_bytes(data[at + 6 : at + 8], "little")
    return data[at + 8 : at + 8 + length].rstrip(b"\0 ").decode()


@pytest.mark.parametrize("method", ["get", "move"])
def test_every_instance_comes_in_the_syntax_the_source_holds_it_in(tmp_path, files, method):
    port = free_port()
    orthanc = Orthanc(tmp_path, {"vault": [OUR_AET, "127.0.0.1", port]})
    try:
        stored = _stored(orthanc, files)
        # Orthanc kept each as it came.
        assert len({_syntax(file) for file in stored.values()}) == len(files)
        served = {uid: _comparable(file) for uid, file in stored.items()}
        config = migrator_config(tmp_path / "dicomvault.toml", port, "ORTHANC", orthanc.dicom_port)
        cli = Cli(tmp_path / "archive", tmp_path)
        result = cli.run("migrate", "pacs", "pacs", "--method", method, "--config", config)
        assert "1 of 1 studies verified" in result.stdout, result.stdout
    finally:
        orthanc.stop()
    held = {uid: _comparable(data) for uid, data in data_sets_files(cli.root).items()}
    assert held == served


@pytest.mark.parametrize("method", ["get", "move"])
def test_from_a_dicomvault_serve_too(tmp_path, files, method):
    port = free_port()
    (tmp_path / "source").mkdir()
    source = Server(
        tmp_path / "source",
        {"vault": {"aet": OUR_AET, "host": "127.0.0.1", "port": port}},
        aet="SOURCE",
    )
    source.run("import", *files)
    served = {uid: _comparable(data) for uid, data in data_sets_files(source.root).items()}
    assert len(served) == len(files)
    source.start()
    try:
        config = migrator_config(tmp_path / "dicomvault.toml", port, "SOURCE", source.port)
        cli = Cli(tmp_path / "archive", tmp_path)
        result = cli.run("migrate", "pacs", "pacs", "--method", method, "--config", config)
        assert "1 of 1 studies verified" in result.stdout, result.stdout
    finally:
        assert source.stop() == 0
    held = {uid: _comparable(data) for uid, data in data_sets_files(cli.root).items()}
    assert held == served


def _relabelled(source: Path, out: Path, sop_class: str, study: str, syntax: str) -> Path:
    """``source`` as an instance of ``sop_class`` in a series of its own in ``study``,
    converted to ``syntax`` by DCMTK."""
    ds = pydicom.dcmread(source)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, generate_uid()
    if syntax == JPEG_2000_LOSSLESS:
        ds.compress(syntax)  # pylibjpeg-openjpeg: DCMTK has no JPEG 2000 encoder
        ds.save_as(out, enforce_file_format=True)
        return out
    native = out.with_suffix(".native.dcm")
    ds.save_as(native, enforce_file_format=True)
    dcmtk(*CONVERTERS[syntax], native, out)
    return out


def test_more_classes_than_proposed_in_each_syntax_come_as_held(tmp_path):
    """A study of 10 SOP Classes (a series each) in JPEG 2000 (which Orthanc cannot convert
    to the syntax a context of several took: it fails them, and gives up the C-GET) and 12
    one-instance studies of 12 classes in Implicit VR (which such a context does not take
    first), by C-GET on one association: every data set byte-identical to Orthanc's."""
    implicit = "1.2.840.10008.1.2"
    classes = list(STORAGE_SOP_CLASSES[3:15])
    assert len(classes) > MAX_CLASSES_IN_EACH_SYNTAX
    base = ct_corpus(tmp_path / "ct", 1, rows=64, columns=64)[0].path
    many = generate_uid()
    files = [
        _relabelled(base, tmp_path / f"many{n}.dcm", c, many, JPEG_2000_LOSSLESS)
        for n, c in enumerate(classes[:10])
    ]
    files += [
        _relabelled(base, tmp_path / f"alone{n}.dcm", c, generate_uid(), implicit)
        for n, c in enumerate(classes)
    ]
    port = free_port()
    orthanc = Orthanc(tmp_path, {"vault": [OUR_AET, "127.0.0.1", port]})
    try:
        stored = _stored(orthanc, files)
        assert {_syntax(file) for file in stored.values()} == {implicit, JPEG_2000_LOSSLESS}
        served = {uid: _comparable(file) for uid, file in stored.items()}
        config = migrator_config(tmp_path / "dicomvault.toml", port, "ORTHANC", orthanc.dicom_port)
        cli = Cli(tmp_path / "archive", tmp_path)
        result = cli.run(
            "migrate", "pacs", "pacs", "--method", "get", "--parallel", "1", "--config", config
        )
        assert "13 of 13 studies verified" in result.stdout, result.stdout
    finally:
        orthanc.stop()
    held = {uid: _comparable(data) for uid, data in data_sets_files(cli.root).items()}
    assert held == served


def _got(cli: Cli, out: Path | None) -> dict[str, tuple[str, bytes]]:
    """What `dicomvault get` brought: SOP Instance UID -> data set (inflated if deflated),
    from the archive or from the files it wrote into ``out``."""
    if out is None:
        return {uid: _comparable(data) for uid, data in data_sets_files(cli.root).items()}
    return {path.stem: _comparable(path.read_bytes()) for path in out.glob("*.dcm")}


@pytest.mark.parametrize("into", ["archive", "files"])
def test_dicomvault_get_keeps_each_instance_as_held(tmp_path, files, into):
    """The one-off `dicomvault get`, into the archive or into files (`--out`), lists the
    classes first too: one study in 7 syntaxes, and one of 10 classes in JPEG 2000, which
    Orthanc would fail on a context of several syntaxes and which are more classes than one
    C-GET proposes in each syntax (it asks for them by series)."""
    base = ct_corpus(tmp_path / "ct", 1, rows=64, columns=64)[0].path
    many = generate_uid()
    classes = STORAGE_SOP_CLASSES[3:13]
    wide = [
        _relabelled(base, tmp_path / f"many{n}.dcm", c, many, JPEG_2000_LOSSLESS)
        for n, c in enumerate(classes)
    ]
    orthanc = Orthanc(
        tmp_path, {}, options={"DicomAlwaysAllowFind": True, "DicomAlwaysAllowGet": True}
    )
    out = tmp_path / "out" if into == "files" else None
    try:
        stored = _stored(orthanc, [*files, *wide])
        served = {uid: _comparable(file) for uid, file in stored.items()}
        [study] = {pydicom.dcmread(path).StudyInstanceUID for path in files}
        config = migrator_config(
            tmp_path / "dicomvault.toml", free_port(), "ORTHANC", orthanc.dicom_port
        )
        cli = Cli(tmp_path / "archive", tmp_path)
        where = ["--out", str(out)] if out is not None else []
        for uid in (study, many):
            got = cli.run(
                "get", "pacs", "-k", f"StudyInstanceUID={uid}", *where, "--config", config
            )
            assert "0 failed" in got.stdout and "refused" not in got.stderr, got.stderr
    finally:
        orthanc.stop()
    assert _got(cli, out) == served


@pytest.mark.parametrize("accept", [False, True])
def test_private_sop_classes_by_c_move_when_accepted(tmp_path, accept):
    """A study holding an instance of a private SOP Class (a UID outside the standard's root,
    PS3.5 9.1), by C-MOVE: refused by default (as by Orthanc and storescp), the study
    reported as not complete; with `[dicom] accept_private_sop_classes`, stored as sent."""
    private = "1.2.826.0.1.3680043.8.498.1.99"
    base = ct_corpus(tmp_path / "ct", 1, rows=16, columns=16)[0].path
    study = generate_uid()
    files = [
        _relabelled(base, tmp_path / "private.dcm", private, study, "1.2.840.10008.1.2"),
        _relabelled(base, tmp_path / "ct.dcm", STORAGE_SOP_CLASSES[10], study, DEFLATED),
    ]
    port = free_port()
    orthanc = Orthanc(tmp_path, {"vault": [OUR_AET, "127.0.0.1", port]})
    try:
        served = {uid: _comparable(file) for uid, file in _stored(orthanc, files).items()}
        config = migrator_config(tmp_path / "dicomvault.toml", port, "ORTHANC", orthanc.dicom_port)
        if accept:
            text = config.read_text().replace(
                "[dicom]\n", "[dicom]\naccept_private_sop_classes = true\n"
            )
            config.write_text(text)
        cli = Cli(tmp_path / "archive", tmp_path)
        result = cli.run(
            "migrate",
            "pacs",
            "pacs",
            "--method",
            "move",
            "--retries",
            "0",
            "--config",
            config,
            check=False,
        )
    finally:
        orthanc.stop()
    held = {uid: _comparable(data) for uid, data in data_sets_files(cli.root).items()}
    if accept:
        assert result.returncode == 0 and "1 of 1 studies verified" in result.stdout
        assert held == served
    else:
        # Refused by our listener, Orthanc sends none: it says so as of an AE it does not
        # know, and the migration says what either can mean.
        assert result.returncode == 1 and "accept_private_sop_classes" in result.stderr
        assert pydicom.dcmread(files[0]).SOPInstanceUID not in held


def _video(out: Path, study: str, sop_class: str) -> Path:
    """An instance of a video class in MPEG-4 AVC/H.264 High Profile / Level 4.1, in a
    series of its own (its stream made up: nothing on the way decodes it)."""
    ds = pydicom.Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.102"
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, generate_uid()
    ds.PatientID, ds.PatientName, ds.Modality = "VIDEO", "Video^Patient", "ES"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 3, "YBR_PARTIAL_420"
    ds.Rows, ds.Columns, ds.NumberOfFrames = 64, 64, 2
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PlanarConfiguration = 0
    ds.PixelData = pydicom.encaps.encapsulate([bytes(range(256)) * 40])
    ds["PixelData"].VR = "OB"
    ds.save_as(out, enforce_file_format=True)
    return out


@pytest.mark.parametrize("how", ["migrate", "get --out"])
def test_a_video_comes_in_its_video_syntax(tmp_path, how):
    """A study of a CT in Implicit VR and an instance of each video class (Endoscopic,
    Microscopic, Photographic) in H.264: a video class is proposed in each video syntax too
    (which the other classes are not), so Orthanc sends a video as it holds it rather than
    failing it (it cannot convert it). The four classes so take more contexts than one
    association has: they come by series."""
    study = generate_uid()
    base = ct_corpus(tmp_path / "ct", 1, rows=16, columns=16)[0].path
    files = [
        _relabelled(base, tmp_path / "ct.dcm", STORAGE_SOP_CLASSES[10], study, "1.2.840.10008.1.2"),
        *(
            _video(tmp_path / f"video{n}.dcm", study, video)
            for n, video in enumerate(sorted(VIDEO_SOP_CLASSES))
        ),
    ]
    port = free_port()
    orthanc = Orthanc(
        tmp_path,
        {"vault": [OUR_AET, "127.0.0.1", port]},
        options={"DicomAlwaysAllowFind": True, "DicomAlwaysAllowGet": True},
    )
    try:
        served = {uid: _comparable(file) for uid, file in _stored(orthanc, files).items()}
        config = migrator_config(tmp_path / "dicomvault.toml", port, "ORTHANC", orthanc.dicom_port)
        cli = Cli(tmp_path / "archive", tmp_path)
        if how == "migrate":
            result = cli.run("migrate", "pacs", "pacs", "--method", "get", "--config", config)
            assert "1 of 1 studies verified" in result.stdout, result.stdout
            got = {uid: _comparable(data) for uid, data in data_sets_files(cli.root).items()}
        else:
            out = tmp_path / "out"
            keys = f"StudyInstanceUID={study}"
            cli.run("get", "pacs", "-k", keys, "--out", str(out), "--config", config)
            got = _got(cli, out)
    finally:
        orthanc.stop()
    assert got == served
