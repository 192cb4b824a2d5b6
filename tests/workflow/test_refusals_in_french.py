"""A doctor who types a wrong value on a correction page reads why in their language, field by
field; the JSON API keeps its English messages. Every refusal a page can show has French."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from konsil import appkeys as K
from konsil.app import create_app
from konsil.config import Config
from konsil.identity.matricule import make_matricule
from tests.conftest import TEST_SECRET, Client, Person, web_login
from tests.error_summary import read
from tests.messages import ROOT, messages_in, without_french
from tests.workflow import helpers
from tests.workflow.test_document_views import World, token_for
from workflow.cda.xsd import schema_available
from workflow.corrections import prescription_fields

CreateUser = Callable[..., Awaitable[Person]]

# The modules whose refusals reach the after-call form and the correction pages: the builders
# (every one, present and future), the correction form, and the matricule check the builders run.
REFUSING = (
    *sorted((ROOT / "workflow" / "cda").glob("*.py")),
    ROOT / "workflow" / "corrections.py",
    ROOT / "konsil" / "identity" / "matricule.py",
)

CHILD = make_matricule("20150310", 4)  # 11 years old on the certificate
WRONG_CHILD = CHILD[:-1] + str((int(CHILD[-1]) + 1) % 10)  # the Verhoeff digit is off


def test_every_refusal_of_the_builders_and_corrections_has_french(tmp_path: Path) -> None:
    found = messages_in(*REFUSING)
    assert found.fstrings == [], "a refusal is a literal template with its values as params"
    assert len(found.texts) > 80  # the extractor still sees the builders' refusals
    app = create_app(  # the app's translator, as the feature packages fill it in
        Config(database_url="sqlite+aiosqlite://", data_dir=str(tmp_path), secret_key=TEST_SECRET)
    )
    assert without_french(found.texts, app[K.TRANSLATOR]) == []


def shown(page: str) -> tuple[str, dict[str, str]]:
    """A refused form's alert and each field's reason, as the reader sees them: beside the
    field, and again in the alert's summary as a link to it, named by its label (never by its
    raw key, neither in the summary nor in the alert's message)."""
    refused = read(page)
    assert refused.linked == refused.beside
    refused.assert_no_keys(refused.beside)
    keys = [k for k in refused.beside if ("_" in k or "." in k) and k in refused.message]
    assert keys == [], refused.message
    return refused.message, refused.beside


needs_schema = pytest.mark.skipif(
    not schema_available(), reason="CDA schema not found: set KONSIL_CDA_SCHEMA_DIR"
)


def speak(client: Client, lang: str) -> None:
    client.session.cookie_jar.update_cookies({"konsil_lang": lang})


@needs_schema
async def test_sick_leave_correction_refused_in_french_and_english(
    world: World, create_user: CreateUser
) -> None:
    dr_a = await create_user("dra")
    cert = await world.issue(dr_a, world.anne)
    await world.deliver_all()
    csrf = await web_login(world.client, dr_a)
    path = f"/documents/{cert.id}/correct"
    wrong = {
        "kind": "family-reason",
        "start": "2026-11-27",
        "end": "2026-11-20",  # before the start
        "diagnosis.code": "grippe",  # not ICD-10
        "diagnosis.label": "Grippe",
        "child.matricule": WRONG_CHILD,
        "child.given_name": "Léa",
        "child.family_name": "Schmit",
    }

    refused = await world.client.post(path, data={"csrf_token": csrf, **wrong})
    assert refused.status == 400
    page = await refused.text()
    alert, fields = shown(page)
    assert alert == "le certificat d'incapacité de travail n'est pas valide"
    assert read(page).link_texts == {  # each link names its field by the form's label
        "end": "Fin : l'incapacité se termine avant de commencer",
        "diagnosis.code": "Diagnostic (CIM-10) : 'grippe' n'est pas un code CIM-10 (p. ex. J06.9)",
        "child.matricule": (
            "Matricule de l'enfant : "
            "le chiffre de contrôle Verhoeff du matricule (13e chiffre) est erroné"
        ),
    }
    assert fields == {
        "end": "l'incapacité se termine avant de commencer",
        "diagnosis.code": "'grippe' n'est pas un code CIM-10 (p. ex. J06.9)",
        "child.matricule": (
            "le chiffre de contrôle Verhoeff du matricule (13e chiffre) est erroné"
        ),
    }

    speak(world.client, "en")
    refused = await world.client.post(path, data={"csrf_token": csrf, **wrong})
    page = await refused.text()
    alert, fields = shown(page)
    english = {
        "end": "the incapacity ends before it starts",
        "diagnosis.code": "'grippe' is not an ICD-10 code (e.g. J06.9)",
        "child.matricule": "the matricule's Verhoeff check digit (13th digit) is wrong",
    }
    assert fields == english
    assert read(page).link_texts["end"] == "End: the incapacity ends before it starts"
    # the page's English leaves the keys out, like its French: the summary lists the fields
    assert alert == "the sick-leave certificate is not valid"
    detail = (  # the JSON's English lists them
        "the sick-leave certificate is not valid — end: the incapacity ends before it starts; "
        "diagnosis.code: 'grippe' is not an ICD-10 code (e.g. J06.9); "
        "child.matricule: the matricule's Verhoeff check digit (13th digit) is wrong"
    )

    # The JSON API answers the same English whatever the browser's language.
    speak(world.client, "fr")
    api = await world.client.post(
        f"/api/v1/documents/{cert.id}/corrections",
        json={
            **{k: v for k, v in wrong.items() if "." not in k},
            "diagnosis": {"code": "grippe", "label": "Grippe"},
            "child": {"matricule": WRONG_CHILD, "given_name": "Léa", "family_name": "Schmit"},
        },
        headers=await token_for(world, dr_a),
    )
    problem = await api.json()
    assert api.status == 400 and api.content_type == "application/problem+json"
    assert (problem["detail"], problem["errors"]) == (detail, english)

    # A certificate for an illness names its diagnosis: said in the refusal's summary, with no
    # link (the form has the code and label, not the diagnosis as a whole) and no key.
    no_diagnosis = {"kind": "illness", "start": "2026-11-27", "end": "2026-11-30"}
    refused = await world.client.post(path, data={"csrf_token": csrf, **no_diagnosis})
    assert refused.status == 400
    summary = read(await refused.text())
    assert (summary.linked, summary.unlinked) == ({}, ["un diagnostic (CIM-10) est obligatoire"])
    assert (await world.document(cert.id)).status == "final"


