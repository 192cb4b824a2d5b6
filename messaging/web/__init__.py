"""Matrix Client-Server API handlers (thin: parse, call the homeserver's services, answer)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web

from konsil import appkeys as K
from konsil.errors import BadRequest, Forbidden, TooLarge, Unauthorized, ValidationError
from konsil.ratelimit import RateLimiter
from konsil.web.request import client_ip, json_response, read_json
from messaging.common import JsonDict, Requester, parse_token
from messaging.key_backup import require_version
from messaging.notifier import InProcessNotifier
from messaging.pushrules import PushRuleService
from messaging.service import Homeserver
from messaging.sync import SyncParams, current_stream

log = logging.getLogger("konsil.messaging")
HS = web.AppKey("matrix_homeserver", Homeserver)
LIMITS = web.AppKey("matrix_rate_limits", dict[str, RateLimiter])

V3 = "/_matrix/client/v3"
routes = web.RouteTableDef()
VERSIONS = [
    "v1.1",
    "v1.2",
    "v1.3",
    "v1.4",
    "v1.5",
    "v1.6",
    "v1.7",
    "v1.8",
    "v1.9",
    "v1.10",
    "v1.11",
]


def hs(request: web.Request) -> Homeserver:
    return request.app[HS]


async def requester(request: web.Request) -> Requester:
    auth = request.headers.get("Authorization", "")
    token: str | None = None
    if auth.lower().startswith("bearer "):
        token = auth[7:].strip()
    if not token:
        token = request.query.get("access_token")
    if not token:
        raise Unauthorized("missing access token", errcode="M_MISSING_TOKEN")
    return await hs(request).devices.requester(token)


def limit(request: web.Request, which: str, key: str) -> None:
    request.app[LIMITS][which].check(key, which)


def own_user(req: Requester, user_id: str) -> None:
    if user_id != req.user_id:
        raise Forbidden("you can only access your own data")


def int_param(request: web.Request, name: str, default: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValidationError(f"{name} must be an integer", fields={name: "integer"}) from None


EMPTY: JsonDict = {}


# ---------------------------------------------------------------- discovery


@routes.get("/_matrix/client/versions")
async def versions(request: web.Request) -> web.Response:
    return json_response({"versions": VERSIONS, "unstable_features": {}})


@routes.get("/.well-known/matrix/client")
async def well_known(request: web.Request) -> web.Response:
    return json_response({"m.homeserver": {"base_url": request.app[K.CONFIG].base_url}})


@routes.get(V3 + "/capabilities")
async def capabilities(request: web.Request) -> web.Response:
    await requester(request)
    return json_response(
        {
            "capabilities": {
                "m.change_password": {"enabled": False},
                "m.room_versions": {"default": "10", "available": {"10": "stable"}},
                "m.set_displayname": {"enabled": True},
                "m.set_avatar_url": {"enabled": True},
                "m.3pid_changes": {"enabled": False},
            }
        }
    )


# ---------------------------------------------------------------- login and devices


@routes.get(V3 + "/login")
async def login_flows(request: web.Request) -> web.Response:
    return json_response({"flows": [{"type": "m.login.password"}]})


@routes.post(V3 + "/login")
async def login(request: web.Request) -> web.Response:
    limit(request, "login", client_ip(request) or "unknown")
    body = await read_json(request)
    return json_response(await hs(request).devices.do_login(body, ip=client_ip(request)))


def _registration_open(request: web.Request) -> None:
    if not request.app[K.CONFIG].matrix.registration_enabled:
        raise Forbidden(
            "registration is disabled: accounts are provisioned by administrators",
            errcode="M_FORBIDDEN",
        )


@routes.post(V3 + "/register")
async def register(request: web.Request) -> web.Response:
    _registration_open(request)
    if request.query.get("kind", "user") != "user":
        raise Forbidden("guest access is not available", errcode="M_GUEST_ACCESS_FORBIDDEN")
    limit(request, "login", client_ip(request) or "unknown")
    body = await read_json(request)
    status, answer = await hs(request).devices.do_register(body, ip=client_ip(request))
    return json_response(answer, status=status)


@routes.get(V3 + "/register/available")
async def register_available(request: web.Request) -> web.Response:
    _registration_open(request)  # closed: don't answer which names exist
    limit(request, "login", client_ip(request) or "unknown")
    await hs(request).devices.check_available(request.query.get("username", ""))
    return json_response({"available": True})


@routes.post(V3 + "/logout")
async def logout(request: web.Request) -> web.Response:
    req = await requester(request)
    await hs(request).devices.do_logout(req)
    return json_response(EMPTY)


@routes.post(V3 + "/logout/all")
async def logout_all(request: web.Request) -> web.Response:
    req = await requester(request)
    await hs(request).devices.do_logout_all(req)
    return json_response(EMPTY)


@routes.get(V3 + "/account/whoami")
async def whoami(request: web.Request) -> web.Response:
    req = await requester(request)
    return json_response(
        {"user_id": req.user_id, "device_id": req.device_id, "is_guest": req.is_guest}
    )


@routes.get(V3 + "/devices")
async def devices(request: web.Request) -> web.Response:
    req = await requester(request)
    return json_response({"devices": await hs(request).devices.devices(req)})


@routes.get(V3 + "/devices/{device_id}")
async def device(request: web.Request) -> web.Response:
    req = await requester(request)
    return json_response(await hs(request).devices.device(req, request.match_info["device_id"]))


@routes.put(V3 + "/devices/{device_id}")
async def rename_device(request: web.Request) -> web.Response:
    req = await requester(request)
    body = await read_json(request)
    await hs(request).devices.do_rename_device(req, request.match_info["device_id"], body)
    return json_response(EMPTY)


def limit_password_attempt(request: web.Request, body: JsonDict) -> None:
    """A user-interactive auth answer is limited like a login (per IP, then per account)."""
    if body.get("auth") is not None:
        limit(request, "login", client_ip(request) or "unknown")


async def _delete_devices(
    request: web.Request, req: Requester, ids: list[str], body: JsonDict
) -> web.Response:
    limit_password_attempt(request, body)
    challenge = await hs(request).devices.do_delete_devices(req, ids, body, ip=client_ip(request))
    if challenge is not None:
        return json_response(challenge, status=401)
    return json_response(EMPTY)


@routes.delete(V3 + "/devices/{device_id}")
async def delete_device(request: web.Request) -> web.Response:
    req = await requester(request)
    device_id = request.match_info["device_id"]
    await hs(request).devices.device(req, device_id)  # 404 before asking for a password
    return await _delete_devices(request, req, [device_id], await read_json(request))


@routes.post(V3 + "/delete_devices")
async def delete_devices(request: web.Request) -> web.Response:
    req = await requester(request)
    raw = await request.read()
    try:
        body = json.loads(raw) if raw.strip() else {}
    except ValueError:
        raise BadRequest("the body is not valid JSON", errcode="M_NOT_JSON") from None
    ids = body.get("devices") if isinstance(body, dict) else None
    if not isinstance(ids, list) or not all(isinstance(d, str) for d in ids):
        raise BadRequest("devices must be a list of device ids", errcode="M_BAD_JSON")
    return await _delete_devices(request, req, ids, body)


# ---------------------------------------------------------------- profile


@routes.get(V3 + "/profile/{user_id}")
async def profile(request: web.Request) -> web.Response:
    await requester(request)
    return json_response(await hs(request).devices.profile(request.match_info["user_id"]))


@routes.get(V3 + "/profile/{user_id}/{field:displayname|avatar_url}")
async def profile_field(request: web.Request) -> web.Response:
    await requester(request)
    p = await hs(request).devices.profile(request.match_info["user_id"])
    field = request.match_info["field"]
    return json_response({field: p.get(field)})


@routes.put(V3 + "/profile/{user_id}/{field:displayname|avatar_url}")
async def set_profile_field(request: web.Request) -> web.Response:
    req = await requester(request)
    own_user(req, request.match_info["user_id"])
    field = request.match_info["field"]
    body = await read_json(request)
    await hs(request).devices.do_set_profile(req, field, body.get(field))
    return json_response(EMPTY)


# ---------------------------------------------------------------- rooms


@routes.post(V3 + "/createRoom")
async def create_room(request: web.Request) -> web.Response:
    req = await requester(request)
    body = await read_json(request)
    return json_response({"room_id": await hs(request).rooms.do_create_room(req, body)})


def _target(body: JsonDict) -> str:
    target = body.get("user_id")
    if not isinstance(target, str) or not target:
        raise BadRequest("user_id is required", errcode="M_BAD_JSON")
    return target


def _reason(body: JsonDict) -> str | None:
    reason = body.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise BadRequest("reason must be a string", errcode="M_BAD_JSON")
    return reason


@routes.post(V3 + "/rooms/{room_id}/{action:invite|kick|ban|unban}")
async def member_action(request: web.Request) -> web.Response:
    req = await requester(request)
    body = await read_json(request)
    action = request.match_info["action"]
    new = {"invite": "invite", "kick": "leave", "ban": "ban", "unban": "leave"}[action]
    await hs(request).rooms.do_membership(
        req, request.match_info["room_id"], _target(body), new, reason=_reason(body)
    )
    return json_response(EMPTY)


@routes.post(V3 + "/rooms/{room_id}/leave")
async def leave(request: web.Request) -> web.Response:
    req = await requester(request)
    body = await read_json(request)
    await hs(request).rooms.do_membership(
        req, request.match_info["room_id"], req.user_id, "leave", reason=_reason(body)
    )
    return json_response(EMPTY)


@routes.post(V3 + "/rooms/{room_id}/forget")
async def forget(request: web.Request) -> web.Response:
    req = await requester(request)
    await hs(request).rooms.do_forget(req, request.match_info["room_id"])
    return json_response(EMPTY)


@routes.post(V3 + "/rooms/{room_id}/join")
@routes.post(V3 + "/join/{room_id}")
async def join(request: web.Request) -> web.Response:
    req = await requester(request)
    await read_json(request)
    room_id = request.match_info["room_id"]
    if not room_id.startswith("!"):
        from konsil.errors import NotFound

        raise NotFound("room aliases are not supported: join by room id")
    await hs(request).rooms.do_membership(req, room_id, req.user_id, "join")
    return json_response({"room_id": room_id})


@routes.get(V3 + "/joined_rooms")
async def joined_rooms(request: web.Request) -> web.Response:
    req = await requester(request)
    return json_response({"joined_rooms": await hs(request).rooms.joined_rooms(req)})


@routes.get(V3 + "/rooms/{room_id}/state")
async def room_state(request: web.Request) -> web.Response:
    req = await requester(request)
    return json_response(await hs(request).rooms.room_state(req, request.match_info["room_id"]))


@routes.get(V3 + "/rooms/{room_id}/state/{event_type}")
@routes.get(V3 + "/rooms/{room_id}/state/{event_type}/{state_key:.*}")
async def state_event(request: web.Request) -> web.Response:
    req = await requester(request)
    mi = request.match_info
    return json_response(
        await hs(request).rooms.state_content(
            req, mi["room_id"], mi["event_type"], mi.get("state_key", "")
        )
    )


@routes.put(V3 + "/rooms/{room_id}/state/{event_type}")
@routes.put(V3 + "/rooms/{room_id}/state/{event_type}/{state_key:.*}")
async def set_state(request: web.Request) -> web.Response:
    req = await requester(request)
    mi = request.match_info
    body = await read_json(request)
    event_id = await hs(request).rooms.do_set_state(
        req, mi["room_id"], mi["event_type"], mi.get("state_key", ""), body
    )
    return json_response({"event_id": event_id})


@routes.put(V3 + "/rooms/{room_id}/send/{event_type}/{txn_id}")
async def send(request: web.Request) -> web.Response:
    req = await requester(request)
    limit(request, "send", req.user_id)
    mi = request.match_info
    body = await read_json(request)
    event_id = await hs(request).rooms.do_send(
        req, mi["room_id"], mi["event_type"], mi["txn_id"], body
    )
    return json_response({"event_id": event_id})


@routes.put(V3 + "/rooms/{room_id}/redact/{event_id}/{txn_id}")
async def redact(request: web.Request) -> web.Response:
    req = await requester(request)
    mi = request.match_info
    body = await read_json(request)
    event_id = await hs(request).rooms.do_redact(
        req, mi["room_id"], mi["event_id"], mi["txn_id"], _reason(body)
    )
    return json_response({"event_id": event_id})


@routes.get(V3 + "/rooms/{room_id}/messages")
async def messages(request: web.Request) -> web.Response:
    req = await requester(request)
    direction = request.query.get("dir", "b")
    if direction not in ("b", "f"):
        raise ValidationError("dir must be b or f", fields={"dir": "b or f"})
    server = hs(request)
    return json_response(
        await server.rooms.messages(
            req,
            request.match_info["room_id"],
            from_pos=parse_token(request.query.get("from"), "from"),
            to_pos=parse_token(request.query.get("to"), "to"),
            backwards=direction == "b",
            limit=int_param(request, "limit", 10),
            current=await server.sync.position(),
        )
    )


@routes.get(V3 + "/rooms/{room_id}/context/{event_id}")
async def context(request: web.Request) -> web.Response:
    req = await requester(request)
    mi = request.match_info
    return json_response(
        await hs(request).rooms.context(
            req, mi["room_id"], mi["event_id"], int_param(request, "limit", 10)
        )
    )


@routes.get(V3 + "/rooms/{room_id}/joined_members")
async def joined_members(request: web.Request) -> web.Response:
    req = await requester(request)
    return json_response(await hs(request).rooms.joined_members(req, request.match_info["room_id"]))


@routes.get(V3 + "/rooms/{room_id}/members")
async def members(request: web.Request) -> web.Response:
    req = await requester(request)
    return json_response(await hs(request).rooms.members(req, request.match_info["room_id"]))


@routes.put(V3 + "/rooms/{room_id}/typing/{user_id}")
async def typing(request: web.Request) -> web.Response:
    req = await requester(request)
    own_user(req, request.match_info["user_id"])
    body = await read_json(request)
    is_typing = body.get("typing")
    timeout = body.get("timeout", 30_000)
    if not isinstance(is_typing, bool) or not isinstance(timeout, int):
        raise BadRequest("typing (boolean) is required", errcode="M_BAD_JSON")
    await hs(request).do_typing(req, request.match_info["room_id"], is_typing, timeout)
    return json_response(EMPTY)


@routes.post(V3 + "/rooms/{room_id}/receipt/{receipt_type}/{event_id}")
async def receipt(request: web.Request) -> web.Response:
    req = await requester(request)
    await read_json(request)
    mi = request.match_info
    await hs(request).do_receipt(req, mi["room_id"], mi["receipt_type"], mi["event_id"])
    return json_response(EMPTY)


@routes.post(V3 + "/rooms/{room_id}/read_markers")
async def read_markers(request: web.Request) -> web.Response:
    req = await requester(request)
    body = await read_json(request)
    await hs(request).do_read_markers(req, request.match_info["room_id"], body)
    return json_response(EMPTY)


# ---------------------------------------------------------------- account data and filters


@routes.get(V3 + "/user/{user_id}/account_data/{data_type}")
@routes.get(V3 + "/user/{user_id}/rooms/{room_id}/account_data/{data_type}")
async def get_account_data(request: web.Request) -> web.Response:
    req = await requester(request)
    mi = request.match_info
    own_user(req, mi["user_id"])
    return json_response(
        await hs(request).push_rules.client_account_data(
            req.user_id, mi.get("room_id", ""), mi["data_type"]
        )
    )


@routes.put(V3 + "/user/{user_id}/account_data/{data_type}")
@routes.put(V3 + "/user/{user_id}/rooms/{room_id}/account_data/{data_type}")
async def put_account_data(request: web.Request) -> web.Response:
    req = await requester(request)
    mi = request.match_info
    own_user(req, mi["user_id"])
    body = await read_json(request)
    await hs(request).push_rules.do_set_client_account_data(
        req, mi.get("room_id", ""), mi["data_type"], body
    )
    return json_response(EMPTY)


@routes.post(V3 + "/user/{user_id}/filter")
async def create_filter(request: web.Request) -> web.Response:
    req = await requester(request)
    own_user(req, request.match_info["user_id"])
    body = await read_json(request)
    return json_response({"filter_id": await hs(request).devices.do_create_filter(req, body)})


@routes.get(V3 + "/user/{user_id}/filter/{filter_id}")
async def get_filter(request: web.Request) -> web.Response:
    req = await requester(request)
    own_user(req, request.match_info["user_id"])
    return json_response(
        await hs(request).devices.filter(req.user_id, request.match_info["filter_id"])
    )


# ---------------------------------------------------------------- push rules

PUSH_RULE = V3 + "/pushrules/{scope}/{kind}/{rule_id}"


@routes.get(V3 + "/pushrules/")
async def pushrules(request: web.Request) -> web.Response:
    req = await requester(request)
    return json_response(await hs(request).push_rules.all_rules(req.user_id))


@routes.get(V3 + "/pushrules/{scope}/")
async def pushrules_scope(request: web.Request) -> web.Response:
    req = await requester(request)
    scope = request.match_info["scope"]
    return json_response(await hs(request).push_rules.scope_rules(req.user_id, scope))


@routes.get(V3 + "/pushrules/{scope}/{kind}/")
async def pushrules_kind(request: web.Request) -> web.Response:
    req = await requester(request)
    mi = request.match_info
    return json_response(
        await hs(request).push_rules.kind_rules(req.user_id, mi["scope"], mi["kind"])
    )


@routes.get(PUSH_RULE)
async def push_rule(request: web.Request) -> web.Response:
    req = await requester(request)
    mi = request.match_info
    return json_response(
        await hs(request).push_rules.rule(req.user_id, mi["scope"], mi["kind"], mi["rule_id"])
    )


@routes.put(PUSH_RULE)
async def put_push_rule(request: web.Request) -> web.Response:
    req = await requester(request)
    body = await read_json(request)
    mi, q = request.match_info, request.query
    await hs(request).push_rules.do_put_rule(
        req,
        mi["scope"],
        mi["kind"],
        mi["rule_id"],
        body,
        before=q.get("before"),
        after=q.get("after"),
    )
    return json_response(EMPTY)


@routes.delete(PUSH_RULE)
async def delete_push_rule(request: web.Request) -> web.Response:
    req = await requester(request)
    mi = request.match_info
    await hs(request).push_rules.do_delete_rule(req, mi["scope"], mi["kind"], mi["rule_id"])
    return json_response(EMPTY)


def _push_rule_attribute(
    name: str,
    setter: Callable[[PushRuleService, Requester, str, str, str, JsonDict], Awaitable[None]],
) -> None:
    """``GET``/``PUT`` of one attribute (``enabled``, ``actions``) of a push rule."""
    path = f"{PUSH_RULE}/{name}"

    async def get(request: web.Request) -> web.Response:
        req = await requester(request)
        mi = request.match_info
        rule = await hs(request).push_rules.rule(
            req.user_id, mi["scope"], mi["kind"], mi["rule_id"]
        )
        return json_response({name: rule[name]})

    async def put(request: web.Request) -> web.Response:
        req = await requester(request)
        body = await read_json(request)
        mi = request.match_info
        await setter(hs(request).push_rules, req, mi["scope"], mi["kind"], mi["rule_id"], body)
        return json_response(EMPTY)

    routes.get(path)(get)
    routes.put(path)(put)


_push_rule_attribute("enabled", PushRuleService.do_set_enabled)
_push_rule_attribute("actions", PushRuleService.do_set_actions)


@routes.get(V3 + "/voip/turnServer")
async def turn_server(request: web.Request) -> web.Response:
    """Credentials for the TURN relay of ``[turn]`` (the one the teleconsultations use), so that
    Matrix clients' 1:1 calls go through it; ``{}`` when no TURN server is configured."""
    from konsil.turn import turn_credentials

    req = await requester(request)
    turn = request.app[K.CONFIG].turn
    if not turn.urls or not turn.secret:
        return json_response({})
    username, password = turn_credentials(
        turn.secret, req.user_id, request.app[K.CLOCK].now(), turn.ttl_seconds
    )
    return json_response(
        {
            "username": username,
            "password": password,
            "uris": list(turn.urls),
            "ttl": turn.ttl_seconds,
        }
    )


