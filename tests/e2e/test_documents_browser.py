"""A doctor corrects a sick-leave certificate and a prescription in a real browser: from the
dashboard to the author's view, the correction form, and the replacement delivered to the CNS and
DSP simulators."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.conftest import AiohttpClient, Person
from tests.e2e.test_rcp_browser import sign_in
from tests.workflow.test_document_views import make_world
from workflow.cda.reading import read_prescription, read_sick_leave
from workflow.cda.xsd import schema_available

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not schema_available(), reason="CDA schema not found: set KONSIL_CDA_SCHEMA_DIR"
    ),
]


async def test_author_corrects_a_certificate_in_the_browser(
    make_app: Callable[..., web.Application],
    aiohttp_client: AiohttpClient,
    aiohttp_server: Callable[..., Awaitable[TestServer]],
    create_user: Callable[..., Awaitable[Person]],
    browser: Any,
    tmp_path: Path,
) -> None:
    world = await make_world(aiohttp_client, aiohttp_server, make_app, tmp_path)
    doctor = await create_user("dr.gp", display_name="Gil Practice")
    cert = await world.issue(doctor, world.anne)
    await world.deliver_all()
    base = str(world.client.make_url("")).rstrip("/")

    page = await sign_in(browser, base, doctor)
    await page.click("header nav a[href='/documents']")
    await page.wait_for_url(f"{base}/documents")
    row = page.locator(f"#doc-{cert.id}")
    assert "Anne Schmit" in await row.inner_text()
    assert "CNS: delivered" in await row.inner_text()
    await row.locator("a").click()
    await page.wait_for_url(f"{base}/documents/{cert.id}")
    await page.click("#correct")
    await page.wait_for_url(f"{base}/documents/{cert.id}/correct")
    assert await page.input_value("#f-end") == "2026-12-03"
    await page.fill("#f-end", "2026-11-20")
    await page.click("#correction button[type=submit]")
    assert await page.locator("#e-end").count() == 1  # the builder's own check, on the field
    # The alert's summary says it again, after the field's label, as a link that takes the
    # doctor to the field.
    link = page.locator("[role=alert] .error-summary a")
    assert await link.all_inner_texts() == ["Fin : l'incapacité se termine avant de commencer"]
    await link.click()
    assert await page.evaluate("document.querySelector(':target').id") == "f-end"
    assert await page.get_attribute("#f-end", "aria-describedby") == "e-end"
    await page.fill("#f-end", "2026-12-05")
    await page.click("#correction button[type=submit]")
    await page.wait_for_url(f"{base}/documents/*?corrected=1")
    new_id = page.url.split("/documents/")[1].split("?")[0]
    assert new_id != cert.id
    assert "v1 · amended" in await page.inner_text("main")

    await world.deliver_all()
    await page.reload()
    text = await page.inner_text("main")
    assert "CNS: delivered" in text and "DSP: delivered" in text
    new = await world.document(new_id)
    assert read_sick_leave(new.content).end.isoformat() == "2026-12-05"
    assert world.stored("cns")[new_id]["replaces"]["document_id"] == cert.id


async def test_author_corrects_a_prescription_in_the_browser(
    make_app: Callable[..., web.Application],
    aiohttp_client: AiohttpClient,
    aiohttp_server: Callable[..., Awaitable[TestServer]],
    create_user: Callable[..., Awaitable[Person]],
    browser: Any,
    tmp_path: Path,
) -> None:
    """Remove a line, add one in the blank row (a wrong ATC code first, refused on its row),
    and the DSP gets the new version replacing the old one."""
    world = await make_world(aiohttp_client, aiohttp_server, make_app, tmp_path)
    doctor = await create_user("dr.gp", display_name="Gil Practice")
    rx = await world.issue(doctor, world.jean, kind="prescription")
    await world.deliver_all()
    base = str(world.client.make_url("")).rstrip("/")

    page = await sign_in(browser, base, doctor)
    await page.goto(f"{base}/documents/{rx.id}")
    await page.click("#correct")
    await page.wait_for_url(f"{base}/documents/{rx.id}/correct")
    assert await page.input_value("#f-lines\\.0\\.medication\\.atc") == "N02BE01"
    await page.check("input[name='lines.0.remove']")
    row = "#line-2 "
    await page.fill(row + "[name='lines.2.medication.atc']", "B01AB5")
    await page.fill(row + "[name='lines.2.medication.name']", "Énoxaparine 4000 UI, seringue")
    await page.fill(row + "[name='lines.2.dose']", "0,4")
    await page.select_option(row + "[name='lines.2.dose_unit']", "mL")
    await page.select_option(row + "[name='lines.2.route']", "20066000")
    await page.fill(row + "[name='lines.2.times']", "1")
    await page.select_option(row + "[name='lines.2.period_unit']", "d")
    await page.fill(row + "[name='lines.2.duration_days']", "10")
    await page.fill(row + "[name='lines.2.quantity']", "10")
    await page.select_option(row + "[name='lines.2.quantity_unit']", "1")
    await page.check(row + "[name='lines.2.reimbursable']")
    await page.click("#correction button[type=submit]")
    error = page.locator("#e-lines\\.2\\.medication\\.atc")
    assert "ATC" in await error.inner_text()  # the builder's check, on the row it came from
    await page.fill("[name='lines.2.medication.atc']", "B01AB05")
    await page.click("#correction button[type=submit]")
    await page.wait_for_url(f"{base}/documents/*?corrected=1")
    new_id = page.url.split("/documents/")[1].split("?")[0]
    assert "v1 · amended" in await page.inner_text("main")

    await world.deliver_all()
    new = await world.document(new_id)
    lines = read_prescription(new.content).lines
    assert [(x.medication.atc, x.dose) for x in lines] == [
        ("J01CA04", Decimal(1)),
        ("B01AB05", Decimal("0.4")),
    ]
    entry = next(m for m in world.stored("dsp").values() if m["entry_uuid"].endswith(new_id[-12:]))
    assert entry["replaces_entry_uuid"] is not None
