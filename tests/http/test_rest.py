"""The REST API, /metrics and /openapi.json against `dicomvault serve` with [http] enabled and
Orthanc as the configured modality: lists and lookups equal the CLI's, ZIPs and files equal
`export`, uploads come back over C-GET and go with delete, send/query/move reach Orthanc, bad
requests get a 4xx that leaves the archive as it was."""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from openapi_spec_validator import validate
from PIL import Image
from pydicom.data import get_testdata_file

from dicomvault.bench.corpus import clinical_corpus
from dicomvault.bench.peers import free_port
from tests.net.conftest import Orthanc, Server, storescu
from tests.net.test_dcmtk_peers import QR, getscu


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rest")
    http_port, orthanc_port = free_port(), free_port()
    server = Server(
        tmp,
        {
            "ORTHANC": {"aet": "ORTHANC", "host": "127.0.0.1", "port": orthanc_port},
            "WORKSTATION": {"aet": QR, "host": "127.0.0.1", "port": 1},
        },
        sections={"http": {"enabled": True, "host": "127.0.0.1", "port": http_port}},
    )
    orthanc = Orthanc(
        tmp, {"dicomvault": ["DICOMVAULT", "127.0.0.1", server.port]}, dicom_port=orthanc_port
    )
    server.start()
    corpus = clinical_corpus(tmp / "corpus")
    server.run("import", tmp / "corpus", "--quiet")
    client = httpx.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=120)
    yield server, orthanc, corpus, client
    client.close()
    orthanc.stop()
    assert server.stop() == 0


def cli_json(server: Server, *args: str) -> object:
    return json.loads(server.run(*args, "--json").stdout)


def without_patient(records: list[dict]) -> list[dict]:
    """REST study records also carry their patient's tags, which ``ls`` does not print."""
    return [{k: v for k, v in r.items() if k != "patient"} for r in records]


@pytest.mark.parametrize(
    ("level", "filters"),
    [
        ("patients", {}),
        ("patients", {"PatientName": "smith*"}),
        ("studies", {"PatientName": "smith*"}),
        ("studies", {"StudyDate": "20150101-20191231", "ModalitiesInStudy": "CT"}),
        ("series", {"Modality": "MR"}),
        ("instances", {"(0010,0020)": "P0005"}),
    ],
)
def test_lists_equal_dicomvault_ls(served, level, filters):
    server, _, _, client = served
    response = client.get(f"/{level}", params=filters)
    assert response.status_code == 200, response.text
    argv = [arg for k, v in filters.items() for arg in ("-k", f"{k}={v}")]
    expected = cli_json(server, "ls", level, *argv)
    assert without_patient(response.json()) == expected
    assert expected or not filters
    paged = client.get(f"/{level}", params={**filters, "limit": 2, "offset": 1}).json()
    assert without_patient(paged) == expected[1:3]


def test_lookup_and_statistics_equal_the_cli(served):
    server, _, corpus, client = served
    for value in ("12345", "ACC1002", corpus[0].study_instance_uid, corpus[0].sop_instance_uid):
        assert client.get("/tools/lookup", params={"value": value}).json() == cli_json(
            server, "lookup", value
        )
        assert client.post("/tools/lookup", content=value).json() == cli_json(
            server, "lookup", value
        )
    assert client.get("/tools/lookup", params={"value": "nothing"}).json() == []
    assert client.get("/statistics").json() == cli_json(server, "stats")


def test_resources_name_their_children(served):
    _, _, corpus, client = served
    study = corpus[0].study_instance_uid
    record = client.get(f"/studies/{study}").json()
    series = client.get(f"/studies/{study}/series").json()
    assert record["children"] == [s["key"] for s in series]
    assert record["patient"]["PatientID"] == "12345"
    expected = {g.sop_instance_uid for g in corpus if g.study_instance_uid == study}
    assert {i["key"] for i in client.get(f"/studies/{study}/instances").json()} == expected
    # PatientID 12345 is two patients (two issuers): the issuer picks one.
    ambiguous = client.get("/patients/12345")
    assert ambiguous.status_code == 409
    assert "IssuerOfPatientID" in ambiguous.json()["error"]
    patient = client.get("/patients/12345", params={"IssuerOfPatientID": "HOSPITAL_B"}).json()
    assert patient["tags"]["PatientName"] == "Smith^Jane"
    studies = client.get(
        "/patients/12345/studies", params={"IssuerOfPatientID": "HOSPITAL_B"}
    ).json()
    assert [s["key"] for s in studies] == patient["children"]
    instance = client.get(f"/instances/{corpus[0].sop_instance_uid}").json()
    assert instance["parent"] == corpus[0].series_instance_uid
    assert "children" not in instance


