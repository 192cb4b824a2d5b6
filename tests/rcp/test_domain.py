"""Pure RCP rules: quorum, the lifecycle table, fiche and decision validation, calendars."""

from __future__ import annotations

from datetime import UTC, datetime, time
from typing import Any

import icalendar
import pytest

from konsil.errors import Conflict, ValidationError
from rcp.domain import calendar as cal
from rcp.domain.fiche import check_fiche
from rcp.domain.lifecycle import TRANSITIONS, XDW_TASK, CaseState, next_state, xdw_workflow
from rcp.domain.quorum import ANY_SURGERY, Attendee, QuorumRule, check_rule, evaluate
from rcp.domain.report import check_decision

# ---------------------------------------------------------------- quorum


def a(name: str, specialty: str | None, present: bool = True) -> Attendee:
    return Attendee(name, name, specialty, present)


def test_quorum_met_with_surgeon_medical_and_radiation_oncologists() -> None:
    q = evaluate(
        QuorumRule(),
        [a("s", "visceral-surgery"), a("mo", "medical-oncology"), a("ro", "radiation-oncology")],
    )
    assert q.met and q.physicians_present == 3 and q.missing_required == ()


def test_quorum_missing_required_specialty() -> None:
    q = evaluate(
        QuorumRule(),
        [
            a("s", "surgery"),
            a("mo", "medical-oncology"),
            a("rad", "radiology"),
            a("p", "pathology"),
        ],
    )
    assert not q.met
    assert q.missing_required == ("radiation-oncology",)


def test_two_physicians_of_one_specialty_count_once() -> None:
    q = evaluate(
        QuorumRule(min_physicians=3, min_specialties=3, required=()),
        [a("mo1", "medical-oncology"), a("mo2", "medical-oncology"), a("s", "surgery")],
    )
    assert q.physicians_present == 3
    assert q.specialties_present == ("medical-oncology", "surgery")
    assert not q.met and "2 of 3 distinct specialties present" in q.reasons


def test_absent_members_and_non_physicians_do_not_count() -> None:
    q = evaluate(
        QuorumRule(),
        [
            a("s", "breast-surgery"),
            a("mo", "medical-oncology"),
            a("ro", "radiation-oncology", present=False),
            a("coord", None),
        ],
    )
    assert not q.met
    assert q.physicians_present == 2
    assert q.missing_required == ("radiation-oncology",)
    assert {p.account_id for p in q.present} == {"s", "mo", "coord"}


def test_any_surgical_specialty_satisfies_surgery_but_not_a_medical_one() -> None:
    rule = QuorumRule(min_physicians=1, min_specialties=1, required=(ANY_SURGERY,))
    assert evaluate(rule, [a("u", "urology")]).met
    assert not evaluate(rule, [a("g", "gastroenterology")]).met


def test_configurable_rule_is_validated() -> None:
    assert check_rule(4, 2, ["pathology", "surgical"]).required == ("pathology", "surgical")
    with pytest.raises(ValidationError) as e:
        check_rule(2, 3, ["astrology"])
    assert set(e.value.fields) == {"min_specialties", "required"}


# ---------------------------------------------------------------- lifecycle

S = CaseState
LEGAL = {
    (S.DRAFT, "submit"): S.SUBMITTED,
    (S.NEEDS_INFO, "submit"): S.SUBMITTED,
    (S.SUBMITTED, "request_info"): S.NEEDS_INFO,
    (S.SUBMITTED, "reject"): S.REJECTED,
    (S.SUBMITTED, "schedule"): S.SCHEDULED,
    (S.POSTPONED, "schedule"): S.SCHEDULED,
    (S.SUBMITTED, "postpone"): S.POSTPONED,
    (S.SCHEDULED, "postpone"): S.POSTPONED,
    (S.DRAFT, "cancel"): S.CANCELLED,
    (S.SUBMITTED, "cancel"): S.CANCELLED,
    (S.NEEDS_INFO, "cancel"): S.CANCELLED,
    (S.SCHEDULED, "cancel"): S.CANCELLED,
    (S.POSTPONED, "cancel"): S.CANCELLED,
    (S.SCHEDULED, "decide"): S.DISCUSSED,
    (S.DISCUSSED, "draft_report"): S.REPORT_DRAFT,
    (S.REPORT_DRAFT, "sign"): S.VALIDATED,
    (S.VALIDATED, "publish"): S.PUBLISHED,
}
ALL = [(state, action) for state in S for action in TRANSITIONS]


