"""The web UI with users (Debian's Chromium through Playwright): log in, browse, log out; data
set values shown as text (a PatientName holding HTML markup is displayed, never executed); a
crafted SOPInstanceUID ("../studies/<another study>") cannot make the delete button delete
another study, every path segment being encoded (and such a UID refused at the edge)."""

from __future__ import annotations

import io
import re
import shutil
from collections.abc import Iterator

import pydicom
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright
from pydicom.data import get_testdata_file

from dicomvault.bench.corpus import clinical_corpus
from dicomvault.security.accounts import Role
from tests.security.helpers import PASSWORDS, Secured

# A Person Name's "=" separates its component groups: the markup that would run is elsewhere.
NAME = "<b>Bold</b>^<i>Italic</i>"
RUNS = '<img src=x onerror="window.pwned=1">'


def variant(**attributes: str) -> bytes:
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    for name, value in attributes.items():
        setattr(ds, name, value)
    out = io.BytesIO()
    ds.save_as(out)
    return out.getvalue()


@pytest.fixture(scope="module")
def secured(tmp_path_factory) -> Iterator[tuple[Secured, list]]:
    tmp = tmp_path_factory.mktemp("ui-login")
    srv = Secured(tmp).start()
    corpus = clinical_corpus(tmp / "corpus")
    srv.server.run("import", tmp / "corpus", "--quiet")
    yield srv, corpus
    assert srv.server.stop() == 0


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
    context = browser.new_context(viewport={"width": 1366, "height": 768})
    page = context.new_page()
    yield page
    context.close()


def log_in(page: Page, url: str, user: str, password: str) -> None:
    page.goto(f"{url}/ui/")  # sent to the login page first
    expect(page).to_have_url(f"{url}/auth/login?next=%2Fui%2F")
    page.get_by_label("User name").fill(user)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()


def logged_in(page: Page, url: str, user: str) -> None:
    log_in(page, url, user, PASSWORDS[user])
    expect(page).to_have_url(f"{url}/ui/")


def test_log_in_browse_log_out(secured, page):
    srv, corpus = secured
    log_in(page, srv.url, "reader", "wrong password")
    expect(page.get_by_role("alert")).to_have_text("Wrong user name or password.")
    page.get_by_label("Password").fill(PASSWORDS["reader"])
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(f"{srv.url}/ui/")
    expect(page.locator(".who .user")).to_have_text("reader (read)")
    page.get_by_label("Patient name").fill("doe")
    page.get_by_role("button", name="Search").click()
    doe = {g.study_instance_uid for g in corpus if g.patient_id == "P0005"}
    expect(page.locator("table.list tbody tr")).to_have_count(len(doe))
    page.get_by_role("row", name="CINE").click()
    expect(page.locator("h2")).to_have_text("CINE")
    expect(page.locator("table.tagtable tbody tr").first).to_be_visible()
    cookies = {c["name"]: c for c in page.context.cookies()}
    assert cookies["dicomvault_session"]["httpOnly"]
    assert cookies["dicomvault_session"]["sameSite"] == "Strict"
    # A reader's delete is refused by the server, whatever the page offers.
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Delete study").click()
    expect(page.locator("#toast")).to_have_text("admin role required")
    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(
        re.compile(re.escape(f"{srv.url}/auth/login?next=%2Fui%2F%23%2Fstudy"))
    )
    # The old cookie is worth nothing now.
    response = page.request.get(f"{srv.url}/statistics")
    assert response.status == 401


def test_markup_in_a_patient_name_is_shown_as_text(secured, page):
    srv, _ = secured
    data = variant(PatientName=NAME, PatientID="XSS1", StudyDescription=RUNS)
    assert srv.client(Role.WRITE).post("/instances", content=data).status_code == 200
    logged_in(page, srv.url, "reader")
    page.goto(f"{srv.url}/ui/#/patients?PatientID=XSS1")
    row = page.locator("table.list tbody tr")
    expect(row).to_have_count(1)
    expect(row.first).to_contain_text("<b>Bold</b>, <i>Italic</i>")
    row.first.click()
    expect(page.locator("h2")).to_have_text("<b>Bold</b>, <i>Italic</i>")
    page.locator("table.list tbody tr").first.click()  # the study
    expect(page.locator("h2")).to_have_text(RUNS)
    assert page.evaluate("() => window.pwned") is None
    assert page.locator("main img[src='x'], main b, main i").count() == 0
    # Besides: the Content Security Policy would not run an inline handler anyway.
    policy = page.request.get(f"{srv.url}/ui/").headers["content-security-policy"]
    assert "default-src 'self'" in policy and "unsafe-inline" not in policy.split("style-src")[0]


@pytest.mark.filterwarnings("ignore:.*VR UI:UserWarning")  # the crafted UID, on purpose
def test_a_crafted_uid_cannot_turn_the_delete_button_on_another_study(secured, page):
    srv, corpus = secured
    victim = corpus[0].study_instance_uid
    writer = srv.client(Role.WRITE)
    crafted = variant(
        SOPInstanceUID=f"../studies/{victim}",
        StudyInstanceUID="1.2.826.0.1.3680043.2.1143.14.1",
        SeriesInstanceUID="1.2.826.0.1.3680043.2.1143.14.2",
        PatientID="CRAFTED",
    )
    assert writer.post("/instances", content=crafted).status_code == 200
    # At the edge: a path parameter that is not a UID is refused.
    assert writer.get("/instances/1.2.3abc/tags").status_code == 400
    logged_in(page, srv.url, "boss")
    page.goto(f"{srv.url}/ui/#/study/1.2.826.0.1.3680043.2.1143.14.1")
    page.locator("ul[aria-label=Instances] li").first.click()
    page.once("dialog", lambda dialog: dialog.accept())
    with page.expect_request(lambda r: r.method == "DELETE") as deleting:
        page.get_by_role("button", name="Delete instance").click()
    assert deleting.value.url == f"{srv.url}/instances/..%2Fstudies%2F{victim}"
    expect(page.locator("#toast")).to_have_class("error")
    assert srv.client(Role.READ).get(f"/studies/{victim}").status_code == 200
