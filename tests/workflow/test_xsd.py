from __future__ import annotations

import pytest

from workflow.cda.xsd import schema_available, xsd_errors

pytestmark = pytest.mark.skipif(
    not schema_available(), reason="CDA schema not found: set KONSIL_CDA_SCHEMA_DIR"
)

MINIMAL = b"""<?xml version="1.0" encoding="UTF-8"?>
<ClinicalDocument xmlns="urn:hl7-org:v3">
  <typeId root="2.16.840.1.113883.1.3" extension="POCD_HD000040"/>
  <id root="1.2.3" extension="x"/>
  <code code="DT-20002" codeSystem="1.3.182.5.9"/>
  <effectiveTime value="20261127100000+0100"/>
  <confidentialityCode code="N" codeSystem="2.16.840.1.113883.5.25"/>
  <recordTarget><patientRole><id root="1.3.182.4.4" extension="1983041201264"/></patientRole></recordTarget>
  <author><time value="20261127"/><assignedAuthor><id root="1.2.3" extension="a"/></assignedAuthor></author>
  <custodian><assignedCustodian><representedCustodianOrganization><id root="1.2.3"/></representedCustodianOrganization></assignedCustodian></custodian>
  <component><nonXMLBody><text>x</text></nonXMLBody></component>
</ClinicalDocument>
"""


def test_minimal_document_validates() -> None:
    assert xsd_errors(MINIMAL) == []


def test_schema_violation_is_reported() -> None:
    bad = MINIMAL.replace(b"<effectiveTime", b"<bogus/><effectiveTime")
    errors = xsd_errors(bad)
    assert errors and "bogus" in errors[0]


def test_malformed_and_hostile_xml() -> None:
    assert xsd_errors(b"<ClinicalDocument")[0].startswith("not well-formed XML")
    billion = (
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaaaaaaaa">'
        b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]><x>&b;</x>'
    )
    errors = xsd_errors(billion)
    assert errors  # never valid CDA, and entities are not expanded into a valid body