def test_zip_and_file_downloads_are_the_exported_files(served, tmp_path):
    server, _, corpus, client = served
    out = tmp_path / "export"
    server.run("export", "P0005", "--out", out)
    exported = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*.dcm")}
    with client.stream("GET", "/patients/P0005/archive") as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/zip"
        assert "content-length" not in response.headers  # streamed, not built whole
        body = b"".join(response.iter_bytes())
    with zipfile.ZipFile(io.BytesIO(body)) as zf:
        assert zf.testzip() is None
        assert {n: zf.read(n) for n in zf.namelist()} == exported
    g = next(c for c in corpus if c.patient_id == "P0005")
    study = client.get(f"/studies/{g.study_instance_uid}/archive")
    with zipfile.ZipFile(io.BytesIO(study.content)) as zf:
        assert {n: zf.read(n) for n in zf.namelist()} == {
            k: v for k, v in exported.items() if k.startswith(g.study_instance_uid)
        }
    file = client.get(f"/instances/{g.sop_instance_uid}/file")
    assert file.headers["content-type"] == "application/dicom"
    assert file.content == g.path.read_bytes()


def test_tags_and_preview(served):
    _, _, corpus, client = served
    g = next(c for c in corpus if c.number_of_frames == 50)
    tags = client.get(f"/instances/{g.sop_instance_uid}/tags").json()
    by_keyword = {t["keyword"]: t for t in tags}
    assert by_keyword["TransferSyntaxUID"]["value"] == g.transfer_syntax
    assert by_keyword["PatientID"] == {
        "tag": "0010,0020",
        "keyword": "PatientID",
        "vr": "LO",
        "value": "P0005",
    }
    assert by_keyword["PixelData"]["value"].endswith(" bytes>")
    frames = []
    for frame in (1, 50):
        response = client.get(f"/instances/{g.sop_instance_uid}/preview", params={"frame": frame})
        assert response.status_code == 200
        assert response.headers["content-type"] == "image/png"
        pixels = np.asarray(Image.open(io.BytesIO(response.content)))
        assert pixels.shape == (32, 32)
        assert pixels.std() > 10  # an image, not a blank
        frames.append(pixels)
    assert not np.array_equal(*frames)
    preview = f"/instances/{g.sop_instance_uid}/preview"
    assert client.get(preview, params={"frame": 51}).status_code == 404
    assert client.get(preview, params={"frame": "first"}).status_code == 400


def test_upload_is_retrieved_by_c_get_and_delete_removes_it(served, tmp_path):
    server, _, _, client = served
    mr, ct = Path(get_testdata_file("MR_small.dcm")), Path(get_testdata_file("CT_small.dcm"))
    raw = client.post(
        "/instances", content=mr.read_bytes(), headers={"Content-Type": "application/dicom"}
    )
    assert raw.status_code == 200, raw.text
    [stored] = raw.json()["results"]
    mr_uid = str(pydicom.dcmread(mr).SOPInstanceUID)
    assert stored == {"name": "body", "status": "stored", "SOPInstanceUID": mr_uid} | {
        "size": mr.stat().st_size
    }
    form = client.post(
        "/instances",
        files=[
            ("files", ("CT_small.dcm", ct.read_bytes())),
            ("files", ("again.dcm", mr.read_bytes())),
            ("files", ("notes.txt", b"not an image")),
        ],
    )
    assert form.status_code == 200, form.text
    assert [r["status"] for r in form.json()["results"]] == ["stored", "duplicate", "not-dicom"]
    study = str(pydicom.dcmread(mr).StudyInstanceUID)
    received = getscu(server, tmp_path / "get", QueryRetrieveLevel="STUDY", StudyInstanceUID=study)
    assert set(received) == {mr_uid}
    assert client.get(f"/instances/{mr_uid}/file").content == mr.read_bytes()
    before = client.get("/statistics").json()
    deleted = client.delete(f"/studies/{study}")
    assert deleted.json() == {"deleted": 1, "size": mr.stat().st_size}
    assert client.get(f"/instances/{mr_uid}").status_code == 404
    assert client.get(f"/studies/{study}").status_code == 404
    assert server.run("lookup", mr_uid, check=False).returncode == 1
    assert client.get("/statistics").json()["instances"] == before["instances"] - 1


