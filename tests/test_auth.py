from __future__ import annotations

from collections.abc import Awaitable, Callable

import pyotp
from aiohttp import web

from konsil import appkeys as K
from konsil.auth import totp
from konsil.clock import FakeClock
from konsil.config import AuthConfig
from tests.conftest import Client, Person, csrf_from, web_login

CreateUser = Callable[..., Awaitable[Person]]


async def _post_login(client: Client, username: str, password: str) -> tuple[int, str]:
    token = await csrf_from(client, "/login")
    resp = await client.post(
        "/login",
        data={"username": username, "password": password, "csrf_token": token, "next": "/"},
        allow_redirects=False,
    )
    return resp.status, resp.headers.get("Location", "") or await resp.text()


async def test_login_success_opens_dashboard(client: Client, create_user: CreateUser) -> None:
    doc = await create_user("dr.weber", display_name="Anne Weber")
    token = await csrf_from(client, "/login")
    resp = await client.post(
        "/login",
        data={"username": doc.username, "password": doc.password, "csrf_token": token, "next": "/"},
        allow_redirects=False,
    )
    assert (resp.status, resp.headers["Location"]) == (303, "/")
    set_cookie = resp.headers["Set-Cookie"]
    assert set_cookie.startswith("konsil_session=")
    assert "HttpOnly" in set_cookie and "SameSite=Strict" in set_cookie
    page = await client.get("/")
    assert page.status == 200
    assert "Anne Weber" in await page.text()


async def test_login_failure_and_unknown_user(client: Client, create_user: CreateUser) -> None:
    doc = await create_user("dr.weber")
    status, body = await _post_login(client, doc.username, "not-the-password")
    assert status == 401 and "identifiant ou mot de passe incorrect" in body
    status, body = await _post_login(client, "nobody", "whatever-password")
    assert status == 401 and "identifiant ou mot de passe incorrect" in body
    assert (await client.get("/", allow_redirects=False)).status == 303


async def test_lockout_and_backoff(
    client: Client, create_user: CreateUser, clock: FakeClock
) -> None:
    doc = await create_user("dr.weber")
    threshold = client.app[K.CONFIG].auth.lockout_threshold
    for _ in range(threshold):
        status, _ = await _post_login(client, doc.username, "wrong-password-x")
        assert status == 401
    # Locked now: even the right password is refused, with a retry hint.
    status, body = await _post_login(client, doc.username, doc.password)
    assert status == 429 and "verrouillé" in body
    clock.advance(client.app[K.CONFIG].auth.lockout_seconds + 1)
    # One more failure after the lock doubles the wait.
    status, _ = await _post_login(client, doc.username, "wrong-password-x")
    assert status == 401
    clock.advance(client.app[K.CONFIG].auth.lockout_seconds + 1)
    status, _ = await _post_login(client, doc.username, doc.password)
    assert status == 429
    clock.advance(client.app[K.CONFIG].auth.lockout_seconds * 2)
    status, location = await _post_login(client, doc.username, doc.password)
    assert (status, location) == (303, "/")


async def test_totp_enrol_then_required(
    client: Client, create_user: CreateUser, clock: FakeClock
) -> None:
    doc = await create_user("dr.weber")
    csrf = await web_login(client, doc)
    page = await (await client.get("/account/security")).text()
    secret = page.split('name="secret" value="')[1].split('"')[0]
    # A wrong code is refused, the right one enrols.
    bad = await client.post(
        "/account/security", data={"csrf_token": csrf, "secret": secret, "code": "000000"}
    )
    assert bad.status == 401
    code = pyotp.TOTP(secret).at(clock.now())  # an independent implementation agrees with ours
    assert code == totp.code_at(secret, clock.now())
    ok = await client.post(
        "/account/security",
        data={"csrf_token": csrf, "secret": secret, "code": code},
        allow_redirects=False,
    )
    assert ok.status == 303
    # Sign out and in again: the password alone no longer opens the dashboard.
    await client.post("/logout", data={"csrf_token": csrf})
    status, location = await _post_login(client, doc.username, doc.password)
    assert (status, location) == (303, "/login/totp?next=/")
    assert (await client.get("/", allow_redirects=False)).status == 303
    csrf2 = await csrf_from(client, "/login/totp")
    wrong = await client.post(
        "/login/totp", data={"csrf_token": csrf2, "code": "123456", "next": "/"}
    )
    assert wrong.status == 401
    clock.advance(30)
    good = await client.post(
        "/login/totp",
        data={"csrf_token": csrf2, "next": "/", "code": pyotp.TOTP(secret).at(clock.now())},
        allow_redirects=False,
    )
    assert good.status == 303
    assert (await client.get("/")).status == 200


