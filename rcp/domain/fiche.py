"""The fiche RCP: the clinical content of a case, and its validation.

A draft may be incomplete; a case submitted to a board must carry everything its report will need
(``REQUIRED_FOR_SUBMISSION``: question, coded and worded diagnosis, origin, TNM, performance
status, history). Every field gets its own message so the form (or
the hospital system calling the API) can show exactly what to fix.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from konsil.errors import Reason, ValidationError

ICD10_C = re.compile(r"^C(?:0\d|[1-8]\d|9[0-7])(?:\.\d{1,2})?$")
ICDO_TOPOGRAPHY = re.compile(r"^C\d\d\.\d$")
ICDO_MORPHOLOGY = re.compile(r"^\d{4}/[012369]$")
TNM_T = re.compile(r"^T(?:X|0|is|1mi|[1-4][a-e]?[1-3]?)$")
TNM_N = re.compile(r"^N(?:X|0(?:\((?:i\+|i-|mol\+|mol-)\))?|1mi|[1-3][a-c]?)$")
TNM_M = re.compile(r"^M(?:X|0|1[a-d]?)$")
STAGE = re.compile(r"^(?:0|0a|0is|(?:I{1,3}|IV)(?:[A-D][1-3]?)?|occult)$")

TNM_KINDS = {
    "c": "clinical",
    "p": "pathological",
    "yc": "post-therapy clinical",
    "yp": "post-therapy pathological",
}
TNM_EDITIONS = (7, 8, 9)
ORIGINS = ("primary", "secondary", "recurrence")
LATERALITIES = ("left", "right", "bilateral", "midline", "not-applicable", "unknown")
PRIORITIES = (0, 1, 2)  # routine, soon, urgent
# FRCP case status: why the case comes to the board (the workflow CDA builder's vocabulary)
PRESENTATIONS = ("first-presentation", "re-presentation", "for-information")

TEXT_LIMITS = {
    "question": 2000,
    "history": 8000,
    "exams": 8000,
    "diagnosis_label": 300,
    "topography_label": 300,
    "morphology_label": 300,
}
# "patient informed" is required before scheduling, not before submission. The rest is what the
# RCP report CDA needs (workflow.cda.rcp_report): asked at submission, so that a case cannot reach
# publication and fail there. A draft may lack any of it. (Reasons: a page translates each one
# inside "required to submit the case: {what}".)
REQUIRED_FOR_SUBMISSION: dict[str, str] = {
    "question": Reason("the question put to the board"),
    "icd10": Reason("the ICD-10 code of the cancer (C00-C97)"),
    "diagnosis_label": Reason("the diagnosis in words"),
    "icdo_topography": Reason("the ICD-O-3 topography (e.g. C50.4)"),
    "topography_label": Reason("the topography in words"),
    "icdo_morphology": Reason("the ICD-O-3 morphology (e.g. 8500/3)"),
    "morphology_label": Reason("the morphology in words"),
    "origin": Reason("primary, secondary or recurrence"),
    "tnm_t": Reason("the T category (TX when it does not apply or cannot be assessed)"),
    "tnm_n": Reason("the N category (NX when it does not apply or cannot be assessed)"),
    "tnm_m": Reason("the M category (MX when it does not apply or cannot be assessed)"),
    "ecog": Reason("the WHO/ECOG performance status (0-4)"),
    "history": Reason("the relevant history (the report carries it)"),
}


@dataclass(frozen=True)
class Fiche:
    question: str = ""
    icd10: str = ""
    icdo_topography: str = ""
    icdo_morphology: str = ""
    origin: str = ""  # primary | secondary | recurrence
    laterality: str = ""
    tnm_kind: str = ""  # c | p | yc | yp
    tnm_t: str = ""
    tnm_n: str = ""
    tnm_m: str = ""
    stage_group: str = ""
    tnm_edition: int | None = None
    ecog: int | None = None
    history: str = ""
    exams: str = ""
    patient_informed: bool = False
    priority: int = 0
    presentation: str = "first-presentation"
    diagnosis_label: str = ""  # e.g. "Carcinome canalaire infiltrant du sein gauche"
    topography_label: str = ""
    morphology_label: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def tnm_prefixed(self) -> tuple[str, str, str]:
        """cT2, cN1, cM0 (or pT…): the values as a report prints them."""
        k = self.tnm_kind
        return tuple(f"{k}{v}" if v else "" for v in (self.tnm_t, self.tnm_n, self.tnm_m))  # type: ignore[return-value]


def _text(data: Mapping[str, Any], name: str) -> str:
    v = data.get(name)
    return "" if v is None else str(v).strip()


def _bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    return str(v).strip().lower() in ("1", "true", "on", "yes", "oui")


def _int(data: Mapping[str, Any], name: str, errors: dict[str, str], what: str) -> int | None:
    v = data.get(name)
    if v is None or (isinstance(v, str) and not v.strip()):
        return None
    if isinstance(v, bool):
        errors[name] = what
        return None
    try:
        return int(str(v).strip())
    except ValueError:
        errors[name] = what
        return None


def _strip_prefix(value: str, kind: str, letter: str) -> str:
    """Accept "cT2" as well as "T2" (the prefix must then agree with the TNM kind)."""
    for p in ("yc", "yp", "c", "p"):
        if value.startswith(p + letter):
            return value if kind and p != kind else value[len(p) :]
    return value


def check_fiche(data: Mapping[str, Any], *, for_submission: bool) -> Fiche:
    """Validate and normalise a fiche; raises ValidationError with one message per bad field."""
    errors: dict[str, str] = {}
    question = _text(data, "question")
    history = _text(data, "history")
    exams = _text(data, "exams")
    labels = {
        n: _text(data, n) for n in ("diagnosis_label", "topography_label", "morphology_label")
    }
    texts = {"question": question, "history": history, "exams": exams, **labels}
    for name, value in texts.items():
        if len(value) > TEXT_LIMITS[name]:
            errors[name] = Reason("at most {limit} characters", limit=TEXT_LIMITS[name])

    icd10 = _text(data, "icd10").upper()
    if icd10 and not ICD10_C.match(icd10):
        errors["icd10"] = (
            "an ICD-10 cancer code from C00 to C97, optionally with a subdivision (C50.4)"
        )
    topo = _text(data, "icdo_topography").upper()
    if topo and not ICDO_TOPOGRAPHY.match(topo):
        errors["icdo_topography"] = "an ICD-O-3 topography code such as C50.4"
    morpho = _text(data, "icdo_morphology")
    if morpho and not ICDO_MORPHOLOGY.match(morpho):
        errors["icdo_morphology"] = (
            "an ICD-O-3 morphology code such as 8500/3 (4 digits, slash, behaviour 0-3, 6 or 9)"
        )
    if icd10 and topo and not errors.get("icd10") and not errors.get("icdo_topography"):
        # ICD-10 C00-C80 share their three-character site with the ICD-O-3 topography.
        if int(icd10[1:3]) <= 80 and icd10[:3] != topo[:3]:
            errors["icdo_topography"] = Reason(
                "does not match the ICD-10 site {site}", site=icd10[:3]
            )

    origin = _text(data, "origin").lower()
    if origin and origin not in ORIGINS:
        errors["origin"] = one_of(ORIGINS)
    if origin == "primary" and morpho.endswith("/6"):
        errors["icdo_morphology"] = (
            "behaviour /6 codes a metastasis, but the tumour is marked primary"
        )
    laterality = _text(data, "laterality").lower()
    if laterality and laterality not in LATERALITIES:
        errors["laterality"] = one_of(LATERALITIES)

    kind = _text(data, "tnm_kind").lower()
    if kind and kind not in TNM_KINDS:
        errors["tnm_kind"] = "c (clinical), p (pathological), yc or yp"
    t = _strip_prefix(_text(data, "tnm_t"), kind, "T")
    n = _strip_prefix(_text(data, "tnm_n"), kind, "N")
    m = _strip_prefix(_text(data, "tnm_m"), kind, "M")
    if t and not TNM_T.match(t):
        errors["tnm_t"] = (
            "a T category such as TX, T0, Tis, T1mi, T2, T3a (prefix matching the kind)"
        )
    if n and not TNM_N.match(n):
        errors["tnm_n"] = "an N category such as NX, N0, N0(i+), N1mi, N2a"
    if m and not TNM_M.match(m):
        errors["tnm_m"] = "an M category: M0, M1 or M1a-M1d"
    stage = _text(data, "stage_group")
    stage = stage[len("stage ") :] if stage.lower().startswith("stage ") else stage
    if stage and not STAGE.match(stage):
        errors["stage_group"] = "a stage group such as 0, IA, IIB, IIIC, IVA"
    edition = _int(data, "tnm_edition", errors, Reason("a TNM edition number"))
    if edition is not None and edition not in TNM_EDITIONS:
        errors["tnm_edition"] = one_of(map(str, TNM_EDITIONS))
    tnm_given = any((t, n, m, stage))
    if tnm_given:
        if not kind and "tnm_kind" not in errors:
            errors["tnm_kind"] = "required with a TNM: clinical (c) or pathological (p)"
        if edition is None and "tnm_edition" not in errors:
            errors["tnm_edition"] = "required with a TNM (e.g. 8)"
        if not (t and n and m):
            for name, v in (("tnm_t", t), ("tnm_n", n), ("tnm_m", m)):
                if not v and name not in errors:
                    errors[name] = "required with a TNM (use X when it cannot be assessed)"
    if m.startswith("M1") and stage and not stage.startswith("IV") and "stage_group" not in errors:
        errors["stage_group"] = "distant metastasis (M1) means stage IV"
    if stage.startswith("IV") and m == "M0" and t in ("Tis", "T0", "T1", "T1mi") and n == "N0":
        errors["stage_group"] = Reason("{t} N0 M0 cannot be stage IV", t=t)
    if t == "Tis" and n == "N0" and m == "M0" and stage and not stage.startswith("0"):
        errors["stage_group"] = "Tis N0 M0 is stage 0"

    ecog = _int(data, "ecog", errors, "a WHO/ECOG performance status from 0 to 4")
    if ecog is not None and not 0 <= ecog <= 4:
        errors["ecog"] = "a WHO/ECOG performance status from 0 to 4"
    priority = _int(data, "priority", errors, "0 (routine), 1 (soon) or 2 (urgent)")
    if priority is not None and priority not in PRIORITIES:
        errors["priority"] = "0 (routine), 1 (soon) or 2 (urgent)"
    informed = _bool(data.get("patient_informed", False))
    presentation = _text(data, "presentation").lower() or "first-presentation"
    if presentation not in PRESENTATIONS:
        errors["presentation"] = one_of(PRESENTATIONS)

    fiche = Fiche(
        question=question,
        icd10=icd10,
        icdo_topography=topo,
        icdo_morphology=morpho,
        origin=origin,
        laterality=laterality,
        tnm_kind=kind,
        tnm_t=t,
        tnm_n=n,
        tnm_m=m,
        stage_group=stage,
        tnm_edition=edition,
        ecog=ecog,
        history=history,
        exams=exams,
        patient_informed=informed,
        priority=priority or 0,
        presentation=presentation,
        **labels,
    )
    if for_submission:
        for name, what in REQUIRED_FOR_SUBMISSION.items():
            if name in errors:
                continue
            value = getattr(fiche, name)
            if value in ("", None):
                errors[name] = Reason("required to submit the case: {what}", what=what)
        for name, what in (
            ("tnm_kind", "required to submit the case: clinical (c) or pathological (p)"),
            ("tnm_edition", "required to submit the case: the TNM edition (e.g. 8)"),
        ):
            if name not in errors and getattr(fiche, name) in ("", None):
                errors[name] = what
    if errors:
        raise fiche_refused(errors)
    return fiche


def one_of(choices: Iterable[str]) -> Reason:
    return Reason("one of {choices}", choices=", ".join(choices))


def fiche_refused(errors: Mapping[str, str]) -> ValidationError:
    """The fiche's refusal: one message naming the fields, a reason for each."""
    return ValidationError(
        Reason("the fiche RCP has errors: {fields}", fields=", ".join(sorted(errors))),
        fields=errors,
    )


def fiche_from_json(data: Mapping[str, Any]) -> Fiche:
    """A stored fiche (already validated) back as a value."""
    known = {k: data[k] for k in Fiche.__dataclass_fields__ if k in data}
    return Fiche(**known)
