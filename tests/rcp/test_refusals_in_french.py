"""A doctor whose fiche RCP, decision or board form is refused reads why in their language, field
by field; the JSON API keeps its English messages. Every refusal an RCP page can show has French."""

from __future__ import annotations

import html
from pathlib import Path

from konsil import appkeys as K
from konsil.app import create_app
from konsil.config import Config
from konsil.errors import Reason
from rcp.domain.quorum import QuorumRule, evaluate, joined
from tests.conftest import TEST_SECRET, Client, web_login
from tests.error_summary import read
from tests.messages import ROOT, messages_in, without_french
from tests.rcp.conftest import World

# The modules whose refusals reach the RCP pages: the service, the domain, publishing, notices
# and the pages' own helpers (the JSON API's reading of its body and the Matrix hooks are not
# shown on a page; the iCalendar builder refuses nothing, and its ``event.add(name, value)``
# reads like a refusal to the extractor).
REFUSING = (
    ROOT / "rcp" / "service.py",
    ROOT / "rcp" / "publishing.py",
    ROOT / "rcp" / "notices.py",
    *sorted(p for p in (ROOT / "rcp" / "domain").glob("*.py") if p.name != "calendar.py"),
    ROOT / "rcp" / "web" / "pages.py",
    ROOT / "rcp" / "web" / "common.py",
)


def test_every_rcp_refusal_has_french(tmp_path: Path) -> None:
    found = messages_in(*REFUSING)
    assert found.fstrings == [], "a refusal is a literal template with its values as params"
    assert len(found.texts) > 140
    assert {"the fiche RCP has errors: {fields}", "required to submit the case: {what}"} <= (
        found.texts
    )
    app = create_app(
        Config(database_url="sqlite+aiosqlite://", data_dir=str(tmp_path), secret_key=TEST_SECRET)
    )
    assert without_french(found.texts, app[K.TRANSLATOR]) == []


def shown(page: str) -> tuple[str, dict[str, str], dict[str, str]]:
    """A refused form's alert, each field's reason beside it, and the alert's summary: each
    reason as a link to its field (by the field's name), never under its raw key, neither in the
    summary nor in the alert's message."""
    refused = read(page)
    refused.assert_no_keys(refused.beside)
    assert [k for k in refused.beside if "_" in k and k in refused.message] == [], refused.message
    return refused.message, refused.beside, refused.linked


def speak(client: Client, lang: str) -> None:
    client.session.cookie_jar.update_cookies({"konsil_lang": lang})


def test_quorum_reasons_are_translated_one_by_one(tmp_path: Path) -> None:
    app = create_app(
        Config(database_url="sqlite+aiosqlite://", data_dir=str(tmp_path), secret_key=TEST_SECRET)
    )
    status = evaluate(QuorumRule(), [])
    together = joined(status.reasons)
    assert together == (
        "0 of 3 physicians present; 0 of 3 distinct specialties present; "
        "missing: surgical, medical-oncology, radiation-oncology"
    )
    assert app[K.TRANSLATOR].gettext("fr", together) == (
        "0 médecin(s) présent(s) sur 3 ; 0 spécialité(s) distincte(s) présente(s) sur 3 ; "
        "manque : surgical, medical-oncology, radiation-oncology"
    )
    assert app[K.TRANSLATOR].gettext("fr", joined(status.reasons[2:])) == (
        "manque : surgical, medical-oncology, radiation-oncology"
    )
    assert joined([]) == "" and isinstance(joined([]), Reason)