@pytest.mark.parametrize(("state", "action"), ALL, ids=[f"{s.value}-{x}" for s, x in ALL])
def test_every_transition(state: CaseState, action: str) -> None:
    expected = LEGAL.get((state, action))
    if expected is not None:
        assert next_state(state, action) is expected
    else:
        with pytest.raises(Conflict) as e:
            next_state(state, action)
        assert state.value in e.value.message and action in e.value.message


def test_the_table_has_exactly_the_legal_transitions() -> None:
    table = {(s, act): tgt for act, (sources, tgt) in TRANSITIONS.items() for s in sources}
    assert table == LEGAL


def test_cancel_and_postpone_only_before_discussion() -> None:
    for state in (S.DISCUSSED, S.REPORT_DRAFT, S.VALIDATED, S.PUBLISHED):
        for action in ("cancel", "postpone"):
            with pytest.raises(Conflict):
                next_state(state, action)


def test_unknown_action_is_refused() -> None:
    with pytest.raises(Conflict):
        next_state(S.DRAFT, "teleport")


def test_xdw_vocabulary() -> None:
    assert set(XDW_TASK) == set(S)
    assert set(XDW_TASK.values()) == {"CREATED", "READY", "IN_PROGRESS", "COMPLETED", "FAILED"}
    assert XDW_TASK[S.PUBLISHED] == "COMPLETED" and xdw_workflow(S.PUBLISHED) == "CLOSED"
    assert XDW_TASK[S.CANCELLED] == "FAILED" and xdw_workflow(S.SCHEDULED) == "OPEN"


# ---------------------------------------------------------------- fiche

GOOD: dict[str, Any] = {
    "question": "Adjuvant treatment?",
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
    "tnm_edition": "8",
    "ecog": "1",
    "history": "None relevant",
    "patient_informed": "1",
    "diagnosis_label": "Sein",
    "topography_label": "Sein",
    "morphology_label": "Carcinome",
}


def test_a_complete_fiche_passes_and_is_normalised() -> None:
    f = check_fiche({**GOOD, "icd10": "c50.4", "tnm_t": "pT2"}, for_submission=True)
    assert f.icd10 == "C50.4" and f.tnm_t == "T2" and f.ecog == 1 and f.patient_informed
    assert f.tnm_edition == 8 and f.tnm_prefixed == ("pT2", "pN1a", "pM0")


BAD = [
    ("icd10", "C98", "icd10"),
    ("icd10", "D05.1", "icd10"),
    ("icd10", "C5", "icd10"),
    ("icd10", "C50.123", "icd10"),
    ("icdo_topography", "C50", "icdo_topography"),
    ("icdo_topography", "C18.2", "icdo_topography"),  # does not match ICD-10 C50
    ("icdo_morphology", "8500-3", "icdo_morphology"),
    ("icdo_morphology", "8500/5", "icdo_morphology"),
    ("icdo_morphology", "8000/6", "icdo_morphology"),  # metastasis coded, tumour marked primary
    ("origin", "tertiary", "origin"),
    ("laterality", "up", "laterality"),
    ("tnm_kind", "z", "tnm_kind"),
    ("tnm_t", "T5", "tnm_t"),
    ("tnm_t", "cT2", "tnm_t"),  # prefix contradicts the pathological kind
    ("tnm_n", "N4", "tnm_n"),
    ("tnm_m", "M2", "tnm_m"),
    ("stage_group", "V", "stage_group"),
    ("tnm_edition", "6", "tnm_edition"),
    ("tnm_edition", "eight", "tnm_edition"),
    ("ecog", "5", "ecog"),
    ("ecog", "-1", "ecog"),
    ("ecog", "good", "ecog"),
    ("priority", "9", "priority"),
    ("presentation", "second", "presentation"),
    ("diagnosis_label", "x" * 301, "diagnosis_label"),
    ("question", "x" * 2001, "question"),
]