# ---------------------------------------------------------------- server-side key backups

ROOM_KEYS = V3 + "/room_keys/keys"
ROOM_KEYS_PATHS = (ROOM_KEYS, ROOM_KEYS + "/{room_id}", ROOM_KEYS + "/{room_id}/{session_id}")
MAX_ROOM_KEYS_BODY = 8 * 1024 * 1024  # a batch of keys (clients upload a few hundred at once)


@routes.post(V3 + "/room_keys/version")
async def room_keys_create_version(request: web.Request) -> web.Response:
    req = await requester(request)
    body = await read_json(request)
    answer = await hs(request).key_backup.do_create_version(req, body, ip=client_ip(request))
    return json_response(answer)


@routes.get(V3 + "/room_keys/version")
@routes.get(V3 + "/room_keys/version/{version}")
async def room_keys_version(request: web.Request) -> web.Response:
    """No backup is 404 M_NOT_FOUND, which matrix-js-sdk asks about at start."""
    req = await requester(request)
    version = request.match_info.get("version")
    return json_response(await hs(request).key_backup.version_info(req, version))


@routes.put(V3 + "/room_keys/version/{version}")
async def room_keys_update_version(request: web.Request) -> web.Response:
    req = await requester(request)
    body = await read_json(request)
    await hs(request).key_backup.do_update_version(
        req, request.match_info["version"], body, ip=client_ip(request)
    )
    return json_response(EMPTY)


