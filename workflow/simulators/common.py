"""What both simulators share: the injectable document validator, fault injection and the store.

The store keeps each accepted submission in its own folder: the document exactly as received and
a ``metadata.json`` with the metadata and the acknowledgement that was sent. With ``journal=True``
(``konsil simulate … --journal``) it appends every accepted submission instead as one line of
``submissions.jsonl`` (metadata + the document's exact bytes in base64, one ``write`` on an
``O_APPEND`` descriptor): creating a folder and two files costs ~1.4 ms of CPU per document on
this machine's ext4, an append ~0.01 ms. Either form is read back at start-up, so a restarted
simulator still recognises a repeated idempotency key.
"""

from __future__ import annotations

import asyncio
import base64
import fcntl
import json
import os
import random
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nacl.exceptions
import nacl.signing
from aiohttp import web
from lxml import etree

from konsil.errors import ValidationError
from konsil.identity.matricule import check_matricule
from workflow.cda.validation import validate_cda
from workflow.cda.xsd import parse
from workflow.signing import public_key_from_pem

# The CDA check the simulators apply (XML Schema + LU profile by default; injectable for tests).
Validator = Callable[[bytes], list[str]]
# Decides the fate of one request: None (handle it), "503", "timeout" (never answer), or "lost"
# (handle and store it, then answer 503 as if the answer was lost on the way back).
FaultPlan = Callable[[], str | None]

HL7 = "urn:hl7-org:v3"
MATRICULE_OID = "1.3.182.4.4"


def random_faults(rate: float, rng: random.Random) -> FaultPlan:
    def plan() -> str | None:
        if rate <= 0 or rng.random() >= rate:
            return None
        return rng.choice(("503", "timeout", "lost"))

    return plan


def scripted_faults(script: list[str | None]) -> FaultPlan:
    """Faults in a fixed order (tests), then none."""
    it: Iterator[str | None] = iter(script)
    return lambda: next(it, None)


@dataclass
class SimulatorSettings:
    store: Path
    latency_ms: int = 0
    faults: FaultPlan = field(default=lambda: None)
    validator: Validator = validate_cda
    timeout_hang_seconds: float = 3600.0
    # Signing key id → raw Ed25519 public key of the organisations the receiver trusts; None
    # checks only that a 64-byte signature is present.
    trusted_keys: dict[str, bytes] | None = None
    # Store accepted submissions in one append-only journal instead of a folder each.
    journal: bool = False


def load_trust(folder: Path) -> dict[str, bytes]:
    """The public keys ``konsil documents export-keys`` wrote: ``<signing key id>.pem``."""
    keys: dict[str, bytes] = {}
    for pem in sorted(folder.glob("*.pem")):
        try:
            keys[pem.stem] = public_key_from_pem(pem.read_text())
        except ValueError as exc:
            raise ValueError(f"{pem.name}: {exc}") from None
    return keys


def verify_signature(
    trusted: dict[str, bytes], key_id: object, document: bytes, signature: bytes
) -> tuple[str, str] | None:
    """None when a trusted key signed these exact bytes; else (code, reason)."""
    key = trusted.get(key_id) if isinstance(key_id, str) else None
    if key is None:
        return ("SIGNATURE_KEY_UNKNOWN", "the signing key is not registered with the receiver")
    try:
        nacl.signing.VerifyKey(key).verify(document, signature)
    except nacl.exceptions.BadSignatureError:
        return ("SIGNATURE_INVALID", "the detached signature does not match the document")
    return None