@pytest.mark.parametrize(("name", "value", "field"), BAD, ids=[f"{n}={v[:8]}" for n, v, _ in BAD])
def test_each_bad_field_gets_its_own_message(name: str, value: str, field: str) -> None:
    with pytest.raises(ValidationError) as e:
        check_fiche({**GOOD, name: value}, for_submission=False)
    assert list(e.value.fields) == [field]
    assert e.value.fields[field]


def test_tnm_consistency() -> None:
    with pytest.raises(ValidationError) as e:
        check_fiche({**GOOD, "tnm_m": "M1", "stage_group": "IIIA"}, for_submission=False)
    assert e.value.fields == {"stage_group": "distant metastasis (M1) means stage IV"}
    assert check_fiche({**GOOD, "tnm_m": "M1b", "stage_group": "IVB"}, for_submission=False)
    with pytest.raises(ValidationError) as e:
        check_fiche(
            {**GOOD, "tnm_t": "Tis", "tnm_n": "N0", "stage_group": "IA"}, for_submission=False
        )
    assert "stage_group" in e.value.fields
    with pytest.raises(ValidationError) as e:
        check_fiche({**GOOD, "tnm_n": "", "tnm_kind": "", "tnm_edition": ""}, for_submission=False)
    assert set(e.value.fields) == {"tnm_n", "tnm_kind", "tnm_edition"}


def test_draft_may_be_incomplete_but_submission_may_not() -> None:
    assert check_fiche({}, for_submission=False).question == ""
    with pytest.raises(ValidationError) as e:
        check_fiche({"history": "x"}, for_submission=True)
    # everything the report CDA will need, each with its own message
    assert set(e.value.fields) == {
        "question",
        "icd10",
        "diagnosis_label",
        "icdo_topography",
        "topography_label",
        "icdo_morphology",
        "morphology_label",
        "origin",
        "tnm_t",
        "tnm_n",
        "tnm_m",
        "tnm_kind",
        "tnm_edition",
        "ecog",
    }
    assert all(v.startswith("required to submit the case: ") for v in e.value.fields.values())
    assert "TX" in e.value.fields["tnm_t"] and "0-4" in e.value.fields["ecog"]
    labelled = GOOD
    no_tnm = {"tnm_kind": "", "tnm_t": "", "tnm_n": "", "tnm_m": "", "stage_group": ""}
    assert check_fiche({**labelled, **no_tnm, "tnm_edition": ""}, for_submission=False)
    for name in ("history", "morphology_label", "diagnosis_label"):
        with pytest.raises(ValidationError) as e:
            check_fiche({**labelled, name: ""}, for_submission=True)
        assert name in e.value.fields
        assert check_fiche({**labelled, name: ""}, for_submission=False)  # a draft may lack it
    # a haematological case without a TNM says X for what cannot be assessed
    assert check_fiche(
        {**labelled, "tnm_t": "TX", "tnm_n": "NX", "tnm_m": "MX", "stage_group": ""},
        for_submission=True,
    )


def test_what_the_report_cda_cannot_carry_is_refused_at_submission() -> None:
    from rcp.service import check_submittable

    labelled = GOOD
    assert check_submittable(labelled, submit=True).tnm_n == "N1a"
    draft = {**labelled, "tnm_n": "N1mi", "stage_group": "IIIC1"}
    assert check_submittable(draft, submit=False).tnm_n == "N1mi"  # fine in a draft
    with pytest.raises(ValidationError) as e:
        check_submittable(draft, submit=True)
    assert set(e.value.fields) == {"tnm_n", "stage_group"}
    assert "'N1mi' cannot be published" in e.value.fields["tnm_n"]