@routes.delete(V3 + "/room_keys/version/{version}")
async def room_keys_delete_version(request: web.Request) -> web.Response:
    req = await requester(request)
    await hs(request).key_backup.do_delete_version(
        req, request.match_info["version"], ip=client_ip(request)
    )
    return json_response(EMPTY)


def _room_keys_args(request: web.Request) -> tuple[str, str | None, str | None]:
    mi = request.match_info
    return require_version(request.query.get("version")), mi.get("room_id"), mi.get("session_id")


async def room_keys_put(request: web.Request) -> web.Response:
    req = await requester(request)
    version, room_id, session_id = _room_keys_args(request)
    body = await read_json(request, max_bytes=MAX_ROOM_KEYS_BODY)
    answer = await hs(request).key_backup.do_put_keys(req, version, body, room_id, session_id)
    return json_response(answer)


async def room_keys_get(request: web.Request) -> web.Response:
    req = await requester(request)
    version, room_id, session_id = _room_keys_args(request)
    return json_response(await hs(request).key_backup.get_keys(req, version, room_id, session_id))


async def room_keys_delete(request: web.Request) -> web.Response:
    req = await requester(request)
    version, room_id, session_id = _room_keys_args(request)
    answer = await hs(request).key_backup.do_delete_keys(req, version, room_id, session_id)
    return json_response(answer)


