"""The web UI driven in headless Chromium (Debian's, through Playwright): search, open a study,
see its preview rendered and scroll its frames, upload a file, delete it."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright
from pydicom.data import get_testdata_file

from dicomvault.bench.corpus import clinical_corpus
from dicomvault.bench.peers import free_port
from tests.net.conftest import Server

# The variance of an <img>'s pixels, drawn onto a canvas: 0 for a blank image.
PIXEL_VARIANCE = """(img) => {
  const canvas = document.createElement("canvas");
  canvas.width = img.naturalWidth;
  canvas.height = img.naturalHeight;
  const context = canvas.getContext("2d");
  context.drawImage(img, 0, 0);
  const data = context.getImageData(0, 0, canvas.width, canvas.height).data;
  let n = 0, sum = 0, squares = 0;
  for (let i = 0; i < data.length; i += 4) {
    n += 1;
    sum += data[i];
    squares += data[i] * data[i];
  }
  const mean = sum / n;
  return squares / n - mean * mean;
}"""
# The preview is drawn once the study's page has rendered, which can be after its heading:
# until then there is no img to ask (a predicate that throws fails the wait at once).
PREVIEW_RENDERED = (
    "(img => img !== null && img.complete && img.naturalWidth > 0)"
    "(document.querySelector('img.preview'))"
)


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[tuple[Server, list, str]]:
    tmp = tmp_path_factory.mktemp("ui")
    http_port = free_port()
    server = Server(
        tmp, {}, sections={"http": {"enabled": True, "host": "127.0.0.1", "port": http_port}}
    ).start()
    corpus = clinical_corpus(tmp / "corpus")
    server.run("import", tmp / "corpus", "--quiet")
    yield server, corpus, f"http://127.0.0.1:{http_port}"
    assert server.stop() == 0


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=shutil.which("chromium"), args=["--no-sandbox"]
        )
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    # A laptop's screen. The UI's Content Security Policy forbids eval, which Playwright's
    # wait_for_function uses: the test's own scripts bypass it (the UI's do not need to).
    page = browser.new_page(viewport={"width": 1366, "height": 768}, bypass_csp=True)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    yield page
    page.close()
    assert not errors


def test_search_open_a_study_and_see_its_frames(served, page, tmp_path):
    _, corpus, url = served
    page.goto(url)  # redirected to /ui/
    page.get_by_label("Patient name").fill("doe")
    page.get_by_role("button", name="Search").click()
    rows = page.locator("table.list tbody tr")
    doe = {g.study_instance_uid for g in corpus if g.patient_id == "P0005"}
    expect(rows).to_have_count(len(doe))
    expect(page.locator(".count")).to_have_text(f"{len(doe)} studies")

    page.get_by_role("row", name="CINE").click()
    expect(page.locator("h2")).to_have_text("CINE")
    image = page.locator("img.preview")
    page.wait_for_function(PREVIEW_RENDERED)
    assert image.evaluate(PIXEL_VARIANCE) > 100
    expect(page.locator(".frame")).to_have_text("Frame 1 / 50")
    first = image.screenshot()
    # Frame scrolling: the mouse wheel over the image, then the slider.
    image.hover()
    page.mouse.wheel(0, 100)
    expect(page.locator(".frame")).to_have_text("Frame 2 / 50")
    page.get_by_label("Frame").fill("30")
    expect(page.locator(".frame")).to_have_text("Frame 30 / 50")
    expect(image).to_have_attribute("src", "/instances/" + _cine(corpus) + "/preview?frame=30")
    page.wait_for_function(PREVIEW_RENDERED)
    assert image.evaluate(PIXEL_VARIANCE) > 100
    assert image.screenshot() != first
    # The tags view, filtered.
    page.get_by_label("Filter tags").fill("PatientID")
    expect(page.locator("table.tagtable tbody tr")).to_have_count(1)
    expect(page.locator("table.tagtable tbody tr")).to_contain_text("P0005")
    page.screenshot(path=tmp_path / "study.png")


def _cine(corpus: list) -> str:
    return next(
        g.sop_instance_uid
        for g in corpus
        if g.number_of_frames == 50 and g.transfer_syntax == "1.2.840.10008.1.2.1"
    )


def test_upload_a_file_then_delete_it(served, page, tmp_path):
    server, _, url = served
    upload = Path(get_testdata_file("MR_small.dcm"))
    ds = pydicom.dcmread(upload)
    page.goto(f"{url}/ui/#/upload")
    page.set_input_files("input[type=file]", upload)
    expect(page.locator(".badge")).to_have_text("stored")
    page.get_by_role("link", name="open").click()
    expect(page.locator("h2")).to_have_text(ds.get("StudyDescription") or "(no description)")
    page.wait_for_function(PREVIEW_RENDERED)
    assert page.locator("img.preview").evaluate(PIXEL_VARIANCE) > 100
    rest = httpx.Client(base_url=url)
    assert rest.get(f"/instances/{ds.SOPInstanceUID}").status_code == 200

    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Delete study").click()
    expect(page.locator("#toast")).to_have_text("Deleted 1 instance (9.8 KB).")
    page.get_by_label("Patient name").fill(str(ds.PatientName).split("^")[0])
    page.get_by_role("button", name="Search").click()
    expect(page.locator(".empty")).to_have_text("Nothing found.")
    # Gone from the archive, not only from the page.
    assert rest.get(f"/instances/{ds.SOPInstanceUID}").status_code == 404
    assert server.run("lookup", str(ds.SOPInstanceUID), check=False).returncode == 1

    page.goto(f"{url}/ui/#/statistics")
    expect(page.locator(".card").first).to_contain_text("Patients")
    page.screenshot(path=tmp_path / "statistics.png")
