"""Login with lockout and back-off, TOTP second factor, web sessions and API tokens.

check_* functions validate and authorise; do_* functions change state. Every login attempt is
audited (who, from where, outcome); passwords, codes and tokens never are.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from konsil.audit.service import Actor, AuditLog
from konsil.auth import totp
from konsil.auth.models import ApiToken, WebSession
from konsil.auth.passwords import PasswordHasher
from konsil.clock import Clock, to_utc
from konsil.config import AuthConfig
from konsil.crypto import Sealer
from konsil.db import Database
from konsil.errors import Forbidden, NotFound, RateLimited, Unauthorized, ValidationError
from konsil.identity.models import Account

# Verified against when the username is unknown, so that timing does not reveal which exist.
_DUMMY_HASH_PASSWORD = "konsil-dummy-password"  # noqa: S105 - not a credential


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Principal:
    """The authenticated caller of a request."""

    account_id: str
    username: str
    role: str
    display_name: str
    practitioner_id: str | None
    organisation_id: str | None
    is_guest: bool = False

    @classmethod
    def of(cls, a: Account) -> Principal:
        return cls(
            a.id,
            a.username,
            a.role,
            a.display_name,
            a.practitioner_id,
            a.organisation_id,
            a.is_guest,
        )

    def has_role(self, *roles: str) -> bool:
        return self.role in roles


@dataclass(frozen=True)
class LoginResult:
    principal: Principal
    session_token: str
    csrf_token: str
    needs_totp: bool


class AuthService:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        hasher: PasswordHasher,
        audit: AuditLog,
        cfg: AuthConfig,
        totp_sealer: Sealer,
    ) -> None:
        self.db = db
        self.clock = clock
        self.hasher = hasher
        self.audit = audit
        self.cfg = cfg
        self._dummy_hash: str | None = None
        # TOTP seeds are sealed at rest: a copy of the database alone does not yield codes.
        self.totp_sealer = totp_sealer

    # ------------------------------------------------------------------ passwords

    async def _burn_time(self, password: str) -> None:
        if self._dummy_hash is None:
            self._dummy_hash = await self.hasher.hash(_DUMMY_HASH_PASSWORD)
        await self.hasher.verify(self._dummy_hash, password)

    async def check_password(self, username: str, password: str, *, ip: str | None) -> Principal:
        """Verify a username/password pair, with lockout and exponential back-off.

        Used by the web login, the Matrix ``m.login.password`` flow and the API.
        """
        now = self.clock.now()
        async with self.db.session() as s:
            account = (
                await s.execute(select(Account).where(Account.username == username))
            ).scalar_one_or_none()
        if account is None or not account.is_active or account.password_hash is None:
            await self._burn_time(password)
            async with self.db.transaction() as s:
                await self.audit.record(
                    s,
                    Actor("anonymous", ip),
                    "login",
                    outcome="failure",
                    details={"reason": "unknown or inactive account"},
                )
            raise Unauthorized("wrong username or password", errcode="M_FORBIDDEN")
        if account.locked_until is not None and to_utc(account.locked_until) > now:
            wait_ms = int((to_utc(account.locked_until) - now).total_seconds() * 1000)
            async with self.db.transaction() as s:
                await self.audit.record(
                    s,
                    Actor(account.id, ip),
                    "login",
                    outcome="denied",
                    details={"reason": "locked"},
                )
            raise RateLimited(
                "too many failed attempts: this account is locked for a while",
                retry_after_ms=wait_ms,
            )
        ok = await self.hasher.verify(account.password_hash, password)
        # A hash made at another cost (the configured profile changed) is replaced at login.
        rehashed = (
            await self.hasher.hash(password)
            if ok and self.hasher.needs_rehash(account.password_hash)
            else None
        )
        async with self.db.transaction() as s:
            fresh = await s.get(Account, account.id, with_for_update=True)
            assert fresh is not None
            if not ok:
                fresh.failed_logins += 1
                over = fresh.failed_logins - self.cfg.lockout_threshold
                if over >= 0:
                    # Back-off doubles with every further failure, capped at a day.
                    seconds = min(self.cfg.lockout_seconds * (2**over), 86_400)
                    fresh.locked_until = now + timedelta(seconds=seconds)
                await self.audit.record(
                    s,
                    Actor(fresh.id, ip),
                    "login",
                    outcome="failure",
                    details={"reason": "wrong password", "failures": fresh.failed_logins},
                )
                raise_after = True
            else:
                fresh.failed_logins = 0
                fresh.locked_until = None
                fresh.last_login_at = now
                if rehashed is not None and fresh.password_hash == account.password_hash:
                    fresh.password_hash = rehashed
                await self.audit.record(s, Actor(fresh.id, ip), "login")
                raise_after = False
            principal = Principal.of(fresh)
        if raise_after:
            raise Unauthorized("wrong username or password", errcode="M_FORBIDDEN")
        return principal

    # ------------------------------------------------------------------ web sessions

    def totp_required(self, role: str) -> bool:
        return role in self.cfg.totp_required_roles

    async def do_login(self, username: str, password: str, *, ip: str | None) -> LoginResult:
        principal = await self.check_password(username, password, ip=ip)
        async with self.db.session() as s:
            account = await s.get(Account, principal.account_id)
            assert account is not None
            has_totp = account.totp_secret is not None
        # Enforced by role yet not enrolled: the pending session opens only the enrolment page.
        needs_totp = has_totp or self.totp_required(principal.role)
        token = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(24)
        now = self.clock.now()
        async with self.db.transaction() as s:
            s.add(
                WebSession(
                    token_hash=token_hash(token),
                    account_id=principal.account_id,
                    csrf_token=csrf,
                    needs_totp=needs_totp,
                    created_at=now,
                    expires_at=now + timedelta(hours=self.cfg.session_hours),
                    ip=ip,
                )
            )
        return LoginResult(principal, token, csrf, needs_totp)

    async def session_for(self, token: str) -> tuple[Principal, WebSession] | None:
        now = self.clock.now()
        async with self.db.session() as s:
            ws = await s.get(WebSession, token_hash(token))
            if ws is None or to_utc(ws.expires_at) <= now:
                return None
            account = await s.get(Account, ws.account_id)
            if account is None or not account.is_active:
                return None
            return Principal.of(account), ws

    async def do_totp(self, token: str, code: str, *, ip: str | None) -> None:
        """Complete the second factor of a pending web session."""
        found = await self.session_for(token)
        if found is None:
            raise Unauthorized("your session has expired: sign in again")
        principal, ws = found
        async with self.db.transaction() as s:
            account = await s.get(Account, principal.account_id, with_for_update=True)
            assert account is not None
            if account.totp_secret is None:
                raise Forbidden("no second factor is enrolled for this account")
            seed = self.totp_sealer.open_text(account.totp_secret)
            if not totp.verify(seed, code, self.clock.now()):
                await self.audit.record(s, Actor(account.id, ip), "login.totp", outcome="failure")
                ok = False
            else:
                live = await s.get(WebSession, ws.token_hash)
                assert live is not None
                live.needs_totp = False
                await self.audit.record(s, Actor(account.id, ip), "login.totp")
                ok = True
        if not ok:
            raise Unauthorized("that code is not valid", errcode="M_FORBIDDEN")

    async def do_enrol_totp(
        self, account_id: str, secret: str, code: str, *, ip: str | None
    ) -> None:
        """Store a TOTP secret once the user proves their app produces its codes."""
        if not totp.verify(secret, code, self.clock.now()):
            raise Unauthorized("that code is not valid: check the time on your phone")
        async with self.db.transaction() as s:
            account = await s.get(Account, account_id, with_for_update=True)
            assert account is not None
            account.totp_secret = self.totp_sealer.seal_text(secret)
            await s.execute(
                update(WebSession)
                .where(WebSession.account_id == account_id)
                .values(needs_totp=False)
            )
            await self.audit.record(s, Actor(account_id, ip), "totp.enrol")

    async def do_logout(self, token: str) -> None:
        async with self.db.transaction() as s:
            await s.execute(delete(WebSession).where(WebSession.token_hash == token_hash(token)))

    # ------------------------------------------------------------------ API tokens

    async def do_create_api_token(
        self, session: AsyncSession, account_id: str, name: str, *, days: int | None = 365
    ) -> str:
        token = "ksl_" + secrets.token_urlsafe(32)
        now = self.clock.now()
        session.add(
            ApiToken(
                token_hash=token_hash(token),
                account_id=account_id,
                name=name,
                created_at=now,
                expires_at=None if days is None else now + timedelta(days=days),
            )
        )
        return token

    async def api_tokens(self) -> list[tuple[ApiToken, Account]]:
        async with self.db.session() as s:
            rows = await s.execute(
                select(ApiToken, Account)
                .join(Account, Account.id == ApiToken.account_id)
                .order_by(ApiToken.created_at.desc())
            )
            return [(t, a) for t, a in rows.all()]

    async def do_issue_api_token(
        self, actor: Actor, username: str, name: str, days: int | None
    ) -> str:
        """Create a bearer token for a machine client acting as ``username``; shown once."""
        errors: dict[str, str] = {}
        name = " ".join(name.split())
        if not name or len(name) > 100:
            errors["name"] = "required, at most 100 characters"
        if days is not None and not (1 <= days <= 730):
            errors["days"] = "between 1 and 730"
        async with self.db.transaction() as s:
            account = (
                await s.execute(select(Account).where(Account.username == username))
            ).scalar_one_or_none()
            if account is None or not account.is_active:
                errors["username"] = "no active account with this username"
            if errors:
                raise ValidationError("the API token request is not valid", fields=errors)
            assert account is not None
            token = await self.do_create_api_token(s, account.id, name, days=days)
            await self.audit.record(
                s,
                actor,
                "api_token.create",
                resource=f"account/{account.id}",
                details={"name": name},
            )
        return token

    async def do_revoke_api_token(self, actor: Actor, hashed: str) -> None:
        async with self.db.transaction() as s:
            row = await s.get(ApiToken, hashed)
            if row is None:
                raise NotFound("no such API token")
            await s.delete(row)
            await self.audit.record(
                s,
                actor,
                "api_token.revoke",
                resource=f"account/{row.account_id}",
                details={"name": row.name},
            )

    async def api_principal(self, token: str) -> Principal | None:
        now = self.clock.now()
        async with self.db.session() as s:
            row = await s.get(ApiToken, token_hash(token))
            if row is None or (row.expires_at is not None and to_utc(row.expires_at) <= now):
                return None
            account = await s.get(Account, row.account_id)
            if account is None or not account.is_active:
                return None
            return Principal.of(account)