for _path in ROOM_KEYS_PATHS:
    routes.put(_path)(room_keys_put)
    routes.get(_path)(room_keys_get)
    routes.delete(_path)(room_keys_delete)


# ---------------------------------------------------------------- sync


_INLINE_LIMITS: dict[str, int] = {}  # inline filter -> its timeline limit (clients repeat it)


def _limit_of(f: Any) -> int:
    try:
        value = f["room"]["timeline"]["limit"]
    except (KeyError, TypeError):
        return 20
    return value if isinstance(value, int) and value > 0 else 20


async def _timeline_limit(request: web.Request, req: Requester) -> int:
    raw = request.query.get("filter")
    if not raw:
        return 20
    if raw.lstrip().startswith("{"):
        hit = _INLINE_LIMITS.get(raw)
        if hit is not None:
            return hit
        try:
            f: Any = json.loads(raw)
        except ValueError:
            raise BadRequest("filter is not valid JSON", errcode="M_NOT_JSON") from None
        if len(_INLINE_LIMITS) > 1000:
            _INLINE_LIMITS.clear()
        _INLINE_LIMITS[raw] = value = _limit_of(f)
        return value
    return _limit_of(await hs(request).devices.filter(req.user_id, raw))


@routes.get(V3 + "/sync")
async def sync(request: web.Request) -> web.Response:
    req = await requester(request)
    cfg = request.app[K.CONFIG].matrix
    timeout = max(0, min(int_param(request, "timeout", 0), cfg.sync_timeout_max_ms))
    params = SyncParams(
        since=parse_token(request.query.get("since")),
        timeout_ms=timeout,
        timeline_limit=await _timeline_limit(request, req),
        full_state=request.query.get("full_state") == "true",
    )
    return json_response(await hs(request).sync.sync(req, params))


