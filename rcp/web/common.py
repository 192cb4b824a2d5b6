"""Helpers shared by the RCP pages and API: the caller, JSON shapes of RCP objects."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from konsil.auth.service import Principal
from konsil.errors import Reason, ValidationError
from konsil.web.request import client_ip, require_role
from rcp.domain.lifecycle import XDW_TASK, CaseState, actions_from, xdw_workflow
from rcp.models import Board, Session
from rcp.service import BoardView, CaseView, RcpService
from rcp.web.keys import RCP


def svc(request: web.Request) -> RcpService:
    return request.app[RCP]


def caller(request: web.Request) -> tuple[Principal, str | None]:
    return require_role(request, "admin", "practitioner", "coordinator"), client_ip(request)


def base_url(request: web.Request) -> str:
    return str(request.url.origin())


def as_int(value: Any, name: str, default: int | None = None) -> int:
    if (value is None or value == "") and default is not None:
        return default
    try:
        return int(str(value).strip())
    except ValueError:
        raise ValidationError(
            Reason("{name} must be a whole number", name=name), fields={name: "a whole number"}
        ) from None


def board_json(b: Board) -> dict[str, Any]:
    return {
        "id": b.id,
        "name": b.name,
        "tumour_domain": b.tumour_domain,
        "host_organisation_id": b.host_organisation_id,
        "quorum": {
            "min_physicians": b.min_physicians,
            "min_specialties": b.min_specialties,
            "required": list(b.required_specialties or []),
        },
    }


def board_view_json(bv: BoardView) -> dict[str, Any]:
    out = board_json(bv.board)
    out["host_organisation"] = bv.host_organisation
    out["members"] = [
        {
            "account_id": m.account_id,
            "username": m.username,
            "name": m.name,
            "specialty": m.specialty,
            "chair": m.is_chair,
            "coordinator": m.is_coordinator,
        }
        for m in bv.members
    ]
    return out


def session_json(s: Session) -> dict[str, Any]:
    return {
        "id": s.id,
        "board_id": s.board_id,
        "schedule_id": s.schedule_id,
        "starts_at": s.starts_at.isoformat(),
        "ends_at": s.ends_at.isoformat(),
        "submission_deadline": s.submission_deadline.isoformat(),
        "capacity": s.capacity,
        "place": s.place,
        "video_link": s.video_link,
        "status": s.status,
        "sequence": s.sequence,
    }


def case_json(v: CaseView) -> dict[str, Any]:
    c = v.case
    state = CaseState(c.state)
    return {
        "id": c.id,
        "board_id": c.board_id,
        "patient": {
            "id": v.patient.id,
            "matricule": v.patient.matricule,
            "given_name": v.patient.given_name,
            "family_name": v.patient.family_name,
            "birth_date": v.patient.birth_date.isoformat(),
        },
        "referrer_account_id": c.referrer_account_id,
        "state": state.value,
        "xdw": {"task_status": XDW_TASK[state], "workflow_status": xdw_workflow(state)},
        "version": c.version,
        "session_id": c.session_id,
        "agenda_position": c.agenda_position,
        "fiche": c.fiche,
        "status_note": c.status_note,
        "actions": actions_from(state),
        "attachments": [
            {"id": a.id, "filename": a.filename, "content_type": a.content_type, "size": a.size}
            for a in v.attachments
        ],
        "decision": None
        if v.decision is None
        else {
            **v.decision.decision,
            "participants": v.decision.participants,
            "quorum": v.decision.quorum,
            "decided_at": v.decision.decided_at.isoformat(),
        },
        "report": c.report,
        "signed_at": c.signed_at.isoformat() if c.signed_at else None,
        "publication_ref": c.publication_ref,
        "publication": publication_json(v),
        "published_at": c.published_at.isoformat() if c.published_at else None,
        "created_at": c.created_at.isoformat(),
        "updated_at": c.updated_at.isoformat(),
    }


def publication_json(v: CaseView) -> dict[str, Any] | None:
    """The published report's document and its delivery to the DSP (from the outbox)."""
    d = v.delivery
    if d is None:
        return None
    return {
        "document_id": d.document_id,
        "delivery_status": d.status,
        "attempts": d.attempts,
        "last_error": d.last_error,
        "delivered_at": d.delivered_at.isoformat() if d.delivered_at else None,
    }