def test_bad_requests_get_4xx_and_leave_the_archive_unchanged(served):
    server, _, corpus, client = served
    before = client.get("/statistics").json()
    garbage = client.post("/instances", content=b"\x00" * 1000 + b"garbage")
    assert garbage.status_code == 400
    assert "not DICOM" in garbage.json()["error"]
    assert client.post("/instances", content=b"").status_code == 400
    junk_form = client.post("/instances", files=[("files", ("x.bin", b"junk"))])
    assert junk_form.status_code == 400
    broken_form = client.post(
        "/instances",
        content=b"--b\r\nContent-Disposition: form-data; name=files; filename=x\r\n\r\nabc",
        headers={"Content-Type": "multipart/form-data; boundary=b"},
    )
    assert broken_form.status_code == 400
    for path in ("/patients/NOBODY", "/studies/1.2.3", "/series/1.2.3", "/instances/1.2.3"):
        assert client.get(path).status_code == 404, path
        assert client.delete(path).status_code == 404, path
        assert "error" in client.get(path).json()
    assert client.get("/studies/1.2.3/archive").status_code == 404
    assert client.get("/instances/1.2.3/preview").status_code == 404
    assert client.get("/studies", params={"NoSuchKeyword": "x"}).status_code == 400
    assert client.get("/studies", params={"limit": "-1"}).status_code == 400
    assert client.get("/studies", params={"offset": "many"}).status_code == 400
    assert client.get("/tools/lookup").status_code == 400
    assert client.post("/modalities/NOWHERE/echo").status_code == 404
    assert client.post("/modalities/NOWHERE/store", json=["1.2.3"]).status_code == 404
    assert client.post("/modalities/ORTHANC/store", json=["1.2.3"]).status_code == 404
    assert client.post("/modalities/ORTHANC/store", json={"Resources": []}).status_code == 400
    assert client.post("/modalities/ORTHANC/query", content=b"{not json").status_code == 400
    assert client.post("/modalities/ORTHANC/query", json={"Level": "FRAME"}).status_code == 400
    bad_key = client.post("/modalities/ORTHANC/query", json={"Query": {"Nonsense": "1"}})
    assert bad_key.status_code == 400
    assert client.post("/modalities/ORTHANC/move", json=[1, 2]).status_code == 400
    assert client.put("/studies").status_code == 405
    assert client.get("/no/such/route").json() == {"error": "Not Found"}
    # What another site's page would make a browser send: refused before anything is done.
    foreign = {"Origin": "http://elsewhere.example"}
    cross_site = client.post("/instances", content=corpus[0].path.read_bytes(), headers=foreign)
    assert cross_site.status_code == 403
    doomed = f"/instances/{corpus[0].sop_instance_uid}"
    assert client.delete(doomed, headers=foreign).status_code == 403
    assert client.get(doomed, headers=foreign).status_code == 200
    same_site = {"Origin": str(client.base_url).rstrip("/")}
    assert client.post("/tools/lookup", content="12345", headers=same_site).status_code == 200
    # Every refusal happened before the store or the index was touched.
    assert client.get("/statistics").json() == before
    assert server.alive
    assert client.get(f"/instances/{corpus[0].sop_instance_uid}").status_code == 200


def orthanc_sop_uids(orthanc: Orthanc) -> set[str]:
    return {i["MainDicomTags"]["SOPInstanceUID"] for i in orthanc.rest("/instances?expand")}


def test_send_query_and_move_with_orthanc(served):
    server, orthanc, corpus, client = served
    assert client.get("/modalities").json()[0]["aet"] == "ORTHANC"
    assert client.post("/modalities/ORTHANC/echo").json() == {
        "ok": True,
        "status": "0x0000 Success",
    }
    study = next(g for g in corpus if g.patient_id == "JP001").study_instance_uid
    expected = {g.sop_instance_uid for g in corpus if g.study_instance_uid == study}
    sent = client.post("/modalities/ORTHANC/store", json={"Resources": [study]})
    assert sent.json() == {"sent": len(expected), "instances": len(expected), "failed": []}
    assert expected <= orthanc_sop_uids(orthanc)

    query = {"Level": "STUDY", "Query": {"PatientID": "JP001", "StudyInstanceUID": ""}}
    answers = client.post("/modalities/ORTHANC/query", json=query)
    assert answers.status_code == 200, answers.text
    found = cli_json(server, "find", "ORTHANC", "-k", "PatientID=JP001", "-k", "StudyInstanceUID")
    assert answers.json() == found
    assert [pydicom.Dataset.from_json(a).StudyInstanceUID for a in answers.json()] == [study]

    # A study only Orthanc has comes back to the archive by C-MOVE.
    ct = Path(get_testdata_file("CT_small.dcm"))
    theirs = pydicom.dcmread(ct)
    client.delete(f"/studies/{theirs.StudyInstanceUID}")
    orthanc.rest("/instances", ct.read_bytes())
    assert client.get(f"/instances/{theirs.SOPInstanceUID}").status_code == 404
    moved = client.post(
        "/modalities/ORTHANC/move",
        json={"Level": "STUDY", "Query": {"StudyInstanceUID": str(theirs.StudyInstanceUID)}},
    )
    assert moved.status_code == 200, moved.text
    assert moved.json()["completed"] == 1
    ours = pydicom.dcmread(
        io.BytesIO(client.get(f"/instances/{theirs.SOPInstanceUID}/file").content)
    )
    assert ours.PixelData == theirs.PixelData