# ---------------------------------------------------------------- keys and to-device


def _keys_endpoint(
    path: str, call: Callable[[Homeserver, Requester, JsonDict], Awaitable[JsonDict]]
) -> None:
    """POST a JSON body to a key service as the caller, answer its JSON."""

    async def handler(request: web.Request) -> web.Response:
        req = await requester(request)
        body = await read_json(request)
        return json_response(await call(hs(request), req, body))

    routes.post(V3 + path)(handler)


_keys_endpoint("/keys/upload", lambda h, req, body: h.devices.do_upload_keys(req, body))
_keys_endpoint("/keys/claim", lambda h, req, body: h.devices.do_claim_keys(req, body))
_keys_endpoint("/keys/query", lambda h, req, body: h.cross_signing.query_keys(req, body))
_keys_endpoint(
    "/keys/signatures/upload",
    lambda h, req, body: h.cross_signing.do_upload_signatures(req, body),
)


@routes.post(V3 + "/keys/device_signing/upload")
async def upload_signing_keys(request: web.Request) -> web.Response:
    req = await requester(request)
    body = await read_json(request)
    limit_password_attempt(request, body)
    challenge = await hs(request).cross_signing.do_upload_signing_keys(
        req, body, ip=client_ip(request)
    )
    if challenge is not None:
        return json_response(challenge, status=401)
    return json_response(EMPTY)


