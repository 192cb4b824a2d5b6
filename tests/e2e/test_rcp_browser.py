"""One RCP through a real browser (Playwright + Debian Chromium): a coordinator creates a board
and a session, a physician submits a case, the coordinator schedules it, attendance reaches
quorum, the board decides, the chair signs, and the signed report reaches the publication seam
(the pending-publication queue the workflow adapter drains)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import date
from typing import Any

import pytest
from sqlalchemy import select

from konsil import appkeys as K
from konsil.audit.service import SYSTEM
from konsil.identity.matricule import make_matricule
from konsil.identity.service import NewPatient
from rcp.domain.report import RcpReportData
from rcp.models import PendingPublication
from tests.conftest import Client, Person

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


async def test_rcp_from_board_creation_to_signed_report(
    client: Client, create_user: Callable[..., Awaitable[Person]], browser: Any
) -> None:
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
    await cp.fill("#s-start", "2026-01-20T12:30")
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
    assert "C00 to C97" in await gpp.inner_text("#e-icd10")
    await gpp.fill("#f-icd10", "C50.4")
    await gpp.fill("#f-icdo_morphology", "8500/3")
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
    await cp.click("#live-link")
    await cp.wait_for_url("**/live")
    assert await cp.inner_text("#quorum-state") == "Quorum non atteint"
    for who in (chair, medonc):
        await cp.click(f"button.checkin[data-username='{who.username}']")
        await cp.wait_for_load_state()
    assert "Radiothérapie" in await cp.inner_text("#quorum-detail")
    # The chair follows the live page; its quorum indicator updates by itself (polling)
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
    await cp.fill("#d-conclusion", "Tumorectomie puis radiothérapie.")
    await cp.click("#decide")
    await cp.wait_for_url("**/report")
    assert await cp.inner_text("#case-state") == "REPORT_DRAFT"
    assert await cp.locator("#sign-form").count() == 0  # a coordinator does not sign

    # The chair signs with their password; the report is published through the seam
    await chp.goto(case_url + "/report")
    await chp.fill("#sign-password", chair.password)
    await chp.click("#sign")
    await chp.wait_for_load_state()
    assert await chp.inner_text("#case-state") == "PUBLISHED"
    assert "Sam Surgeon" in await chp.inner_text("#signed-by")
    assert (await chp.inner_text("#publication")).startswith("pending-publication/")

    # The referring physician sees the outcome and the PPS
    await gpp.goto(f"{base}/rcp/my")
    assert "publié" in await gpp.inner_text("#my-cases")
    await gpp.goto(f"{base}/")
    assert "RCP : mes dossiers" in await gpp.inner_text("main")
    await gpp.goto(case_url + "/pps")
    assert "Tumorectomie puis radiothérapie." in await gpp.inner_text("main")

    async with client.app[K.DB].session() as s:
        pending = (await s.execute(select(PendingPublication))).scalars().all()
    assert len(pending) == 1
    report = RcpReportData.from_json(pending[0].report)
    assert (
        report.legal_authenticator is not None and report.legal_authenticator.name == "Sam Surgeon"
    )
    assert {p.specialty for p in report.participants} == {
        "breast-surgery",
        "medical-oncology",
        "radiation-oncology",
    }
    assert report.tnm is not None and (report.tnm.t, report.tnm.stage_group) == ("T2", "IIA")