def metric_values(text: str) -> dict[str, float]:
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def test_metrics_count_ingest_and_requests(served, tmp_path):
    server, _, corpus, client = served
    before = metric_values(client.get("/metrics").text)
    stored_key = 'dicomvault_ingested_instances_total{outcome="stored"}'
    duplicate_key = 'dicomvault_ingested_instances_total{outcome="duplicate"}'
    # C-STORE of a new instance and of one the archive has (from the CLI import).
    fresh = clinical_corpus(tmp_path / "fresh", seed=7)[0]
    storescu(server, [fresh.path, corpus[0].path])
    client.get(f"/studies/{corpus[0].study_instance_uid}")
    response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    after = metric_values(response.text)
    assert after[stored_key] == before.get(stored_key, 0) + 1
    assert after[duplicate_key] == before.get(duplicate_key, 0) + 1
    # As stored: with the File Meta the listener gives what it receives over C-STORE.
    size = client.get(f"/instances/{fresh.sop_instance_uid}").json()["size"]
    ingested = "dicomvault_ingested_bytes_total"
    assert after[ingested] - before.get(ingested, 0) == size
    stats = client.get("/statistics").json()
    assert after["dicomvault_instances"] == stats["instances"]
    assert after["dicomvault_pack_bytes"] == stats["pack_bytes"]
    route = 'method="GET",route="/studies/{StudyInstanceUID}"'
    assert after[f'dicomvault_http_requests_total{{{route},status="200"}}'] >= 1
    buckets = [
        v
        for k, v in after.items()
        if k.startswith(f"dicomvault_http_request_seconds_bucket{{{route},")
    ]
    assert buckets == sorted(buckets)
    assert buckets[-1] == after[f"dicomvault_http_request_seconds_count{{{route}}}"]
    assert after["dicomvault_commit_seconds_count"] > before.get(
        "dicomvault_commit_seconds_count", 0
    )
    names = re.findall(r"^# TYPE (\S+) (\S+)$", response.text, re.MULTILINE)
    assert ("dicomvault_http_request_seconds", "histogram") in names


def test_openapi_document_is_valid_and_lists_the_routes(served):
    _, _, _, client = served
    document = client.get("/openapi.json").json()
    validate(document)
    operations = {(m, p) for p, ops in document["paths"].items() for m in ops}
    for level, key in (
        ("patients", "PatientID"),
        ("studies", "StudyInstanceUID"),
        ("series", "SeriesInstanceUID"),
        ("instances", "SOPInstanceUID"),
    ):
        assert {("get", f"/{level}"), ("get", f"/{level}/{{{key}}}")} <= operations
        assert ("delete", f"/{level}/{{{key}}}") in operations
    assert {
        ("get", "/studies/{StudyInstanceUID}/archive"),
        ("post", "/instances"),
        ("get", "/instances/{SOPInstanceUID}/file"),
        ("get", "/instances/{SOPInstanceUID}/tags"),
        ("get", "/instances/{SOPInstanceUID}/preview"),
        ("post", "/tools/lookup"),
        ("get", "/statistics"),
        ("post", "/modalities/{name}/store"),
        ("post", "/modalities/{name}/query"),
        ("post", "/modalities/{name}/move"),
        ("get", "/metrics"),
        ("get", "/dicom-web/studies"),
        ("post", "/dicom-web/studies"),
    } <= operations
    assert all(op["summary"] for ops in document["paths"].values() for op in ops.values())