@needs_schema
async def test_a_conflict_shows_its_message_not_its_values(
    world: World, create_user: CreateUser
) -> None:
    """A conflict's fields hold values, not reasons (``status: amended``): the page says what
    went wrong in its message and shows no bare value; the JSON keeps them."""
    dr_a = await create_user("dra")
    cert = await world.issue(dr_a, world.anne)
    await world.deliver_all()
    csrf = await web_login(world.client, dr_a)
    path = f"/documents/{cert.id}/correct"
    fine = {
        "csrf_token": csrf,
        "kind": "illness",
        "start": "2026-11-27",
        "end": "2026-11-30",
        "diagnosis.code": "J06.9",
        "diagnosis.label": "Rhinopharyngite",
    }
    corrected = await world.client.post(path, data=fine, allow_redirects=False)
    assert corrected.status == 303

    for lang, message in (
        ("fr", "seule la version en vigueur d'un document définitif peut être corrigée"),
        ("en", "only the current version of a final document can be corrected"),
    ):
        speak(world.client, lang)
        again = await world.client.post(path, data=fine)  # the old version, corrected already
        assert again.status == 409
        refused = read(await again.text())
        assert refused.message == message
        assert (refused.linked, refused.unlinked, refused.summary_text) == ({}, [], "")

    api = await world.client.post(
        f"/api/v1/documents/{cert.id}/corrections",
        json={k: v for k, v in fine.items() if "." not in k and k != "csrf_token"}
        | {"diagnosis": {"code": "J06.9", "label": "Rhinopharyngite"}},
        headers=await token_for(world, dr_a),
    )
    assert api.status == 409 and (await api.json())["errors"] == {"status": "amended"}


@needs_schema
async def test_prescription_correction_refused_in_french_and_english(
    world: World, create_user: CreateUser
) -> None:
    dr_a = await create_user("dra")
    rx = await world.issue(dr_a, world.anne, kind="prescription")
    await world.deliver_all()
    csrf = await web_login(world.client, dr_a)
    path = f"/documents/{rx.id}/correct"
    signed = {"csrf_token": csrf, **prescription_fields(helpers.RX)}

    # What the form cannot even read: a dose that is not a number.
    not_a_number = {**signed, "lines.1.dose": "beaucoup", "lines.0.times": "trois"}
    alert, fields = shown(await (await world.client.post(path, data=not_a_number)).text())
    assert alert == "l'ordonnance n'est pas valide"
    assert fields == {"lines.1.dose": "nombre attendu", "lines.0.times": "nombre entier attendu"}

    # What the builder refuses: the values named in each reason are the doctor's own.
    refused_values = {
        **signed,
        "lines.0.medication.atc": "N02BE1",
        "lines.1.route": "sc",
        "lines.1.duration_days": "400",
    }
    alert, fields = shown(await (await world.client.post(path, data=refused_values)).text())
    assert alert == "l'ordonnance n'est pas valide"
    routes = fields.pop("lines.1.route")
    assert routes.startswith("code inconnu 'sc' (au choix : 20053000, ")
    assert fields == {
        "lines.0.medication.atc": "'N02BE1' n'est pas un code ATC (p. ex. J01CA04)",
        "lines.1.duration_days": "de 1 à 366 jours",
    }

    speak(world.client, "en")
    alert, fields = shown(await (await world.client.post(path, data=refused_values)).text())
    assert alert == "the prescription is not valid"
    assert fields["lines.0.medication.atc"] == "'N02BE1' is not an ATC code (e.g. J01CA04)"
    assert fields["lines.1.route"].startswith("unknown code 'sc' (one of: 20053000, ")
    assert fields["lines.1.duration_days"] == "1 to 366 days"
    assert (await world.document(rx.id)).status == "final"
