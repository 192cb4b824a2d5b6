"""RCP demo data for ``konsil demo``: a digestive-oncology board of the demo hospital whose members
cover the quorum specialties, a weekly session (Tuesdays 12:30), and two cases referred by the
demo general practitioner — one scheduled on the next session, one waiting to be scheduled.

Idempotent: nothing is done once the board exists (or when the demo accounts are missing). It
goes through ``RcpService`` like a coordinator and a physician would, so everything is audited.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from sqlalchemy import select

from konsil import appkeys as K
from konsil.auth.service import Principal
from konsil.identity.matricule import make_matricule
from konsil.identity.models import Account
from rcp.models import Board
from rcp.web.keys import RCP

BOARD = "RCP Digestif — Centre Hospitalier Demo"
COORDINATOR = "coordinatrice"
MEMBERS = (  # username, chair
    ("dr.muller", True),  # surgery
    ("dr.schmit", False),  # medical oncology
    ("dr.hoffmann", False),  # radiation oncology
    ("dr.klein", False),  # pathology
)
REFERRER = "dr.weber"

COLON: dict[str, Any] = {
    "question": "Chimiothérapie adjuvante après colectomie ?",
    "icd10": "C18.7",
    "diagnosis_label": "Adénocarcinome du côlon sigmoïde",
    "icdo_topography": "C18.7",
    "topography_label": "Côlon sigmoïde",
    "icdo_morphology": "8140/3",
    "morphology_label": "Adénocarcinome",
    "origin": "primary",
    "laterality": "not-applicable",
    "tnm_kind": "p",
    "tnm_t": "T3",
    "tnm_n": "N1b",
    "tnm_m": "M0",
    "stage_group": "IIIB",
    "tnm_edition": 8,
    "ecog": 0,
    "history": "Colectomie sigmoïdienne il y a trois semaines, suites simples.",
    "exams": "Scanner thoraco-abdomino-pelvien sans lésion secondaire ; ACE normal.",
    "patient_informed": True,
    "presentation": "first-presentation",
}
RECTUM: dict[str, Any] = {
    "question": "Radiochimiothérapie néoadjuvante ou traitement néoadjuvant total ?",
    "icd10": "C20",
    "diagnosis_label": "Adénocarcinome du bas rectum",
    "icdo_topography": "C20.9",
    "topography_label": "Rectum",
    "icdo_morphology": "8140/3",
    "morphology_label": "Adénocarcinome",
    "origin": "primary",
    "laterality": "not-applicable",
    "tnm_kind": "c",
    "tnm_t": "T3",
    "tnm_n": "N1",
    "tnm_m": "M0",
    "stage_group": "III",
    "tnm_edition": 8,
    "ecog": 1,
    "history": "Rectorragies depuis deux mois ; coloscopie avec biopsies positives.",
    "exams": "IRM pelvienne : tumeur à 5 cm de la marge anale, fascia respecté.",
    "patient_informed": True,
    "presentation": "first-presentation",
}
CASES = (  # (birth date, sequence) of a demo patient, fiche, schedule on the next session
    ("19650312", 1, COLON, True),
    ("19900507", 3, RECTUM, False),
)


async def seed(app: web.Application) -> bool:
    """Create the demo board, its schedule and cases once; True when something was created."""
    db, rcp = app[K.DB], app[RCP]
    async with db.session() as s:
        if (await s.execute(select(Board.id).where(Board.name == BOARD))).first() is not None:
            return False
        wanted = {COORDINATOR, REFERRER, *(u for u, _ in MEMBERS)}
        accounts = {
            a.username: a
            for a in (await s.execute(select(Account).where(Account.username.in_(wanted))))
            .scalars()
            .all()
        }
    if set(accounts) != wanted:
        return False
    coord = Principal.of(accounts[COORDINATOR])
    gp = Principal.of(accounts[REFERRER])
    board = await rcp.do_create_board(coord, BOARD, "digestive", coord.organisation_id)
    for username, chair in MEMBERS:
        await rcp.do_add_member(coord, board.id, username, chair=chair)
    sessions = await rcp.do_add_schedule(
        coord,
        board.id,
        weekday=1,
        start="12:30",
        duration_minutes=90,
        capacity=12,
        deadline_hours=48,
        place="Salle de réunion RCP, bâtiment B",
        weeks=8,
    )
    upcoming = [x for x in sessions if x.submission_deadline > rcp.clock.now()]
    for birth, seq, fiche, schedule in CASES:
        case = await rcp.do_create_case(
            gp, board.id, make_matricule(birth, seq), fiche, submit=True
        )
        if schedule and upcoming:
            await rcp.do_transition(coord, case.id, "schedule", session_id=upcoming[0].id)
    return True
