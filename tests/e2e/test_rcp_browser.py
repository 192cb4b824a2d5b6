"""One RCP through a real browser (Playwright + Debian Chromium): a coordinator creates a board
and a session, a physician submits a case, the coordinator schedules it, attendance reaches
quorum, the board decides, the chair signs, and the signed report CDA reaches the DSP simulator
(in-process, on a free port) through the outbox and the app's own delivery worker."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from konsil import appkeys as K
from konsil.audit.service import SYSTEM
from konsil.clock import FakeClock
from konsil.config import WorkflowConfig
from konsil.identity.matricule import make_matricule
from konsil.identity.service import NewPatient
from tests.conftest import AiohttpClient, Person
from workflow.cda.validation import validate_cda
from workflow.cda.xsd import schema_available
from workflow.simulators import dsp
from workflow.simulators.common import SimulatorSettings
from workflow.web.keys import OUTBOX, WORKER

pytestmark = pytest.mark.e2e


async def sign_in(browser: Any, base: str, person: Person) -> Any:
    context = await browser.new_context()
    page = await context.new_page()
    await page.goto(f"{base}/login")
    await page.fill("#username", person.username)
    await page.fill("#password", person.password)
    await page.click("button[type=submit]")
    await page.wait_for_url(f"{base}/")
    return page


@pytest.mark.skipif(
    not schema_available(), reason="CDA schema not found: set KONSIL_CDA_SCHEMA_DIR"
)
async def test_rcp_from_board_creation_to_the_dsp(
    aiohttp_client: AiohttpClient,
    aiohttp_server: Callable[..., Awaitable[TestServer]],
    make_app: Callable[..., web.Application],
    browser: Any,
    tmp_path: Path,
) -> None:
    sim = await aiohttp_server(dsp.create_app(SimulatorSettings(tmp_path / "dsp")))
    wf = WorkflowConfig(dsp_url=str(sim.make_url(dsp.ITI41_PATH)), worker_enabled=True)
    client = await aiohttp_client(make_app(workflow=wf))
    assert WORKER in client.app

    async def create_user(username: str, role: str = "practitioner", **kw: Any) -> Person:
        from konsil.identity.service import NewAccount

        pw = f"pw-{username}-0123456789"
        account = await client.app[K.IDENTITY].do_create_account(
            SYSTEM,
            NewAccount(
                username=username,
                password=pw,
                role=role,
                specialty=kw.get("specialty"),
                display_name=kw.get("display_name") or username.title(),
            ),
        )
        return Person(username, pw, account.id, role)

    host = await client.app[K.IDENTITY].do_create_organisation(
        SYSTEM, "Centre hospitalier de Luxembourg", "hospital"
    )
    base = str(client.make_url("")).rstrip("/")
    coord = await create_user("coord", "coordinator", display_name="Claire Coord")
    chair = await create_user("dr.surgeon", specialty="breast-surgery", display_name="Sam Surgeon")
    medonc = await create_user("dr.medonc", specialty="medical-oncology", display_name="Mia Onco")
    radonc = await create_user(
        "dr.radonc", specialty="radiation-oncology", display_name="Rui Radio"
    )
    gp = await create_user("dr.gp", specialty="general-practice", display_name="Gil Practice")
    matricule = make_matricule("19700101", 123)
    await client.app[K.IDENTITY].do_create_patient(
        SYSTEM, NewPatient(matricule, "Marie", "Muller", date(1970, 1, 1), "F")
    )

    # Coordinator: board, members, session
    cp = await sign_in(browser, base, coord)
    await cp.goto(f"{base}/rcp")
    await cp.fill("#f-name", "RCP Sein")
    await cp.select_option("#f-tumour_domain", "breast")
    await cp.select_option("#f-host_organisation_id", host.id)
    await cp.click("form[action='/rcp/boards'] button[type=submit]")
    await cp.wait_for_url(f"{base}/rcp/boards/*")
    board_url = cp.url.split("#")[0]
    board_id = board_url.rsplit("/", 1)[1]
    for who, is_chair in ((chair, True), (medonc, False), (radonc, False)):
        await cp.fill("#m-username", who.username)
        if is_chair:
            await cp.check("#m-chair")
        await cp.click("#member-form button[type=submit]")
        await cp.wait_for_load_state()
    assert "Sam Surgeon" in await cp.inner_text("#members")
    await cp.fill("#s-start", "2026-01-15T12:00")  # 11:00 UTC, two hours after the clock's now
    await cp.fill("#s-dl", "1")
    await cp.fill("#s-place", "Salle RCP")
    await cp.click("#session-form button[type=submit]")
    await cp.wait_for_url(f"{base}/rcp/sessions/*")
    session_url = cp.url

    # Referring physician: the fiche RCP (first with an error, then right)
    gpp = await sign_in(browser, base, gp)
    await gpp.goto(f"{base}/rcp/cases/new?board={board_id}")
    await gpp.fill("#f-patient", matricule)
    await gpp.fill("#f-question", "Traitement adjuvant ?")
    await gpp.fill("#f-icd10", "C99")
    await gpp.select_option("#f-origin", "primary")
    await gpp.fill("#f-ecog", "1")
    await gpp.check("#f-patient_informed")
    await gpp.click("#submit-case")
    assert "de C00 à C97" in await gpp.inner_text("#e-icd10")  # French first
    await gpp.fill("#f-icd10", "C50.4")
    await gpp.fill("#f-icdo_morphology", "8500/3")
    await gpp.fill("#f-diagnosis_label", "Tumeur maligne du sein, quadrant supéro-externe")
    await gpp.fill("#f-icdo_topography", "C50.4")
    await gpp.fill("#f-topography_label", "Quadrant supéro-externe du sein")
    await gpp.fill("#f-morphology_label", "Carcinome canalaire infiltrant")
    await gpp.fill("#f-history", "Nodule palpé en octobre, biopsie positive.")
    await gpp.select_option("#f-tnm_kind", "p")
    await gpp.fill("#f-tnm_t", "T2")
    await gpp.fill("#f-tnm_n", "N0")
    await gpp.fill("#f-tnm_m", "M0")
    await gpp.fill("#f-stage_group", "IIA")
    await gpp.fill("#f-tnm_edition", "8")
    await gpp.click("#submit-case")
    await gpp.wait_for_url(f"{base}/rcp/cases/*")
    case_url = gpp.url
    assert await gpp.inner_text("#case-state") == "SUBMITTED"

    # Coordinator schedules it, checks people in until quorum, records the decision
    await cp.goto(session_url)
    await cp.click("button.schedule-here")
    await cp.wait_for_load_state()
    assert "Muller" in await cp.inner_text("#agenda")
    # The meeting starts (the report may not be dated before it)
    clock = client.app[K.CLOCK]
    assert isinstance(clock, FakeClock)
    clock.advance(2 * 3600 + 15 * 60)  # 09:00 → 11:15 UTC, web sessions still valid
    await cp.click("#live-link")
    await cp.wait_for_url("**/live")
    assert await cp.inner_text("#quorum-state") == "Quorum non atteint"
    for who in (chair, medonc):
        await cp.click(f"button.checkin[data-username='{who.username}']")
        await cp.wait_for_load_state()
    assert "Radiothérapie" in await cp.inner_text("#quorum-detail")
    # The chair follows the live page; its quorum indicator updates by itself (server-sent events)
    chp = await sign_in(browser, base, chair)
    await chp.goto(cp.url)
    assert await chp.inner_text("#quorum-state") == "Quorum non atteint"
    await cp.click(f"button.checkin[data-username='{radonc.username}']")
    await cp.wait_for_load_state()
    assert await cp.inner_text("#quorum-state") == "Quorum atteint"
    from playwright.async_api import expect

    await expect(chp.locator("#quorum-state")).to_have_text("Quorum atteint", timeout=15000)
    assert "Rui Radio" in await chp.inner_text("#quorum-detail")
    await cp.click("a.decide-link")
    await cp.wait_for_url("**/decision")
    await cp.check("#p-surgery")
    await cp.check("#p-radiotherapy")
    await cp.check("#g-yes")
    await cp.fill("#f-conclusion", "Tumorectomie puis radiothérapie.")
    await cp.click("#decide")
    await cp.wait_for_url("**/report")
    assert await cp.inner_text("#case-state") == "REPORT_DRAFT"
    assert await cp.locator("#sign-form").count() == 0  # a coordinator does not sign

    # The chair signs with their password; the report is published through the seam
    await chp.goto(case_url + "/report")
    await chp.fill("#f-password", chair.password)
    await chp.click("#sign")
    await chp.wait_for_load_state()
    assert await chp.inner_text("#case-state") == "PUBLISHED", await chp.inner_text("main")
    assert "Sam Surgeon" in await chp.inner_text("#signed-by")
    assert (await chp.inner_text("#publication")).startswith("document/")

    # The app's own worker delivers the report to the DSP simulator
    msgs = [v.message for v in await client.app[OUTBOX].messages()]
    assert [m.target for m in msgs] == ["dsp"]
    for _ in range(50):
        if (await client.app[OUTBOX].message(msgs[0].id)).message.status == "delivered":
            break
        await client.app[WORKER].run_once()
    assert (await client.app[OUTBOX].message(msgs[0].id)).message.status == "delivered"
    stored = list((tmp_path / "dsp").glob("*/document.xml"))
    assert len(stored) == 1
    xml = stored[0].read_bytes()
    validate_cda(xml)
    assert b"DT-91001" in xml and matricule.encode() in xml and b"T2" in xml
    await chp.goto(case_url)
    assert await chp.inner_text("#publication-delivery") == "delivered"

    # The referring physician sees the outcome and the PPS
    await gpp.goto(f"{base}/rcp/my")
    assert "publié" in await gpp.inner_text("#my-cases")
    await gpp.goto(f"{base}/")
    assert "RCP : mes dossiers" in await gpp.inner_text("main")
    await gpp.goto(case_url + "/pps")
    assert "Tumorectomie puis radiothérapie." in await gpp.inner_text("main")

    got = await client.app[OUTBOX].message(msgs[0].id)
    assert got.message.document_id == (await chp.inner_text("#publication-document"))
