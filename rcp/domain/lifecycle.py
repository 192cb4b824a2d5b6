"""The case (fiche RCP) lifecycle: one explicit transition table.

A transition is named by an *action*; the table says from which states it is legal and where it
leads. Anything not in the table is refused before anything is written. The API also shows each
state in IHE XDW task vocabulary (CREATED/READY/IN_PROGRESS/COMPLETED/FAILED).
"""

from __future__ import annotations

from enum import StrEnum

from konsil.errors import Conflict, Reason


class CaseState(StrEnum):
    DRAFT = "DRAFT"
    SUBMITTED = "SUBMITTED"
    NEEDS_INFO = "NEEDS_INFO"
    REJECTED = "REJECTED"
    SCHEDULED = "SCHEDULED"
    POSTPONED = "POSTPONED"
    DISCUSSED = "DISCUSSED"
    REPORT_DRAFT = "REPORT_DRAFT"
    VALIDATED = "VALIDATED"
    PUBLISHED = "PUBLISHED"
    CANCELLED = "CANCELLED"


S = CaseState
BEFORE_DISCUSSION = (S.DRAFT, S.SUBMITTED, S.NEEDS_INFO, S.SCHEDULED, S.POSTPONED)

# action -> (states it may start from, resulting state)
TRANSITIONS: dict[str, tuple[frozenset[CaseState], CaseState]] = {
    "submit": (frozenset({S.DRAFT, S.NEEDS_INFO}), S.SUBMITTED),
    "request_info": (frozenset({S.SUBMITTED}), S.NEEDS_INFO),
    "reject": (frozenset({S.SUBMITTED}), S.REJECTED),
    "schedule": (frozenset({S.SUBMITTED, S.POSTPONED}), S.SCHEDULED),
    # Postponing moves a case the board has accepted to a later session; a draft or a case
    # waiting for the requester is not in the board's hands yet, so it cannot be postponed.
    "postpone": (frozenset({S.SUBMITTED, S.SCHEDULED}), S.POSTPONED),
    "cancel": (frozenset(BEFORE_DISCUSSION), S.CANCELLED),
    "decide": (frozenset({S.SCHEDULED}), S.DISCUSSED),
    "draft_report": (frozenset({S.DISCUSSED}), S.REPORT_DRAFT),
    "sign": (frozenset({S.REPORT_DRAFT}), S.VALIDATED),
    "publish": (frozenset({S.VALIDATED}), S.PUBLISHED),
}

TERMINAL = frozenset({S.REJECTED, S.CANCELLED, S.PUBLISHED})

# IHE XDW task status of the case's workflow task
XDW_TASK: dict[CaseState, str] = {
    S.DRAFT: "CREATED",
    S.SUBMITTED: "READY",
    S.NEEDS_INFO: "READY",
    S.SCHEDULED: "READY",
    S.POSTPONED: "READY",
    S.DISCUSSED: "IN_PROGRESS",
    S.REPORT_DRAFT: "IN_PROGRESS",
    S.VALIDATED: "IN_PROGRESS",
    S.PUBLISHED: "COMPLETED",
    S.REJECTED: "FAILED",
    S.CANCELLED: "FAILED",
}


def xdw_workflow(state: CaseState) -> str:
    """IHE XDW workflow status: OPEN until the case reaches a terminal state."""
    return "CLOSED" if state in TERMINAL else "OPEN"


def next_state(current: CaseState, action: str) -> CaseState:
    """The state ``action`` leads to from ``current``, or Conflict saying why it is refused."""
    rule = TRANSITIONS.get(action)
    if rule is None:
        raise Conflict(
            Reason("unknown action {action!r}", action=action), fields={"action": "unknown action"}
        )
    sources, target = rule
    if current not in sources:
        allowed = ", ".join(sorted(s.value for s in sources))
        raise Conflict(
            Reason(
                "a case in state {state} does not allow {action}: it is only possible from "
                "{allowed}",
                state=current.value,
                action=action,
                allowed=allowed,
            ),
            fields={"state": current.value},
        )
    return target


def actions_from(state: CaseState) -> list[str]:
    return [a for a, (sources, _) in TRANSITIONS.items() if state in sources]