@routes.get(V3 + "/keys/changes")
async def keys_changes(request: web.Request) -> web.Response:
    req = await requester(request)
    from_pos = parse_token(request.query.get("from"), "from") or 0
    to_pos = parse_token(request.query.get("to"), "to")
    if to_pos is None:
        to_pos = await hs(request).sync.position()
    return json_response(await hs(request).devices.key_changes(req, from_pos, to_pos))


@routes.put(V3 + "/sendToDevice/{event_type}/{txn_id}")
async def send_to_device(request: web.Request) -> web.Response:
    req = await requester(request)
    body = await read_json(request, max_bytes=4 * 1024 * 1024)
    mi = request.match_info
    await hs(request).devices.do_send_to_device(req, mi["event_type"], mi["txn_id"], body)
    return json_response(EMPTY)


# ---------------------------------------------------------------- directory


@routes.post(V3 + "/user_directory/search")
async def user_directory(request: web.Request) -> web.Response:
    req = await requester(request)
    body = await read_json(request)
    term = body.get("search_term")
    lim = body.get("limit", 10)
    if not isinstance(term, str) or not isinstance(lim, int):
        raise BadRequest("search_term (string) is required", errcode="M_BAD_JSON")
    return json_response(await hs(request).search_directory(req, term, lim))


