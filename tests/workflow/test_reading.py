"""Reading Konsil's CDA back: every sick-leave variant and its header survive a round trip."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tests.workflow.helpers import CONSULT
from tests.workflow.samples import NOW, header
from tests.workflow.test_sick_leave import CASES
from workflow.cda.reading import read_header, read_sick_leave
from workflow.cda.sick_leave import build_sick_leave
from workflow.cda.teleconsultation import build_teleconsultation
from workflow.cda.values import Identifier, Replacement


@pytest.mark.parametrize("case", CASES)
def test_certificate_round_trip(case: str) -> None:
    cert = CASES[case]
    h = header()
    xml = build_sick_leave(cert, h, now=NOW)
    read = read_sick_leave(xml)
    expected = cert if cert.first_day_off != cert.start else replace(cert, first_day_off=None)
    assert read == expected
    back = read_header(xml)
    assert back.effective_time == NOW
    assert back.header.patient == h.patient
    assert back.header.author == h.author
    assert back.header.document_id == h.document_id and back.header.replaces is None
    # the value read back builds the same document again
    assert build_sick_leave(read, back.header, now=back.effective_time) == xml


def test_replacement_header_is_read() -> None:
    h = replace(
        header(),
        document_id=Identifier("2.25.42"),
        version=2,
        replaces=Replacement(Identifier("2.25.41"), 1),
    )
    xml = build_sick_leave(CASES["illness"], h, now=NOW)
    back = read_header(xml).header
    assert back.version == 2 and back.replaces == Replacement(Identifier("2.25.41"), 1)
    assert back.set_id == h.set_id


def test_other_documents_are_not_certificates() -> None:
    xml = build_teleconsultation(CONSULT, header(), now=NOW)
    assert read_header(xml).header.patient == header().patient
    with pytest.raises(ValueError, match="not a sick-leave certificate"):
        read_sick_leave(xml)
