"""Retrieves never alter an image: every pydicom test file the archive accepts, fetched by
DCMTK's getscu once with each transfer syntax preference, and by WADO-RS in each native
syntax, is byte-identical whenever the syntax negotiated is the stored one, and otherwise has
the pixel data DCMTK's own converters (dcmconv, dcmdjpeg, dcmdrle, dcmdjpls) produce; what
cannot be made without changing pixels is not sent at all (PS3.4 C.4.3.3.1: the sub-operation
fails)."""

from __future__ import annotations

import shutil
import warnings
from functools import cache
from pathlib import Path

import httpx
import numpy
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import UID

from dicomvault.bench.peers import free_port
from dicomvault.testdata import readable_pydicom_test_files
from tests.http.test_dicomweb import multipart_parts, uids
from tests.net.conftest import Server, dcmtk
from tests.net.test_dcmtk_peers import dataset_bytes

QR = "WORKSTATION"
EXPLICIT_LE, IMPLICIT_LE = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2"
DEFLATED, EXPLICIT_BE = "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2"
NATIVE = (EXPLICIT_LE, IMPLICIT_LE, DEFLATED, EXPLICIT_BE)
JPEG_BASELINE, JPEG_EXTENDED = "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51"
J2K_LOSSLESS, J2K = "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
# What getscu's preference options make it propose first in every storage context (the
# archive takes the requestor's first choice). +xi proposes Explicit VR Little Endian only in
# DCMTK 3.6.7.
GETSCU_FIRST = {
    "+xe": EXPLICIT_LE,
    "+xi": EXPLICIT_LE,
    "+xb": EXPLICIT_BE,
    "+xd": DEFLATED,
    "+xy": "1.2.840.10008.1.2.4.50",
    "+xx": "1.2.840.10008.1.2.4.51",
    "+xs": JPEG_LOSSLESS_SV1,
    "+xv": "1.2.840.10008.1.2.4.90",
    "+xw": "1.2.840.10008.1.2.4.91",
    "+xt": "1.2.840.10008.1.2.4.80",
    "+xu": "1.2.840.10008.1.2.4.81",
    "+xr": "1.2.840.10008.1.2.5",
}
# Syntaxes made from any other without changing a pixel, with the encoder found independently
# of the archive that makes them: pydicom's, or DCMTK's dcmcjpeg for JPEG Lossless, which
# pydicom cannot encode (the lossy-capable JPEG 2000 and JPEG-LS syntaxes carry lossless code
# streams too).
JPEG_LS_LOSSLESS, RLE = "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.5"
LOSSLESS_ENCODER = {J2K_LOSSLESS: J2K_LOSSLESS, J2K: J2K_LOSSLESS, RLE: RLE}
LOSSLESS_ENCODER |= {JPEG_LS_LOSSLESS: JPEG_LS_LOSSLESS, "1.2.840.10008.1.2.4.81": JPEG_LS_LOSSLESS}
LOSSLESS_ENCODER |= {JPEG_LOSSLESS_SV1: "dcmcjpeg"}
# DCMTK's decoder for each encapsulated syntax (none for JPEG 2000: pydicom's is compared).
DECODER = {"1.2.840.10008.1.2.5": "dcmdrle", "1.2.840.10008.1.2.4.80": "dcmdjpls"}
DECODER |= {"1.2.840.10008.1.2.4.81": "dcmdjpls", JPEG_LOSSLESS_SV1: "dcmdjpeg"}
OUTPUT_OPTION = {EXPLICIT_LE: "+te", IMPLICIT_LE: "+ti", EXPLICIT_BE: "+tb", DEFLATED: "+td"}


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """A server holding every pydicom test file it accepts, with HTTP; the files as stored."""
    tmp = tmp_path_factory.mktemp("transcoding")
    files = tmp / "files"
    files.mkdir()
    # image_dfl.dcm's deflated stream ends with 8 bytes of a gzip trailer: sent as stored
    # (byte for byte), getscu +xd refuses it (0xC000) and ends its C-GET there.
    chosen = [p for p in readable_pydicom_test_files() if uids(p) and p.name != "image_dfl.dcm"]
    for i, path in enumerate(chosen):
        shutil.copy(path, files / f"{i:03}-{path.name}")
    http_port = free_port()
    server = Server(
        tmp,
        {QR: {"aet": QR, "host": "127.0.0.1", "port": 1}},
        sections={"http": {"enabled": True, "host": "127.0.0.1", "port": http_port}},
    )
    server.cli.run("import", files, check=False)  # the truncated ones are refused
    out = tmp / "stored"
    server.cli.run("export", "--out", out)
    stored = {
        pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in out.rglob("*.dcm")
    }
    server.start()
    yield server, stored, f"http://127.0.0.1:{http_port}/dicom-web"
    assert server.stop() == 0


