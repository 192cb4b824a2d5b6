"""XML Schema validation of CDA documents against the HL7 CDA R2 schema with SDTC extensions.

The schema is reference data kept outside the repository: ``KONSIL_CDA_SCHEMA_DIR`` (the folder
holding ``infrastructure/cda/CDA_SDTC.xsd``), by default ``../shared/data/cda-schema`` beside the
project checkout. Parsing is hardened: no network, no DTDs, no entity expansion.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from lxml import etree

from konsil.errors import ConfigError

ENTRY = Path("infrastructure") / "cda" / "CDA_SDTC.xsd"
_PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SCHEMA_DIR = _PROJECT_ROOT.parent / "shared" / "data" / "cda-schema"

SAFE_PARSER = etree.XMLParser(
    resolve_entities=False,
    no_network=True,
    load_dtd=False,
    huge_tree=False,
    remove_blank_text=False,
)


def schema_dir(explicit: str | Path | None = None) -> Path:
    return Path(explicit or os.environ.get("KONSIL_CDA_SCHEMA_DIR") or DEFAULT_SCHEMA_DIR)


def schema_available(explicit: str | Path | None = None) -> bool:
    return (schema_dir(explicit) / ENTRY).is_file()


@lru_cache(maxsize=4)
def _load(path: str) -> etree.XMLSchema:
    entry = Path(path) / ENTRY
    if not entry.is_file():
        raise ConfigError(
            f"CDA schema not found at {entry}: set KONSIL_CDA_SCHEMA_DIR to the folder holding "
            "infrastructure/cda/CDA_SDTC.xsd"
        )
    return etree.XMLSchema(etree.parse(str(entry)))


def parse(xml: bytes) -> etree._Element:
    """Parse untrusted XML safely; raises ``etree.XMLSyntaxError`` on malformed input."""
    return etree.fromstring(xml, SAFE_PARSER)


def xsd_errors(xml: bytes | etree._Element, *, schema: str | Path | None = None) -> list[str]:
    """Schema violations as readable lines (empty when the document is valid).

    Takes the bytes, or a tree already parsed with ``parse`` (saves parsing twice).
    """
    if isinstance(xml, bytes):
        try:
            doc = parse(xml)
        except etree.XMLSyntaxError as exc:
            return [f"not well-formed XML: {exc}"]
    else:
        doc = xml
    validator = _load(str(schema_dir(schema)))
    if validator.validate(doc):
        return []
    return [f"line {e.line}: {e.message}" for e in validator.error_log]