async def test_totp_required_by_role_forces_enrolment(
    aiohttp_client: Callable[..., Awaitable[Client]],
    make_app: Callable[..., web.Application],
    clock: FakeClock,
) -> None:
    from konsil.audit.service import SYSTEM
    from konsil.identity.service import NewAccount

    app = make_app(auth=AuthConfig(totp_required_roles=("admin",)))
    client = await aiohttp_client(app)
    await client.app[K.IDENTITY].do_create_account(
        SYSTEM, NewAccount("root", "root-password-123", "admin")
    )
    _status, location = await _post_login(client, "root", "root-password-123")
    assert location == "/login/totp?next=/"
    page = await (await client.get("/login/totp")).text()
    assert 'name="secret"' in page  # enrolment, not just a code prompt
    assert (await client.get("/admin/accounts", allow_redirects=False)).status == 303


async def test_csrf_rejected(client: Client, create_user: CreateUser, admin: Person) -> None:
    # Login form without a token
    resp = await client.post("/login", data={"username": "admin", "password": admin.password})
    assert resp.status == 403
    csrf = await web_login(client, admin)
    # A form post with a wrong token changes nothing
    resp = await client.post(
        "/admin/organisations", data={"csrf_token": "forged", "name": "Evil", "kind": "lab"}
    )
    assert resp.status == 403
    assert "Evil" not in await (await client.get("/admin/organisations")).text()
    # JSON API with the session cookie needs the header
    resp = await client.post("/api/v1/patients", json={})
    assert resp.status == 403
    resp = await client.post(
        "/admin/organisations", data={"csrf_token": csrf, "name": "CHL", "kind": "hospital"}
    )
    assert resp.status == 201