def safe_name(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", key)[:150]


JOURNAL = "submissions.jsonl"


class SubmissionStore:
    """Accepted submissions by dedupe key. With a journal, several processes (``konsil simulate
    cns --processes N``) can share one store: each holds the journal's ``flock`` while it
    decides and appends (``exclusive()``), after reading what the others appended meanwhile,
    so a key is accepted once and references are numbered once across all of them."""

    def __init__(self, root: Path, *, journal: bool = False) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self._acks: dict[str, dict[str, Any]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._journal: int | None = None
        self._offset = 0  # journal bytes read (ours and the other processes')
        for meta in root.glob("*/metadata.json"):
            data = json.loads(meta.read_text())
            self._acks[data["dedupe_key"]] = data
        self.count = len(self._acks)
        if journal:
            self._journal = self._open_journal(root / JOURNAL)

    def _open_journal(self, path: Path) -> int:
        """Replay the journal; a torn last line (a crash in mid-write) was never acknowledged and
        is cut off (under the lock: another process may be appending already)."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            self._journal = fd
            self._catch_up()
            os.truncate(fd, self._offset)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
        return fd

    def _catch_up(self) -> None:
        """Replay the complete lines appended since we last read (by other processes)."""
        assert self._journal is not None
        size = os.fstat(self._journal).st_size
        if size <= self._offset:
            return
        raw = os.pread(self._journal, size - self._offset, self._offset)
        for line in raw.splitlines(keepends=True):
            if not line.endswith(b"\n"):
                break
            self._replay(json.loads(line))
            self._offset += len(line)

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Decide and store with nobody else deciding: with a journal, its ``flock`` (other
        processes sharing it) and the store brought up to date; no ``await`` inside."""
        if self._journal is None:
            yield
            return
        fcntl.flock(self._journal, fcntl.LOCK_EX)
        try:
            self._catch_up()
            yield
        finally:
            fcntl.flock(self._journal, fcntl.LOCK_UN)

    def _replay(self, record: dict[str, Any]) -> None:
        key = record["key"]
        if "annotate" in record:
            self._acks[key] = {**self._acks[key], **record["annotate"]}
        else:
            self._acks[key] = record["metadata"]
            self.count += 1

    def _append(self, record: dict[str, Any]) -> None:
        assert self._journal is not None
        line = json.dumps(record, separators=(",", ":"), sort_keys=True).encode() + b"\n"
        # One write with O_APPEND: a record is in the file whole or (after a crash) torn at its
        # end, where the replay stops. Under ``exclusive()`` nobody else appends meanwhile.
        if os.write(self._journal, line) != len(line):
            raise OSError("short write to the submissions journal")
        self._offset += len(line)

    def close(self) -> None:
        if self._journal is not None:
            os.close(self._journal)
            self._journal = None

    def lock(self, key: str) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    def get(self, key: str) -> dict[str, Any] | None:
        return self._acks.get(key)

    def put(self, key: str, document: bytes, filename: str, metadata: dict[str, Any]) -> None:
        data = {**metadata, "dedupe_key": key, "file": filename}
        if self._journal is not None:
            self._append(
                {"key": key, "metadata": data, "document": base64.b64encode(document).decode()}
            )
        else:
            folder = self.root / safe_name(key)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / filename).write_bytes(document)
            tmp = folder / "metadata.json.tmp"
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
            # metadata.json appears last and atomically: its presence means "accepted and stored"
            os.replace(tmp, folder / "metadata.json")
        self._acks[key] = data
        self.count += 1

    def find(self, field: str, value: str) -> dict[str, Any] | None:
        """The stored submission whose metadata ``field`` equals ``value`` (corrections are rare:
        a scan is enough)."""
        return next((d for d in self._acks.values() if d.get(field) == value), None)

    def annotate(self, key: str, changes: dict[str, Any]) -> None:
        """Update a stored submission's metadata (e.g. replaced by a newer version)."""
        data = {**self._acks[key], **changes}
        if self._journal is not None:
            self._append({"key": key, "annotate": changes})
        else:
            folder = self.root / safe_name(key)
            tmp = folder / "metadata.json.tmp"
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
            os.replace(tmp, folder / "metadata.json")
        self._acks[key] = data


def journal_submissions(root: Path) -> list[tuple[dict[str, Any], bytes]]:
    """(metadata, exact document bytes) of each submission in a store's journal, in order."""
    path = root / JOURNAL
    if not path.exists():
        return []
    out: dict[str, tuple[dict[str, Any], bytes]] = {}
    for line in path.read_bytes().splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break
        record = json.loads(line)
        key = record["key"]
        if "annotate" in record:
            meta, doc = out[key]
            out[key] = ({**meta, **record["annotate"]}, doc)
        else:
            out[key] = (record["metadata"], base64.b64decode(record["document"]))
    return list(out.values())


async def apply_faults(settings: SimulatorSettings) -> str | None:
    """Latency first, then the planned fault; returns "lost" for a store-then-fail fault."""
    if settings.latency_ms:
        await asyncio.sleep(settings.latency_ms / 1000)
    fault = settings.faults()
    if fault == "503":
        raise web.HTTPServiceUnavailable(text="simulated outage")
    if fault == "timeout":
        await asyncio.sleep(settings.timeout_hang_seconds)
        raise web.HTTPGatewayTimeout(text="simulated timeout")
    return fault


def _root(xml: bytes | etree._Element) -> etree._Element | None:
    if not isinstance(xml, bytes):
        return xml
    try:
        return parse(xml)
    except etree.XMLSyntaxError:
        return None


def cda_patient_matricule(xml: bytes | etree._Element) -> str | None:
    """The patient's matricule in the CDA header (bytes, or a tree already parsed)."""
    root = _root(xml)
    if root is None:
        return None
    for el in root.iterfind(f"{{{HL7}}}recordTarget/{{{HL7}}}patientRole/{{{HL7}}}id"):
        if el.get("root") == MATRICULE_OID:
            ext = el.get("extension")
            return None if ext is None else str(ext)
    return None


def cda_type_code(xml: bytes | etree._Element) -> str | None:
    root = _root(xml)
    if root is None:
        return None
    code = root.find(f"{{{HL7}}}code")
    return None if code is None else code.get("code")


def matricule_problem(value: str) -> str | None:
    try:
        check_matricule(value)
    except ValidationError as exc:
        return exc.message
    return None
