"""Messages made from a template and its values (``konsil.errors.Reason``): the English text for
JSON and logs, translated on pages by its template, the values filled in after translation."""

from __future__ import annotations

import copy
import json

from konsil.errors import Reason
from konsil.i18n import Translator
from konsil.web.labels import label_for

ICD10 = "{code!r} is not an ICD-10 code (e.g. J06.9)"


def test_a_reason_is_its_english_text() -> None:
    r = Reason(ICD10, code="flu")
    assert r == "'flu' is not an ICD-10 code (e.g. J06.9)" and isinstance(r, str)
    assert (r.template, dict(r.params)) == (ICD10, {"code": "flu"})
    assert json.dumps({"errors": {"dx": r}}) == json.dumps(
        {"errors": {"dx": "'flu' is not an ICD-10 code (e.g. J06.9)"}}
    )
    assert Reason("{tbl} is a UCUM unit") == "{tbl} is a UCUM unit"  # no values: not a template
    again = copy.deepcopy(r)
    assert (again, again.template, dict(again.params)) == (r, ICD10, {"code": "flu"})


def test_a_page_translates_the_template_then_fills_in_the_values() -> None:
    t = Translator()
    t.add(
        {
            ICD10: "{code!r} n'est pas un code CIM-10 (p. ex. J06.9)",
            "{what} is not valid — {problems}": "{what} n'est pas valide",
            "the prescription": "l'ordonnance",
            "is required": "est obligatoire",
        }
    )
    r = Reason(ICD10, code="flu")
    assert t.gettext("fr", r) == "'flu' n'est pas un code CIM-10 (p. ex. J06.9)"
    assert t.gettext("en", r) == r
    assert t.gettext("fr", Reason("is required")) == "est obligatoire"
    # a value that is a Reason is translated too; a translation may leave a value out
    refusal = Reason(
        "{what} is not valid — {problems}", what=Reason("the prescription"), problems="start: x"
    )
    assert refusal == "the prescription is not valid — start: x"
    assert t.gettext("fr", refusal) == "l'ordonnance n'est pas valide"


def test_a_missing_or_broken_translation_shows_the_english() -> None:
    t = Translator()
    t.add({"between {lo} and {hi}": "entre {low} et {hi}"})  # {low}: a typo
    assert t.gettext("fr", Reason("between {lo} and {hi}", lo=1, hi=5)) == "between 1 and 5"
    assert t.gettext("fr", Reason("at most {n} lines", n=3)) == "at most 3 lines"


def test_an_english_page_may_leave_the_jsons_key_list_out() -> None:
    t = Translator()
    t.add_english({"{what} is not valid — {problems}": "{what} is not valid"})
    refusal = Reason(
        "{what} is not valid — {problems}", what=Reason("the prescription"), problems="start: x"
    )
    assert refusal == "the prescription is not valid — start: x"  # the JSON's English
    assert t.gettext("en", refusal) == "the prescription is not valid"  # a page's
    assert t.gettext("en", Reason(ICD10, code="flu")) == "'flu' is not an ICD-10 code (e.g. J06.9)"
    assert t.gettext("en", "required") == "required"


def test_a_summary_link_reads_the_forms_own_label() -> None:
    form = (
        '<label for="f-end">Fin <abbr title="x">*</abbr></label><input id="f-end">'
        '<label for="f-lines.1.dose">Dose *</label><input id="f-lines.1.dose">'
        '<label><input type="checkbox" id="f-extension"> Prolongation</label>'
        '<label for="f-a">L&#39;enfant</label>'
    )
    assert label_for(form, "end") == "Fin"
    assert label_for(form, "lines.1.dose") == "Dose"
    assert label_for(form, "a") == "L'enfant"
    assert label_for(form, "extension") is None  # labelled by wrapping: no label invented
    assert label_for(None, "end") is None