# ---------------------------------------------------------------- media


@routes.post("/_matrix/media/v3/upload")
async def upload(request: web.Request) -> web.Response:
    req = await requester(request)
    limit(request, "upload", req.user_id)
    server = hs(request)
    max_bytes = server.media.max_bytes
    if request.content_length is not None and request.content_length > max_bytes:
        raise TooLarge("the file is larger than the upload limit", errcode="M_TOO_LARGE")
    data = await request.content.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise TooLarge("the file is larger than the upload limit", errcode="M_TOO_LARGE")
    filename = request.query.get("filename")
    mxc = await server.media.do_upload(
        req, data, request.headers.get("Content-Type", "application/octet-stream"), filename
    )
    return json_response({"content_uri": mxc})


@routes.get("/_matrix/client/v1/media/config")
@routes.get("/_matrix/media/v3/config")
async def media_config(request: web.Request) -> web.Response:
    await requester(request)
    return json_response({"m.upload.size": hs(request).media.max_bytes})


@routes.get("/_matrix/client/v1/media/download/{server}/{media_id}")
@routes.get("/_matrix/client/v1/media/download/{server}/{media_id}/{filename}")
@routes.get("/_matrix/client/v1/media/thumbnail/{server}/{media_id}")
async def download(request: web.Request) -> web.StreamResponse:
    req = await requester(request)
    mi = request.match_info
    stored = await hs(request).media.fetch(req, mi["server"], mi["media_id"])
    resp = web.FileResponse(stored.path)
    resp.content_type = stored.content_type
    name = mi.get("filename") or stored.filename
    disposition = "inline" if stored.content_type.startswith("image/") else "attachment"
    if name:
        from urllib.parse import quote

        resp.headers["Content-Disposition"] = f"{disposition}; filename*=utf-8''{quote(name)}"
    else:
        resp.headers["Content-Disposition"] = disposition
    resp.headers["Content-Security-Policy"] = "sandbox; default-src 'none'"
    return resp


