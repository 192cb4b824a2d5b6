"""What the patient's room offers after the doctor changed a document issued after the call:
the corrected version's copy, and no copy at all of a document withdrawn as issued by mistake.
The documents go to real DSP and CNS simulators first (a correction waits for delivery)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer
from sqlalchemy import select

from konsil import appkeys as K
from konsil.audit.models import AuditEvent
from konsil.clock import FakeClock
from konsil.config import Config, WorkflowConfig
from tests.conftest import AiohttpClient, Client, Person
from tests.video.test_video import PRESCRIPTION_FORM, _consulted
from tests.workflow.helpers import deliver_all
from video.models import VideoDocument
from workflow.cda.reading import read_teleconsultation
from workflow.cda.xsd import schema_available
from workflow.corrections import teleconsultation_fields
from workflow.models import ClinicalDocument
from workflow.simulators import cns, dsp
from workflow.simulators.common import SimulatorSettings

pytestmark = pytest.mark.skipif(
    not schema_available(), reason="CDA schema not found: set KONSIL_CDA_SCHEMA_DIR"
)


@pytest.fixture
async def simulators(
    aiohttp_server: Callable[..., Awaitable[TestServer]], tmp_path: Path
) -> WorkflowConfig:
    cns_sim = await aiohttp_server(cns.create_app(SimulatorSettings(tmp_path / "cns")))
    dsp_sim = await aiohttp_server(dsp.create_app(SimulatorSettings(tmp_path / "dsp")))
    return WorkflowConfig(
        cns_url=str(cns_sim.make_url(cns.PATH)), dsp_url=str(dsp_sim.make_url(dsp.ITI41_PATH))
    )


@pytest.fixture
def config(config: Config, simulators: WorkflowConfig) -> Config:
    """The app delivers to the simulators."""
    return dataclasses.replace(config, workflow=simulators)


async def test_the_patient_gets_the_corrected_copy_and_not_a_withdrawn_one(
    client: Client, aiohttp_client: AiohttpClient, doctor: Person, clock: FakeClock
) -> None:
    a, patient, csrf = await _consulted(client, aiohttp_client, doctor, clock, 3)
    form = {
        "csrf_token": csrf,
        "reason": "Mal de gorge.",
        "findings": "Angine.",
        "plan": "Antalgique.",
        **PRESCRIPTION_FORM,
    }
    ok = await client.post(f"/video/appointments/{a}/after", data=form, allow_redirects=False)
    assert ok.status == 303, await ok.text()
    await deliver_all(client.app)
    async with client.app[K.DB].session() as s:
        issued = {v.kind: v for v in (await s.execute(select(VideoDocument))).scalars()}
        report = await s.get(ClinicalDocument, issued["report"].document_id)
        assert report is not None
    room = await (await patient.get(f"/video/room/{a}")).text()
    assert room.count('data-state="issued"') == 2
    first_copy = await (await patient.get(f"/video/documents/{a}/{issued['report'].id}")).read()

    # The doctor corrects the report and withdraws the prescription.
    fields = teleconsultation_fields(read_teleconsultation(report.content))
    fields["findings"] = "Angine érythémateuse, pas de fièvre."
    corrected = await client.post(
        f"/documents/{report.id}/correct", data={"csrf_token": csrf, **fields}
    )
    assert corrected.status == 200, await corrected.text()  # the new version's page
    rx_id = issued["prescription"].document_id
    withdrawn = await client.post(f"/documents/{rx_id}/entered-in-error", data={"csrf_token": csrf})
    assert withdrawn.status == 200, await withdrawn.text()
    await deliver_all(client.app)

    room = await (await patient.get(f"/video/room/{a}")).text()
    assert 'data-kind="report" data-state="corrected"' in room
    assert "corrigé par le médecin" in room
    assert 'data-kind="prescription" data-state="withdrawn"' in room
    assert f"/video/documents/{a}/{issued['prescription'].id}" not in room
    copy = await patient.get(f"/video/documents/{a}/{issued['report'].id}")
    assert copy.status == 200 and copy.content_type == "application/pdf"
    body = await copy.read()
    assert body.startswith(b"%PDF-") and body != first_copy
    refused = await patient.get(f"/video/documents/{a}/{issued['prescription'].id}")
    assert refused.status == 409

    async with client.app[K.DB].session() as s:
        events = (
            (
                await s.execute(
                    select(AuditEvent)
                    .where(AuditEvent.action == "video.document.download")
                    .order_by(AuditEvent.seq)
                )
            )
            .scalars()
            .all()
        )
    assert [(e.outcome, json.loads(e.details)["state"]) for e in events] == [
        ("success", "issued"),
        ("success", "corrected"),
        ("denied", "withdrawn"),
    ]
    # the doctor's page of the appointment says the same
    page = await (await client.get(f"/video/appointments/{a}")).text()
    assert 'data-state="corrected"' in page and 'data-state="withdrawn"' in page
