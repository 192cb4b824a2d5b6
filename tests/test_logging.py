from __future__ import annotations

import json
import logging

import pytest

from konsil.identity.matricule import make_matricule
from konsil.logs import JsonFormatter, redact
from tests.conftest import Client, Person, csrf_from, web_login


def test_redact_query_secrets() -> None:
    assert redact("/x?access_token=abc&room=1") == "/x?access_token=[redacted]&room=1"
    assert redact("password=hunter2 code=123456") == "password=[redacted] code=[redacted]"


def test_json_formatter_emits_one_object_per_line() -> None:
    rec = logging.LogRecord("konsil.http", logging.INFO, __file__, 1, "request", None, None)
    rec.route = "/login"
    out = json.loads(JsonFormatter().format(rec))
    assert out["msg"] == "request" and out["route"] == "/login" and out["level"] == "INFO"


async def test_no_patient_data_or_secrets_in_logs(
    client: Client, admin: Person, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    matricule = make_matricule("19781124", 2)
    await web_login(client, admin)
    csrf = await csrf_from(client, "/account/security")
    resp = await client.post(
        "/patients",
        data={
            "csrf_token": csrf,
            "matricule": matricule,
            "given_name": "Marie",
            "family_name": "Wagnerova",
            "birth_date": "1978-11-24",
            "sex": "F",
        },
    )
    assert resp.status == 201
    await client.get("/patients?q=Wagnerova")
    text = "\n".join(JsonFormatter().format(r) for r in caplog.records)
    assert '"route"' in text  # the access log did run
    for secret in (matricule, "Wagnerova", admin.password, csrf):
        assert secret not in text