# ---------------------------------------------------------------- setup


async def _retention_loop(server: Homeserver, every_s: int) -> None:
    while True:
        # wall-clock pacing on purpose: a fake clock in tests must not spin this loop
        await asyncio.sleep(every_s)
        try:
            await server.do_purge_expired()
        except Exception:
            log.exception("retention purge failed")


def setup(app: web.Application) -> None:
    cfg = app[K.CONFIG].matrix

    async def homeserver_ctx(app: web.Application) -> AsyncIterator[None]:
        server = app[HS] = Homeserver.build(
            app[K.CONFIG],
            app[K.DB],
            app[K.CLOCK],
            app[K.AUTH],
            app[K.AUDIT],
            InProcessNotifier(start=await current_stream(app[K.DB])),
        )
        task = (
            asyncio.create_task(_retention_loop(server, cfg.retention_check_seconds))
            if cfg.retention_check_seconds > 0
            else None
        )
        yield
        await server.devices.stop()
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    clock = app[K.CLOCK]
    app[LIMITS] = {
        "login": RateLimiter(clock, rate=cfg.login_rate_per_s, burst=cfg.login_burst),
        "send": RateLimiter(clock, rate=cfg.send_rate_per_s, burst=cfg.send_burst),
        "upload": RateLimiter(clock, rate=cfg.upload_rate_per_s, burst=cfg.upload_burst),
    }
    app.cleanup_ctx.append(homeserver_ctx)
    app.router.add_routes(routes)