def syntax_of(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)


def has_pixels(path: Path) -> bool:
    return "PixelData" in pydicom.dcmread(path, defer_size=64)


@cache
def dcmtk_native(path: Path, syntax: str, work: Path) -> pydicom.Dataset | None:
    """What DCMTK makes of the stored file in a native ``syntax``; None when DCMTK cannot
    read the file (some of pydicom's test files are malformed on purpose)."""
    stored = syntax_of(path)
    tool = "dcmconv" if stored in NATIVE else DECODER.get(stored, "dcmdjpeg")
    out = work / f"{tool}-{path.stem}-{syntax}.dcm"
    if dcmtk(tool, OUTPUT_OPTION[syntax], path, out, check=False).returncode != 0:
        return None
    return pydicom.dcmread(out)


def values(ds: pydicom.Dataset) -> dict[str, str]:
    """Every element's value, nested ones included, as text; not group lengths (retired,
    and some of pydicom's files have wrong ones, which DCMTK recomputes)."""
    return {
        f"{e.tag}@{i}": str(e.value)
        for i, e in enumerate(ds.iterall())
        if e.VR != "SQ" and e.tag.element != 0
    }


def assert_same_pixels(received: Path, stored: Path, work: Path) -> None:
    """The received file's pixels are those of the stored one: as DCMTK converts or decodes
    them; for an encapsulated file, as DCMTK (or for JPEG 2000, pydicom) decodes it; where
    DCMTK cannot read the stored file, as pydicom decodes both."""
    syntax = syntax_of(received)
    original = syntax_of(stored)
    if not has_pixels(stored):
        # An SR, a presentation state, a waveform: every value as DCMTK converts them; under
        # an encapsulated syntax encoded as Explicit VR Little Endian (PS3.5 A.4).
        native = syntax if syntax in NATIVE else EXPLICIT_LE
        expected = dcmtk_native(stored, native, work) or pydicom.dcmread(stored)
        got = pydicom.dcmread(received)
        assert values(got) == values(expected), (received.name, UID(syntax).name)
        return
    if syntax in NATIVE and original not in ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"):
        expected = dcmtk_native(stored, syntax, work)
        if expected is not None:
            got = pydicom.dcmread(received)
            assert got.PixelData == expected.PixelData, (received.name, UID(syntax).name)
            return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if syntax in DECODER:
            decoded = work / f"decoded-{received.name}"
            dcmtk(DECODER[syntax], received, decoded)
            got = pydicom.dcmread(decoded).pixel_array
        else:
            got = pydicom.dcmread(received).pixel_array
        if original == JPEG_EXTENDED:
            # DCMTK's own decoding: no decoder pydicom offers is IJG's 12-bit one.
            reference = dcmtk_native(stored, EXPLICIT_LE, work)
        else:
            reference = pydicom.dcmread(stored)
            if original == JPEG_BASELINE:
                # IJG libjpeg's output, as DCMTK's: libjpeg-turbo (Pillow) gives it to the bit.
                reference.pixel_array_options(decoding_plugin="pillow")
        assert reference is not None, stored.name
        expected = reference.pixel_array
    assert numpy.array_equal(got, expected), (received.name, UID(syntax).name)


@cache
def why_not_made(path: Path, target: str, work: Path) -> str | None:
    """Why an instance stored in ``path`` cannot be given in ``target`` without changing a
    pixel, found without the archive: by DCMTK's converters and decoders (pydicom's for JPEG
    2000, which DCMTK does not decode) and pydicom's lossless encoders; None when it can."""
    stored = syntax_of(path)
    if target == stored:
        return None
    pixels = has_pixels(path)
    if pixels and target in (JPEG_BASELINE, JPEG_EXTENDED):
        return "only a lossy encoder makes it"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if stored in (J2K_LOSSLESS, J2K):
            try:
                native = pydicom.dcmread(path)
                native.decompress()
            except Exception as e:  # pydicom's decoders raise many types
                return f"pydicom cannot decode it: {e}"
        else:
            decoded = dcmtk_native(path, EXPLICIT_LE, work)
            if decoded is None:
                return "DCMTK cannot read or decode it"
            native = decoded
        if not pixels or target in NATIVE:
            return None
        if target not in LOSSLESS_ENCODER:
            return "no lossless encoder makes it"
        encoder = LOSSLESS_ENCODER[target]
        if encoder == "dcmcjpeg":
            source, encoded = work / f"native-{path.name}", work / f"dcmcjpeg-{path.name}"
            native.save_as(source, enforce_file_format=True)
            made = dcmtk("dcmcjpeg", "+e1", source, encoded, check=False)
            return f"dcmcjpeg cannot: {made.stderr.strip()}" if made.returncode else None
        try:
            options = {"use_mct": False} if encoder == J2K_LOSSLESS else {}
            native.compress(encoder, generate_instance_uid=False, **options)
        except Exception as e:  # pydicom's encoders raise many types
            return f"pydicom's encoder cannot take it: {e}"
    return None


