"""Shared CDA writing: the eSanté Luxembourg header, sections, narratives and entry values.

Document modules describe *what* goes in a document; this module knows *how* CDA spells it, in
the element order the HL7 schema requires. Narratives are rendered from Jinja2 templates in
``templates/documents/`` with autoescaping, parsed with the hardened parser and placed in each
section's ``<text>``, so no input can inject markup.

The header (every document's first ~75 elements, up to the legal authenticator) is written as one
string with every value escaped (``_header_xml``) and parsed once with the hardened parser: the
same tree as element-by-element ``SubElement`` calls, at a fraction of the CPU (the certificate
builder's hot path); the body is built with lxml calls as before.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeAlias

import jinja2
from lxml import etree

import templates as templates_pkg

from . import codes
from .codes import Code
from .values import Address, Header, Identifier, Practitioner, local_time
from .xsd import SAFE_PARSER

DOCUMENT_TEMPLATES = Path(next(iter(templates_pkg.__path__))) / "documents"
NSMAP: dict[str | None, str] = {None: codes.HL7_NS, "sdtc": codes.SDTC_NS, "xsi": codes.XSI_NS}
Element: TypeAlias = etree._Element
_NS_DECLARATIONS = "".join(
    f' xmlns="{v}"' if k is None else f' xmlns:{k}="{v}"' for k, v in NSMAP.items()
)


def q(tag: str) -> str:
    return f"{{{codes.HL7_NS}}}{tag}"


def sub(parent: Element, tag: str, text: str | None = None, **attrs: str | None) -> Element:
    """A child in the HL7 namespace; attributes whose value is None are left out."""
    child = etree.SubElement(parent, q(tag), {k: v for k, v in attrs.items() if v is not None})
    if text is not None:
        child.text = text
    return child


def ts(moment: datetime) -> str:
    """A CDA TS in Luxembourg local time with its UTC offset (20261127143000+0100)."""
    return local_time(moment).strftime("%Y%m%d%H%M%S%z")


def day(value: date) -> str:
    return value.strftime("%Y%m%d")


def code_el(parent: Element, tag: str, c: Code, **attrs: str | None) -> Element:
    return sub(parent, tag, code=c.code, codeSystem=c.system, displayName=c.display, **attrs)


def ii(parent: Element, tag: str, ident: Identifier) -> Element:
    return sub(parent, tag, root=ident.root, extension=ident.extension)


def addr(parent: Element, a: Address, use: str | None = None) -> Element:
    el = sub(parent, "addr", use=use)
    sub(el, "streetAddressLine", a.street)
    sub(el, "postalCode", a.postal_code)
    sub(el, "city", a.city)
    sub(el, "country", a.country)
    return el


def person_name(parent: Element, given: str, family: str, prefix: str | None = None) -> Element:
    name = sub(parent, "name")
    if prefix:
        sub(name, "prefix", prefix)
    sub(name, "given", given)
    sub(name, "family", family)
    return name


def specialty_code(p: Practitioner) -> Code:
    return Code(p.specialty, codes.OID_KONSIL_SPECIALTIES, p.specialty_fr)


def assigned_entity(parent: Element, tag: str, p: Practitioner, h: Header | None) -> Element:
    """assignedAuthor / assignedEntity: ids, specialty, person and (optionally) organisation."""
    ent = sub(parent, tag)
    ii(ent, "id", p.id)
    if p.cns_code:
        sub(ent, "id", root=codes.OID_CNS_PROVIDER, extension=p.cns_code)
    code_el(ent, "code", specialty_code(p))
    person = sub(ent, "assignedPerson")
    person_name(person, p.given_name, p.family_name, p.title)
    if h is not None:
        org = sub(ent, "representedOrganization")
        ii(org, "id", h.organisation.id)
        sub(org, "name", h.organisation.name)
        if h.organisation.address:
            addr(org, h.organisation.address)
    return ent


# --- values of entries ---------------------------------------------------------------------


def _typed(parent: Element, xsi_type: str, **attrs: str | None) -> Element:
    el = sub(parent, "value", **attrs)
    el.set(f"{{{codes.XSI_NS}}}type", xsi_type)
    return el


def v_cd(parent: Element, c: Code) -> Element:
    return _typed(parent, "CD", code=c.code, codeSystem=c.system, displayName=c.display)


def v_bl(parent: Element, value: bool) -> Element:
    return _typed(parent, "BL", value="true" if value else "false")


def v_ts(parent: Element, value: date) -> Element:
    return _typed(parent, "TS", value=day(value))


def v_st(parent: Element, value: str) -> Element:
    el = _typed(parent, "ST")
    el.text = value
    return el


def v_ii(parent: Element, ident: Identifier) -> Element:
    return _typed(parent, "II", root=ident.root, extension=ident.extension)


def v_pq(parent: Element, value: Decimal, unit: str) -> Element:
    return _typed(parent, "PQ", value=str(value), unit=unit)


def v_ad(parent: Element, a: Address) -> Element:
    el = _typed(parent, "AD")
    sub(el, "streetAddressLine", a.street)
    sub(el, "postalCode", a.postal_code)
    sub(el, "city", a.city)
    sub(el, "country", a.country)
    return el


def interval(
    parent: Element, low: date | None, high: date | None, tag: str = "effectiveTime"
) -> Element:
    el = sub(parent, tag)
    if low is not None:
        sub(el, "low", value=day(low))
    if high is not None:
        sub(el, "high", value=day(high))
    return el


def observation(
    section: Element,
    c: Code,
    value: Callable[[Element], object] | None = None,
    *,
    when: date | tuple[date | None, date | None] | None = None,
    mood: str = "EVN",
    ident: Identifier | None = None,
) -> Element:
    """An observation in a new ``<entry>`` of ``section``."""
    return observation_in(sub(section, "entry"), c, value, when=when, mood=mood, ident=ident)


def observation_in(
    parent: Element,
    c: Code,
    value: Callable[[Element], object] | None = None,
    *,
    when: date | tuple[date | None, date | None] | None = None,
    mood: str = "EVN",
    ident: Identifier | None = None,
) -> Element:
    """An observation directly under ``parent`` (an entry or an entryRelationship)."""
    obs = sub(parent, "observation", classCode="OBS", moodCode=mood)
    if ident is not None:
        ii(obs, "id", ident)
    code_el(obs, "code", c)
    sub(obs, "statusCode", code="completed")
    if isinstance(when, tuple):
        interval(obs, when[0], when[1])
    elif when is not None:
        sub(obs, "effectiveTime", value=day(when))
    if value is not None:
        value(obs)
    return obs


def _value(xsi_type: str, content: str = "", *, text: str | None = None, **attrs: str) -> str:
    """``v_*`` as a string: xsi:type comes last, as ``_typed`` sets it after the others."""
    return _e("value", content, text=text, **attrs, **{"xsi:type": xsi_type})


def cd_xml(c: Code) -> str:
    return _value("CD", code=c.code, codeSystem=c.system, displayName=c.display)


def bl_xml(value: bool) -> str:
    return _value("BL", value="true" if value else "false")


def ts_xml(value: date) -> str:
    return _value("TS", value=day(value))


def ad_xml(a: Address) -> str:
    return _value(
        "AD",
        _e("streetAddressLine", text=a.street)
        + _e("postalCode", text=a.postal_code)
        + _e("city", text=a.city)
        + _e("country", text=a.country),
    )


def observation_xml(
    c: Code,
    value: str = "",
    *,
    when: date | tuple[date | None, date | None] | None = None,
    mood: str = "EVN",
    ident: Identifier | None = None,
) -> str:
    """``observation`` (in its own ``<entry>``) as a string, for ``Section.entries_xml``."""
    inner = (_ii("id", ident) if ident is not None else "") + _code("code", c)
    inner += _e("statusCode", code="completed")
    if isinstance(when, tuple):
        low, high = when
        inner += _e(
            "effectiveTime",
            (_e("low", value=day(low)) if low is not None else "")
            + (_e("high", value=day(high)) if high is not None else ""),
        )
    elif when is not None:
        inner += _e("effectiveTime", value=day(when))
    return _e("entry", _e("observation", inner + value, classCode="OBS", moodCode=mood))


# --- narrative -----------------------------------------------------------------------------


@lru_cache(maxsize=1)
def narrative_env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(DOCUMENT_TEMPLATES)),
        autoescape=True,  # narratives are XML: every value is escaped
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["fr_date"] = fr_date
    env.filters["fr_datetime"] = fr_datetime
    return env


def fr_date(value: date) -> str:
    return value.strftime("%d/%m/%Y")


def fr_datetime(value: datetime) -> str:
    return local_time(value).strftime("%d/%m/%Y %H:%M")


_PART = re.compile(r'<part name="([^"]*)"(?:/>|>(.*?)</part>)', re.DOTALL)


def render_part_strings(template: str, context: Mapping[str, Any]) -> dict[str, str]:
    """The ``<part name="…">`` contents of a rendered narrative template, as XML strings."""
    xml = narrative_env().get_template(template).render(**context)
    return {m.group(1): m.group(2) or "" for m in _PART.finditer(xml)}


# --- the header as one string --------------------------------------------------------------

_ATTR_ESCAPES = str.maketrans(
    {
        "&": "&amp;",
        "<": "&lt;",
        ">": "&gt;",
        '"': "&quot;",
        "\n": "&#10;",
        "\r": "&#13;",
        "\t": "&#9;",
    }
)
_TEXT_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "\r": "&#13;"})


def _e(tag: str, content: str = "", *, text: str | None = None, **attrs: str | None) -> str:
    """``<tag a="…">content</tag>`` with escaped values; None attributes are left out."""
    a = "".join(f' {k}="{v.translate(_ATTR_ESCAPES)}"' for k, v in attrs.items() if v is not None)
    if text is not None:  # an element with text, even empty, is written <tag></tag> by lxml
        return f"<{tag}{a}>{text.translate(_TEXT_ESCAPES)}{content}</{tag}>"
    return f"<{tag}{a}>{content}</{tag}>" if content else f"<{tag}{a}/>"


def _ii(tag: str, ident: Identifier) -> str:
    return _e(tag, root=ident.root, extension=ident.extension)


def _code(tag: str, c: Code) -> str:
    return _e(tag, code=c.code, codeSystem=c.system, displayName=c.display)


def _addr(a: Address, use: str | None = None) -> str:
    return _e(
        "addr",
        _e("streetAddressLine", text=a.street)
        + _e("postalCode", text=a.postal_code)
        + _e("city", text=a.city)
        + _e("country", text=a.country),
        use=use,
    )


def _name(given: str, family: str, prefix: str | None = None) -> str:
    return _e(
        "name",
        (_e("prefix", text=prefix) if prefix else "")
        + _e("given", text=given)
        + _e("family", text=family),
    )


def _assigned_entity(tag: str, p: Practitioner, h: Header) -> str:
    """``assigned_entity`` with the organisation, as a string."""
    org = h.organisation
    return _e(
        tag,
        _ii("id", p.id)
        + (_e("id", root=codes.OID_CNS_PROVIDER, extension=p.cns_code) if p.cns_code else "")
        + _code("code", specialty_code(p))
        + _e("assignedPerson", _name(p.given_name, p.family_name, p.title))
        + _e(
            "representedOrganization",
            _ii("id", org.id)
            + _e("name", text=org.name)
            + (_addr(org.address) if org.address else ""),
        ),
    )


def _header_xml(spec: DocumentSpec) -> str:
    """The ClinicalDocument element with its header children, up to the legal authenticator."""
    dtype = codes.BY_KIND[spec.kind]
    h, now = spec.header, spec.now
    when = ts(now)
    patient = h.patient
    org = h.organisation
    parts = [
        _e("realmCode", code=codes.LU_REALM),
        _e("typeId", root=codes.CDA_TYPE_ID_ROOT, extension=codes.CDA_TYPE_ID_EXTENSION),
        _e("templateId", root=codes.LU_HEADER_TEMPLATE),
        _e("templateId", root=dtype.template),
        *(_e("templateId", root=t) for t in spec.extra_templates),
        _ii("id", h.document_id),
        _e(
            "code",
            code=dtype.code,
            codeSystem=codes.OID_DOCUMENT_TYPES,
            codeSystemName="eSanté DocumentType",
            displayName=dtype.display,
        ),
        _e("title", text=h.title or dtype.display),
        _e("effectiveTime", value=when),
        _e(
            "confidentialityCode",
            code=h.confidentiality,
            codeSystem=codes.OID_CONFIDENTIALITY,
            displayName=codes.CONFIDENTIALITY.get(h.confidentiality),
        ),
        _e("languageCode", code=codes.LU_LANGUAGE),
        _ii("setId", h.set_id),
        _e("versionNumber", value=str(h.version)),
        _e(
            "recordTarget",
            _e(
                "patientRole",
                _e("id", root=codes.OID_MATRICULE, extension=patient.matricule)
                + (_addr(patient.address, use="H") if patient.address else "")
                + _e(
                    "patient",
                    _name(patient.given_name, patient.family_name)
                    + _e(
                        "administrativeGenderCode",
                        code=patient.sex,
                        codeSystem=codes.OID_ADMIN_GENDER,
                        displayName=codes.ADMIN_GENDER.get(patient.sex),
                    )
                    + _e("birthTime", value=day(patient.birth_date)),
                ),
            ),
        ),
        _e("author", _e("time", value=when) + _assigned_entity("assignedAuthor", h.author, h)),
        _e(
            "custodian",
            _e(
                "assignedCustodian",
                _e(
                    "representedCustodianOrganization",
                    _ii("id", org.id)
                    + _e("name", text=org.name)
                    + (_addr(org.address) if org.address else ""),
                ),
            ),
        ),
        *(
            _e(
                "informationRecipient",
                _e("intendedRecipient", _e("receivedOrganization", _e("name", text=r))),
            )
            for r in h.recipients
        ),
        _e(
            "legalAuthenticator",
            _e("time", value=when)
            + _e("signatureCode", code="S")
            + _assigned_entity("assignedEntity", h.authenticator, h),
        ),
    ]
    return f"<ClinicalDocument{_NS_DECLARATIONS}>{''.join(parts)}</ClinicalDocument>"


# --- the document ---------------------------------------------------------------------------


@dataclass
class Section:
    code: Code
    title: str
    part: str  # the narrative part's name
    entries: Callable[[Element], None] | None = None
    subject: Callable[[Element], None] | None = None  # e.g. the sick child, before the entries
    entries_xml: str = ""  # the entries as a string (observation_xml), instead of ``entries``


@dataclass
class DocumentSpec:
    kind: str
    header: Header
    now: datetime
    sections: Sequence[Section]
    narrative: str  # template name under templates/documents/
    context: Mapping[str, Any]
    documentation_of: Callable[[Element], None] | None = None
    component_of: Callable[[Element], None] | None = None
    extra_templates: tuple[str, ...] = field(default_factory=tuple)


def build(spec: DocumentSpec) -> bytes:
    h, now = spec.header, spec.now
    root = etree.fromstring(_header_xml(spec).encode(), SAFE_PARSER)
    if spec.documentation_of is not None:
        spec.documentation_of(root)
    if h.replaces is not None:
        related = sub(root, "relatedDocument", typeCode="RPLC")
        parent = sub(related, "parentDocument")
        ii(parent, "id", h.replaces.parent_id)
        ii(parent, "setId", h.set_id)
        sub(parent, "versionNumber", value=str(h.replaces.parent_version))
    if spec.component_of is not None:
        spec.component_of(root)

    # The body as one string (section scaffolding + each narrative part as the template wrote
    # it), parsed once; entries and subjects are then added to the parsed sections.
    parts = render_part_strings(spec.narrative, {**spec.context, "header": h, "now": now})
    chunks = []
    for s in spec.sections:
        if s.entries_xml and (s.subject is not None or s.entries is not None):
            raise ValueError("a section's entries are either a string or built, not both")
        part = parts.get(s.part)
        if part is None:
            raise LookupError(f"narrative {spec.narrative} has no part {s.part!r}")
        chunks.append(
            "<component><section>"
            f"{_code('code', s.code)}{_e('title', text=s.title)}<text>{part}</text>"
            f"{s.entries_xml}</section></component>"
        )
    body = etree.fromstring(
        f"<component{_NS_DECLARATIONS}><structuredBody>{''.join(chunks)}</structuredBody>"
        "</component>".encode(),
        SAFE_PARSER,
    )
    root.append(body)  # lxml drops the now redundant namespace declarations
    for s, component in zip(spec.sections, body[0], strict=True):
        section = component[0]
        if s.subject is not None:
            s.subject(section)
        if s.entries is not None:
            s.entries(section)
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True))