async def test_role_checks_on_admin_pages(client: Client, create_user: CreateUser) -> None:
    doc = await create_user("dr.weber")
    await web_login(client, doc)
    for path in ("/admin/accounts", "/admin/organisations", "/admin/audit"):
        resp = await client.get(path)
        assert resp.status == 403, path
    # Not signed in at all: sent to the login page
    client.session.cookie_jar.clear()
    resp = await client.get("/admin/accounts", allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"].startswith("/login?next=/admin/accounts")


async def test_admin_creates_account_and_patient(client: Client, admin: Person) -> None:
    csrf = await web_login(client, admin)
    resp = await client.post(
        "/admin/accounts",
        data={
            "csrf_token": csrf,
            "username": "dr.new",
            "password": "long-enough-pw",
            "role": "practitioner",
            "display_name": "Nina New",
            "specialty": "pathology",
            "profession": "physician",
        },
    )
    assert resp.status == 201
    assert "Nina New" in await resp.text()
    bad = await client.post(
        "/admin/accounts",
        data={
            "csrf_token": csrf,
            "username": "Bad User",
            "password": "short",
            "role": "king",
        },
    )
    assert bad.status == 400
    text = await bad.text()
    assert "aria-invalid" in text and "au moins 10 caractères" in text
    dup = await client.post(
        "/admin/accounts",
        data={
            "csrf_token": csrf,
            "username": "dr.new",
            "password": "long-enough-pw",
            "role": "practitioner",
        },
    )
    assert dup.status == 409


async def test_totp_seed_sealed_at_rest(
    client: Client, create_user: CreateUser, clock: FakeClock
) -> None:
    from sqlalchemy import select

    from konsil.identity.models import Account

    doc = await create_user("dr.weber")
    await client.app[K.AUTH].do_enrol_totp(
        doc.account_id,
        "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP",
        totp.code_at("JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP", clock.now()),
        ip=None,
    )
    async with client.app[K.DB].session() as s:
        stored = (
            await s.execute(select(Account.totp_secret).where(Account.id == doc.account_id))
        ).scalar_one()
    assert stored and "JBSWY3DP" not in stored
    assert client.app[K.AUTH].totp_sealer.open_text(stored) == "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"


async def test_deactivation(client: Client, create_user: CreateUser, admin: Person) -> None:
    doc = await create_user("dr.weber")
    csrf = await web_login(client, admin)
    own = await client.post(
        f"/admin/accounts/{admin.account_id}/active", data={"csrf_token": csrf, "active": "0"}
    )
    assert own.status == 403
    resp = await client.post(
        f"/admin/accounts/{doc.account_id}/active",
        data={"csrf_token": csrf, "active": "0"},
        allow_redirects=False,
    )
    assert resp.status == 303
    client.session.cookie_jar.clear()
    status, _ = await _post_login(client, doc.username, doc.password)
    assert status == 401


async def test_admin_edits_practitioner(
    client: Client, create_user: CreateUser, admin: Person
) -> None:
    from konsil.identity.models import Practitioner

    doc = await create_user("dr.weber", specialty="general-practice")
    csrf = await web_login(client, admin)
    page = await client.get(f"/admin/accounts/{doc.account_id}")
    assert page.status == 200 and 'value="general-practice" selected' in await page.text()
    resp = await client.post(
        f"/admin/accounts/{doc.account_id}",
        data={
            "csrf_token": csrf,
            "display_name": "Anne Weber",
            "role": "practitioner",
            "profession": "physician",
            "specialty": "medical-oncology",
            "cns_provider_code": "123456-78",
        },
    )
    assert resp.status == 200
    _account, pr = await client.app[K.IDENTITY].account_detail(doc.account_id)
    assert isinstance(pr, Practitioner)
    assert (pr.specialty, pr.cns_provider_code, pr.family_name) == (
        "medical-oncology",
        "123456-78",
        "Weber",
    )
    bad = await client.post(
        f"/admin/accounts/{doc.account_id}",
        data={
            "csrf_token": csrf,
            "display_name": "",
            "role": "practitioner",
            "specialty": "astrology",
        },
    )
    assert bad.status == 400 and "spécialité inconnue" in await bad.text()
    demote = await client.post(
        f"/admin/accounts/{admin.account_id}",
        data={"csrf_token": csrf, "display_name": "Admin", "role": "practitioner"},
    )
    assert demote.status == 400


async def test_login_rehashes_a_password_made_at_another_cost(
    client: Client, create_user: CreateUser
) -> None:
    """An operator who changes ``[auth] password_memory_kib``/``password_passes`` gets every
    account's hash at the new cost from its next successful login on."""
    from sqlalchemy import select

    from konsil.auth.passwords import HashProfile, PasswordHasher
    from konsil.identity.models import Account

    doc = await create_user("dr.weber")
    auth = client.app[K.AUTH]

    async def stored() -> str:
        async with client.app[K.DB].session() as s:
            h = await s.scalar(
                select(Account.password_hash).where(Account.username == doc.username)
            )
        assert h is not None
        return h

    before = await stored()
    assert not auth.hasher.needs_rehash(before)
    auth.hasher = PasswordHasher(HashProfile.of(memory_kib=16, passes=3))
    assert auth.hasher.needs_rehash(before)
    status, _ = await _post_login(client, doc.username, "not-the-password-0")
    assert status == 401 and await stored() == before  # a failed login changes nothing
    status, where = await _post_login(client, doc.username, doc.password)
    assert (status, where) == (303, "/")
    after = await stored()
    assert after.startswith("$argon2id$v=19$m=16,t=3,p=1$")
    assert not auth.hasher.needs_rehash(after)
    assert await auth.hasher.verify(after, doc.password)


def test_password_hasher_bounds_concurrent_hashes() -> None:
    import asyncio

    from konsil.auth.passwords import FAST_FOR_TESTS, PasswordHasher

    hasher = PasswordHasher(FAST_FOR_TESTS, concurrency=1)
    running = 0
    most = 0
    plain = hasher.hash_sync

    def counted(password: str) -> str:
        nonlocal running, most
        running += 1
        most = max(most, running)
        try:
            return plain(password)
        finally:
            running -= 1

    hasher.hash_sync = counted  # type: ignore[method-assign]

    async def run() -> list[str]:
        return await asyncio.gather(*(hasher.hash(f"password-{i}-0123") for i in range(8)))

    hashes = asyncio.run(run())
    assert len(set(hashes)) == 8 and most == 1