def test_decision_validation() -> None:
    d = check_decision(
        {
            "proposal": [{"kind": "surgery", "detail": "lumpectomy"}, "radiotherapy"],
            "guideline_conform": True,
            "conclusion": "Surgery then radiotherapy",
        }
    )
    assert [i.kind for i in d.proposal] == ["surgery", "radiotherapy"]
    with pytest.raises(ValidationError) as e:
        check_decision({"proposal": ["magic"], "guideline_conform": "0", "trial_proposed": "1"})
    assert set(e.value.fields) == {
        "proposal",
        "deviation_justification",
        "trial_name",
        "conclusion",
    }
    with pytest.raises(ValidationError) as e:
        check_decision({"proposal": [], "conclusion": "x"})
    assert set(e.value.fields) == {"proposal", "guideline_conform"}
    with pytest.raises(ValidationError) as e:
        check_decision(
            {
                "proposal": ["surveillance"],
                "guideline_conform": True,
                "conclusion": "x",
                "trial_proposed": True,
                "trial_name": "T",
                "trial_id": "no spaces please",
            }
        )
    assert set(e.value.fields) == {"trial_id"}


# ---------------------------------------------------------------- calendar


def test_weekly_occurrences_keep_local_time_across_dst() -> None:
    rule = cal.check_weekly(1, "12:30", 90)  # Tuesdays 12:30 Luxembourg
    occ = cal.occurrences(rule, datetime(2026, 3, 20, tzinfo=UTC), 3)
    # 24 March (CET, UTC+1), 31 March and 7 April (CEST, UTC+2)
    assert [s for s, _ in occ] == [
        datetime(2026, 3, 24, 11, 30, tzinfo=UTC),
        datetime(2026, 3, 31, 10, 30, tzinfo=UTC),
        datetime(2026, 4, 7, 10, 30, tzinfo=UTC),
    ]
    assert all((e - s).total_seconds() == 5400 for s, e in occ)
    with pytest.raises(ValidationError) as e:
        cal.check_weekly(7, "25:00", 5)
    assert set(e.value.fields) == {"weekday", "start", "duration_minutes"}


def test_feed_and_invitation_parse_back() -> None:
    start = datetime(2026, 3, 24, 11, 30, tzinfo=UTC)
    s = cal.CalendarSession(
        uid="rcp-session-1@konsil",
        board_name="Sein",
        start=start,
        end=start.replace(hour=13),
        place="Salle 2",
        video_link="https://video.example/rcp",
        cancelled=False,
        sequence=0,
        url="https://konsil.example/rcp/sessions/1",
        attendees=[("Dr A", "a@example.lu")],
        organizer=("Coord", "c@example.lu"),
    )
    parsed = icalendar.Calendar.from_ical(cal.feed("RCP Sein", [s], start))
    ev = parsed.walk("VEVENT")[0]
    assert ev.decoded("dtstart") == start
    assert str(ev.get("dtstart").params["TZID"]) == "Europe/Luxembourg"
    assert ev.decoded("dtstart").time() == time(12, 30)
    assert str(ev["status"]) == "CONFIRMED" and str(ev["location"]) == "Salle 2"
    assert parsed.walk("VTIMEZONE")
    inv = icalendar.Calendar.from_ical(
        cal.invitation(
            cal.CalendarSession(**{**s.__dict__, "cancelled": True, "sequence": 1}), start
        )
    )
    assert str(inv["method"]) == "CANCEL"
    iev = inv.walk("VEVENT")[0]
    assert str(iev["status"]) == "CANCELLED" and iev.decoded("sequence") == 1
    assert str(iev["attendee"]) == "mailto:a@example.lu"