def test_getscu_with_every_preference_gets_the_stored_bytes_or_the_same_pixels(archive, tmp_path):
    server, stored, _ = archive
    syntaxes = {uid: syntax_of(p) for uid, p in stored.items()}
    for option, first in GETSCU_FIRST.items():
        out = tmp_path / option
        out.mkdir()
        logged_before = len(server.log)
        # One association per preference: every patient, hence every instance.
        dcmtk(
            "getscu", "-aet", QR, "-aec", server.aet, "-P", option, "+B", "-od", out,
            "-k", "QueryRetrieveLevel=PATIENT", "-k", "PatientID=", "127.0.0.1", server.port,
            check=False,
        )  # fmt: skip
        received = {
            pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in out.iterdir()
        }
        for uid, path in stored.items():
            syntax = syntaxes[uid]
            if syntax == first:
                assert dataset_bytes(received[uid]) == dataset_bytes(path), (option, uid)
            elif uid in received:
                assert syntax_of(received[uid]) == first, (option, uid)
                assert_same_pixels(received[uid], path, tmp_path)
            else:
                # PS3.4 C.4.3.3.1: a sub-operation that cannot be done fails (and is logged).
                assert why_not_made(path, first, tmp_path), (option, uid, UID(syntax).name)
                failed = f"sub-operation for {uid} failed"
                assert server.logged(failed, since=logged_before), (option, uid)
    assert "peer did not accept" in server.log


def test_getscu_prefer_lossless_gets_a_native_instance_in_jpeg_lossless_sv1(archive, tmp_path):
    """getscu +xs proposes JPEG Lossless SV1 first: a native CT comes in it, made by our own
    encoder, and DCMTK's dcmdjpeg gives back the stored pixel bytes."""
    server, stored, _ = archive
    ct = pydicom.dcmread(get_testdata_file("CT_small.dcm"), stop_before_pixels=True)
    dcmtk(
        "getscu", "-aet", QR, "-aec", server.aet, "-S", "-P", "+xs", "-od", tmp_path,
        "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={ct.StudyInstanceUID}",
        "127.0.0.1", server.port,
    )  # fmt: skip
    [received] = [
        p for p in tmp_path.iterdir() if pydicom.dcmread(p).SOPInstanceUID == ct.SOPInstanceUID
    ]
    assert syntax_of(received) == JPEG_LOSSLESS_SV1
    decoded = tmp_path / "decoded"
    dcmtk("dcmdjpeg", received, decoded)
    path = stored[ct.SOPInstanceUID]
    assert syntax_of(path) == EXPLICIT_LE
    assert pydicom.dcmread(decoded).PixelData == pydicom.dcmread(path).PixelData


@pytest.mark.parametrize("syntax", NATIVE)
def test_wado_rs_in_each_native_syntax_gets_the_stored_bytes_or_the_same_pixels(
    archive, tmp_path, syntax
):
    _, stored, url = archive
    accept = f'multipart/related; type="application/dicom"; transfer-syntax={syntax}'
    for uid, path in stored.items():
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        response = httpx.get(
            f"{url}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{uid}",
            headers={"Accept": accept},
            timeout=60,
        )
        if response.status_code == 406:
            assert has_pixels(path) and syntax_of(path) not in NATIVE, uid
            continue
        assert response.status_code == 200, (uid, response.text)
        [part] = multipart_parts(response)
        received = tmp_path / f"{uid}.dcm"
        received.write_bytes(part)
        if syntax_of(path) == syntax:
            assert part == path.read_bytes()
        else:
            assert syntax_of(received) == syntax
            assert_same_pixels(received, path, tmp_path)
