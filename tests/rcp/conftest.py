"""An RCP board with its people, a session and a patient, driven through the JSON API with
bearer tokens (as a hospital record system would)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import pytest

from konsil import appkeys as K
from konsil.audit.service import SYSTEM
from konsil.clock import FakeClock
from konsil.identity.matricule import make_matricule
from konsil.identity.service import NewPatient
from tests.conftest import Client, Person


@dataclass
class User:
    person: Person
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    @property
    def id(self) -> str:
        return self.person.account_id


@dataclass
class World:
    client: Client
    coordinator: User
    chair: User  # a surgeon
    medonc: User
    radonc: User
    radiologist: User
    referrer: User
    outsider: User
    board_id: str
    session_id: str
    patient_id: str
    matricule: str

    async def call(
        self, user: User, method: str, path: str, body: Any = None, status: int = 200
    ) -> Any:
        resp = await self.client.request(
            method, "/api/v1/rcp" + path, json=body, headers=user.headers
        )
        data = await resp.json() if resp.content_type.endswith("json") else await resp.text()
        assert resp.status == status, data
        return data

    async def new_case(self, *, submit: bool = True, **fiche: Any) -> dict[str, Any]:
        body = {
            "board_id": self.board_id,
            "matricule": self.matricule,
            "submit": submit,
            "fiche": {**GOOD_FICHE, **fiche},
        }
        case: dict[str, Any] = await self.call(self.referrer, "POST", "/cases", body, 201)
        return case

    async def scheduled_case(self) -> dict[str, Any]:
        case = await self.new_case()
        return dict(
            await self.call(
                self.coordinator,
                "POST",
                f"/cases/{case['id']}/transitions",
                {"action": "schedule", "session_id": self.session_id},
            )
        )

    async def check_in(self, *users: User) -> dict[str, Any]:
        """Attendance is taken at the meeting: the clock moves to the session (2026-01-20 12:30
        Luxembourg), so a report signed afterwards is not dated before its meeting."""
        clock = self.client.app[K.CLOCK]
        assert isinstance(clock, FakeClock)
        if clock.now() < MEETING:
            clock.advance((MEETING - clock.now()).total_seconds())
        q: dict[str, Any] = {}
        for u in users:
            q = await self.call(
                self.coordinator,
                "POST",
                f"/sessions/{self.session_id}/attendance",
                {"account_id": u.id, "present": True},
            )
        return q


MEETING = datetime(2026, 1, 20, 11, 45, tzinfo=UTC)  # the session's start + 15 min, UTC

GOOD_FICHE: dict[str, Any] = {
    "question": "Adjuvant treatment after lumpectomy?",
    "icd10": "C50.4",
    "icdo_topography": "C50.4",
    "icdo_morphology": "8500/3",
    "origin": "primary",
    "laterality": "left",
    "tnm_kind": "p",
    "tnm_t": "T2",
    "tnm_n": "N1a",
    "tnm_m": "M0",
    "stage_group": "IIB",
    "tnm_edition": 8,
    "ecog": 1,
    "history": "No relevant history",
    "patient_informed": True,
    "presentation": "first-presentation",
    "diagnosis_label": "Carcinome canalaire infiltrant du sein gauche",
    "topography_label": "Quadrant supéro-externe du sein",
    "morphology_label": "Carcinome canalaire infiltrant",
}

DECISION: dict[str, Any] = {
    "proposal": [{"kind": "chemotherapy", "detail": "4 cycles"}, {"kind": "radiotherapy"}],
    "guideline_conform": True,
    "trial_proposed": True,
    "trial_name": "ADJUVANT-BC",
    "trial_id": "NCT05012345",
    "guideline": "INCa 2024 — cancer du sein",
    "conclusion": "Adjuvant chemotherapy then radiotherapy.",
}


@pytest.fixture
async def world(client: Client, create_user: Callable[..., Awaitable[Person]]) -> World:
    async def user(name: str, role: str = "practitioner", specialty: str | None = None) -> User:
        display = " ".join(part.title() for part in name.replace(".", " ").split())
        person = await create_user(name, role, specialty=specialty, display_name=display)
        async with client.app[K.DB].transaction() as s:
            token = await client.app[K.AUTH].do_create_api_token(s, person.account_id, "test")
        return User(person, token)

    coord = await user("coord", "coordinator")
    chair = await user("dr.surgeon", specialty="breast-surgery")
    medonc = await user("dr.medonc", specialty="medical-oncology")
    radonc = await user("dr.radonc", specialty="radiation-oncology")
    radiologist = await user("dr.radio", specialty="radiology")
    referrer = await user("dr.gp", specialty="general-practice")
    outsider = await user("dr.other", specialty="medical-oncology")
    matricule = make_matricule("19700101", 123)
    patient = await client.app[K.IDENTITY].do_create_patient(
        SYSTEM, NewPatient(matricule, "Marie", "Muller", date(1970, 1, 1), "F")
    )
    w = World(
        client,
        coord,
        chair,
        medonc,
        radonc,
        radiologist,
        referrer,
        outsider,
        "",
        "",
        patient.id,
        matricule,
    )
    host = await client.app[K.IDENTITY].do_create_organisation(
        SYSTEM, "Centre hospitalier de Luxembourg", "hospital"
    )
    board = await w.call(
        coord,
        "POST",
        "/boards",
        {"name": "RCP Sein", "tumour_domain": "breast", "host_organisation_id": host.id},
        201,
    )
    w.board_id = board["id"]
    for u, chair_flag in ((chair, True), (medonc, False), (radonc, False), (radiologist, False)):
        await w.call(
            coord,
            "POST",
            f"/boards/{w.board_id}/members",
            {"username": u.person.username, "chair": chair_flag},
        )
    sess = await w.call(
        coord,
        "POST",
        f"/boards/{w.board_id}/sessions",
        {
            "starts_at": "2026-01-20T12:30",
            "duration_minutes": 90,
            "capacity": 10,
            "deadline_hours": 48,
            "place": "Salle RCP",
        },
        201,
    )
    w.session_id = sess["id"]
    return w
