from __future__ import annotations

from konsil.identity.matricule import make_matricule
from tests.conftest import Client, Person, csrf_from, web_login


async def test_healthz_and_metrics(client: Client) -> None:
    resp = await client.get("/healthz")
    assert resp.status == 200 and (await resp.json())["status"] == "ok"
    await client.get("/login")
    text = await (await client.get("/metrics")).text()
    assert 'konsil_http_requests_total{method="GET",route="/login",status="200"}' in text


async def test_security_headers(client: Client) -> None:
    resp = await client.get("/login")
    h = resp.headers
    assert "default-src 'self'" in h["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in h["Content-Security-Policy"]
    assert h["X-Content-Type-Options"] == "nosniff"
    assert h["X-Frame-Options"] == "DENY"
    assert h["Referrer-Policy"] == "no-referrer"


async def test_errors_rendered_per_surface(client: Client) -> None:
    m = await client.get("/_matrix/client/v3/nonexistent")
    assert m.status == 404
    assert await m.json() == {"errcode": "M_UNRECOGNIZED", "error": "unrecognised request"}
    a = await client.get("/api/v1/patients/unknown")
    assert a.status == 401 and a.headers["Content-Type"].startswith("application/problem+json")
    body = await a.json()
    assert body["status"] == 401 and body["title"]
    p = await client.get("/no/such/page")
    assert p.status == 404 and "text/html" in p.headers["Content-Type"]
    assert "Page introuvable" in await p.text()


async def test_language_switch(client: Client) -> None:
    assert "Se connecter" in await (await client.get("/login")).text()
    await client.get("/lang/en?next=/login")
    assert ">Sign in<" in await (await client.get("/login")).text()


async def test_open_redirect_refused(client: Client, admin: Person) -> None:
    token = await csrf_from(client, "/login")
    resp = await client.post(
        "/login",
        data={
            "username": "admin",
            "password": admin.password,
            "csrf_token": token,
            "next": "//evil.example/",
        },
        allow_redirects=False,
    )
    assert resp.headers["Location"] == "/"


async def test_api_patients_with_bearer_token(client: Client, admin: Person) -> None:
    from konsil import appkeys as K

    async with client.app[K.DB].transaction() as s:
        token = await client.app[K.AUTH].do_create_api_token(s, admin.account_id, "dpi")
    h = {"Authorization": f"Bearer {token}"}
    good = {
        "matricule": make_matricule("19650312", 1),
        "given_name": "Jean",
        "family_name": "Reuter",
        "birth_date": "1965-03-12",
        "sex": "M",
    }
    resp = await client.post("/api/v1/patients", json=good, headers=h)
    assert resp.status == 201
    dup = await client.post("/api/v1/patients", json=good, headers=h)
    assert dup.status == 409
    bad = await client.post(
        "/api/v1/patients", json={**good, "matricule": "1965031200100"}, headers=h
    )
    assert bad.status == 400 and "matricule" in (await bad.json())["errors"]
    notjson = await client.post("/api/v1/patients", data=b"{nope", headers=h)
    assert notjson.status == 400
    wrong_date = await client.post(
        "/api/v1/patients", json={**good, "birth_date": "1965-03-13"}, headers=h
    )
    assert wrong_date.status == 400 and "birth_date" in (await wrong_date.json())["errors"]
    resp = await client.get("/api/v1/me", headers={"Authorization": "Bearer nope"})
    assert resp.status == 401
    spec = await (await client.get("/api/v1/openapi.json")).json()
    assert spec["openapi"].startswith("3.") and "/api/v1/patients" in spec["paths"]


async def test_patient_pages(client: Client, admin: Person) -> None:
    csrf = await web_login(client, admin)
    resp = await client.post(
        "/patients",
        data={
            "csrf_token": csrf,
            "matricule": make_matricule("19900507", 3),
            "given_name": "Luc",
            "family_name": "Thill",
            "birth_date": "1990-05-07",
            "sex": "M",
        },
    )
    assert resp.status == 201
    found = await (await client.get("/patients?q=thill")).text()
    assert "Luc" in found
    bad = await client.post(
        "/patients",
        data={
            "csrf_token": csrf,
            "matricule": "12",
            "given_name": "",
            "family_name": "X",
            "birth_date": "1990-05-07",
        },
    )
    assert bad.status == 400
    text = await bad.text()
    assert "doit comporter 13 chiffres" in text and "obligatoire" in text


async def test_admin_issues_and_revokes_api_token(client: Client, admin: Person) -> None:
    import re

    from konsil import appkeys as K
    from konsil.audit.service import SYSTEM
    from konsil.identity.service import NewAccount

    await client.app[K.IDENTITY].do_create_account(
        SYSTEM, NewAccount("dpi.chl", "dpi-password-0123", "practitioner")
    )
    csrf = await web_login(client, admin)
    bad = await client.post(
        "/admin/tokens", data={"csrf_token": csrf, "name": "", "username": "nobody"}
    )
    assert bad.status == 400 and "no active account" in await bad.text()
    resp = await client.post(
        "/admin/tokens",
        data={"csrf_token": csrf, "name": "DPI CHL", "username": "dpi.chl", "days": "30"},
    )
    assert resp.status == 201
    m = re.search(r'id="new-token">(ksl_[^<]+)<', await resp.text())
    assert m
    token = m.group(1)
    me = await client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert (await me.json())["username"] == "dpi.chl"
    listing = await (await client.get("/admin/tokens")).text()
    assert token not in listing  # shown once, stored hashed
    hashed = re.search(r"/admin/tokens/([0-9a-f]{64})/revoke", listing)
    assert hashed
    await client.post(f"/admin/tokens/{hashed.group(1)}/revoke", data={"csrf_token": csrf})
    me = await client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert me.status == 401