FICHE_FR = {
    "question": "obligatoire pour soumettre le cas : la question posée à la RCP",
    "diagnosis_label": "obligatoire pour soumettre le cas : le diagnostic en clair",
    "icdo_topography": "ne correspond pas à la localisation CIM-10 C50",
    "icdo_morphology": "obligatoire pour soumettre le cas : la morphologie CIM-O-3 (p. ex. 8500/3)",
    "topography_label": "obligatoire pour soumettre le cas : la topographie en clair",
    "morphology_label": "obligatoire pour soumettre le cas : la morphologie en clair",
    "origin": "au choix : primary, secondary, recurrence",
    "tnm_kind": "obligatoire avec un TNM : clinique (c) ou pathologique (p)",
    "tnm_t": "une catégorie T, p. ex. TX, T0, Tis, T1mi, T2, T3a (préfixe conforme au type)",
    "ecog": "un indice de performance OMS/ECOG de 0 à 4",
    "history": (
        "obligatoire pour soumettre le cas : les antécédents pertinents (le compte rendu les "
        "reprend)"
    ),
}
FICHE_EN = {
    "question": "required to submit the case: the question put to the board",
    "diagnosis_label": "required to submit the case: the diagnosis in words",
    "icdo_topography": "does not match the ICD-10 site C50",
    "icdo_morphology": "required to submit the case: the ICD-O-3 morphology (e.g. 8500/3)",
    "topography_label": "required to submit the case: the topography in words",
    "morphology_label": "required to submit the case: the morphology in words",
    "origin": "one of primary, secondary, recurrence",
    "tnm_kind": "required with a TNM: clinical (c) or pathological (p)",
    "tnm_t": "a T category such as TX, T0, Tis, T1mi, T2, T3a (prefix matching the kind)",
    "ecog": "a WHO/ECOG performance status from 0 to 4",
    "history": "required to submit the case: the relevant history (the report carries it)",
}
FICHE_ALERT_EN = (  # the JSON's: the page leaves the keys out, like its French
    "the fiche RCP has errors: diagnosis_label, ecog, history, icdo_morphology, icdo_topography, "
    "morphology_label, origin, question, tnm_kind, tnm_t, topography_label"
)


async def test_the_case_form_is_refused_field_by_field_in_french_and_english(
    world: World,
) -> None:
    w = world
    csrf = await web_login(w.client, w.referrer.person)
    typed = {
        "board_id": w.board_id,
        "question": "",
        "icd10": "C50.4",
        "icdo_topography": "C18.2",  # the colon, for a breast cancer
        "origin": "primaire",
        "ecog": "9",
        "tnm_kind": "",
        "tnm_t": "T9",
        "tnm_n": "N0",
        "tnm_m": "M0",
        "tnm_edition": "8",
    }
    form = {"csrf_token": csrf, "patient": w.matricule, "action": "submit", **typed}
    refused = await w.client.post("/rcp/cases", data=form)  # French by default
    assert refused.status == 400
    alert, fields, listed = shown(await refused.text())
    assert alert == "la fiche RCP comporte des erreurs"
    links = read(await refused.text()).link_texts  # each link names its field by its label
    assert links["question"] == f"Question posée à la RCP : {FICHE_FR['question']}"
    assert links["tnm_t"] == f"T : {FICHE_FR['tnm_t']}"
    assert fields == listed == FICHE_FR  # beside each field, and a link to it in the summary
    assert "diagnosis_label" not in read(await refused.text()).summary_text

    speak(w.client, "en")
    refused = await w.client.post("/rcp/cases", data=form)
    page = await refused.text()
    assert shown(page) == ("the fiche RCP has errors", FICHE_EN, FICHE_EN)
    assert "diagnosis_label" not in read(page).summary_text
    assert read(page).link_texts["ecog"] == (  # each link names its field by the form's label
        "WHO/ECOG performance status (0-4): a WHO/ECOG performance status from 0 to 4"
    )

    # The JSON API answers the same English whatever the browser's language.
    speak(w.client, "fr")
    api = await w.client.post(
        "/api/v1/rcp/cases",
        json={"board_id": w.board_id, "matricule": w.matricule, "submit": True, "fiche": typed},
        headers=w.referrer.headers,
    )
    problem = await api.json()
    assert api.status == 400 and api.content_type == "application/problem+json"
    assert (problem["detail"], problem["errors"]) == (FICHE_ALERT_EN, FICHE_EN)

    # The edit form of a draft shows the same French (the template of both forms).
    case = await w.new_case(submit=False)
    edit = await w.client.post(
        f"/rcp/cases/{case['id']}/edit",
        data={"csrf_token": csrf, "version": str(case["version"]), **form},
    )
    assert edit.status == 400
    assert shown(await edit.text())[1] == FICHE_FR


