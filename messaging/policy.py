"""Healthcare policy: per-user invite permissions, enforced by the server on every invite.

A user states whom they accept invitations from in account data of type
``lu.konsil.invite_permissions`` (after TI-Messenger's permission config)::

    {"default": "allow" | "block",
     "user_exceptions": ["@someone:server", ...],
     "organisation_exceptions": ["<organisation id>", ...]}

With ``allow`` the exceptions are blocked; with ``block`` the exceptions are allowed.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from konsil.errors import Forbidden
from konsil.identity.models import Account
from messaging.common import Requester, loads
from messaging.models import AccountData

INVITE_PERMISSIONS = "lu.konsil.invite_permissions"


def invite_allowed(config: Any, inviter: str, inviter_org: str | None) -> bool:
    if not isinstance(config, dict):
        return True
    default = config.get("default", "allow")
    users = config.get("user_exceptions") or []
    orgs = config.get("organisation_exceptions") or []
    excepted = (isinstance(users, list) and inviter in users) or (
        inviter_org is not None and isinstance(orgs, list) and inviter_org in orgs
    )
    if default == "block":
        return excepted
    return not excepted


class InvitePolicy:
    async def check(self, s: AsyncSession, req: Requester, target: str, account: Account) -> None:
        row = await s.get(AccountData, (target, "", INVITE_PERMISSIONS))
        if row is None:
            return
        inviter = await s.get(Account, req.account_id)
        org = inviter.organisation_id if inviter is not None else None
        if not invite_allowed(loads(row.content), req.user_id, org):
            raise Forbidden(f"{target} does not accept invitations from you")