async def test_the_decision_form_refuses_in_french(world: World) -> None:
    w = world
    case = await w.scheduled_case()
    csrf = await web_login(w.client, w.chair.person)
    path = f"/rcp/cases/{case['id']}/decision"
    decision = {"csrf_token": csrf, "proposal": "surgery", "guideline_conform": "1"}
    decision["conclusion"] = "Chirurgie."
    # Nobody checked in: the quorum is not met (a conflict shown on the decision page).
    refused = await w.client.post(path, data=decision)
    assert refused.status == 409
    text = html.unescape(await refused.text())
    summary = read(text)
    assert summary.message == (
        "le quorum n'est pas atteint : le cas ne peut pas être décidé, reportez-le"
    )
    reasons = (
        "0 médecin(s) présent(s) sur 3 ; 0 spécialité(s) distincte(s) présente(s) sur 3 ; "
        "manque : surgical, medical-oncology, radiation-oncology"
    )
    # the quorum is no field of the form: its reason stands alone, without a link or a key
    assert (summary.linked, summary.unlinked) == ({}, [reasons])
    assert "quorum" not in summary.summary_text
    assert f"Quorum non atteint: {reasons}</p>" in text  # the board saw it before deciding

    await w.check_in(w.chair, w.medonc, w.radonc)  # at the meeting, days later: sign in again
    w.client.session.cookie_jar.clear()
    decision["csrf_token"] = await web_login(w.client, w.chair.person)
    deviating = {**decision, "guideline_conform": "0", "proposal": "chirurgie"}
    deviating["trial_proposed"] = "1"
    shown_by_lang = {
        "fr": (
            "la décision est incomplète",
            "élément 1 : le type doit être l'un de surgery, chemotherapy, ",
            {
                "deviation_justification": (
                    "obligatoire quand la proposition s'écarte du référentiel"
                ),
                "trial_name": "nommez l'essai clinique proposé",
            },
        ),
        "en": (
            "the decision is not complete",
            "item 1: kind must be one of surgery, chemotherapy, ",
            {
                "deviation_justification": "required when the proposal deviates from the guidelines",
                "trial_name": "name the clinical trial proposed",
            },
        ),
    }
    for lang, (alert, kinds, fields) in shown_by_lang.items():
        speak(w.client, lang)
        refused = await w.client.post(path, data=deviating)
        assert refused.status == 400
        got_alert, _fields, listed = shown(await refused.text())
        assert got_alert == alert
        assert listed.pop("proposal").startswith(kinds)
        assert listed == fields


async def test_the_board_form_refuses_in_french(world: World) -> None:
    w = world
    csrf = await web_login(w.client, w.coordinator.person)
    taken = {"csrf_token": csrf, "name": "RCP Sein", "tumour_domain": "breast"}
    refused = await w.client.post("/rcp/boards", data=taken)
    assert refused.status == 409
    assert shown(await refused.text())[::2] == (
        "une RCP nommée 'RCP Sein' existe déjà",
        {"name": "existe déjà"},
    )
    wrong = {"csrf_token": csrf, "name": "", "tumour_domain": "poumon"}
    refused = await w.client.post("/rcp/boards", data=wrong)
    alert, fields, listed = shown(await refused.text())
    assert alert == "la RCP n'est pas valide"
    assert fields == listed
    assert fields.pop("tumour_domain").startswith("au choix : breast, ")
    assert fields == {"name": "obligatoire, 200 caractères au plus"}
