"""Push rules (Client-Server API, "Push Notifications" module): the server-default rules, the
user's own rules and the user's changes to the defaults, and ``m.push_rules`` built from both.

They have no table of their own. One private global account-data entry per user
(``STORED_TYPE``) holds the user's rules per kind, most important first, and the ``enabled`` /
``actions`` the user set on server-default rules. ``m.push_rules`` itself is never stored: it is
the defaults with those changes applied, built when served (``/pushrules``, the account-data
endpoint, ``/sync``), so that a change of the defaults in a later version reaches every user.
Writing it goes through the account-data store, so the notifier wakes the user's syncs.

Evaluating rules (notification counts) and pushers are not implemented: clients evaluate the
rules themselves (they must for encrypted rooms anyway).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from konsil.errors import BadRequest, MethodNotAllowed, NotFound, ValidationError
from messaging.common import JsonDict, Requester, dumps
from messaging.devices import DeviceService

PUSH_RULES = "m.push_rules"
STORED_TYPE = "lu.konsil.push_rules"
# account data the server manages: clients read them but never write them (405 M_BAD_JSON, as
# the spec's account-data endpoint says for m.push_rules and m.fully_read)
SERVER_MANAGED = frozenset({PUSH_RULES, "m.fully_read", STORED_TYPE})

# in the order they are checked
KINDS = ("override", "content", "room", "sender", "underride")
SCOPE = "global"
ACTIONS = frozenset({"notify", "dont_notify", "coalesce"})  # the last two: no-ops, kept as sent
NAMESPACED = re.compile(r"^[a-z][a-z0-9_-]*(\.[a-z0-9_-]+)+$")  # e.g. org.matrix.msc3768.x
MEMBER_COUNT = re.compile(r"^(==|<=|>=|<|>)?[0-9]+$")
MAX_RULES = 500  # the user's own rules, all kinds together
MAX_RULE_CHARS = 8192  # one rule as stored JSON
MAX_ID_CHARS = 255
MAX_JSON_INT = 2**53 - 1


# ---------------------------------------------------------------- server-default rules


def _match(key: str, pattern: str) -> JsonDict:
    return {"kind": "event_match", "key": key, "pattern": pattern}


def _sound(value: str) -> JsonDict:
    return {"set_tweak": "sound", "value": value}


def _highlight() -> JsonDict:
    return {"set_tweak": "highlight"}


def _rule(rule_id: str, actions: list[Any], **fields: Any) -> JsonDict:
    return {"rule_id": rule_id, "default": True, "enabled": True, **fields, "actions": actions}


def server_default_rules(user_id: str) -> dict[str, list[JsonDict]]:
    """The spec's predefined rules for ``user_id``, in priority order, built fresh at each call
    (callers may change them). The deprecated mention rules (display name, user name, ``@room``)
    stay: the spec still lists them and Element's settings show them."""
    localpart = user_id[1:].partition(":")[0]
    mention = ["notify", _sound("default"), _highlight()]
    return {
        "override": [
            _rule(".m.rule.master", [], enabled=False, conditions=[]),
            _rule(
                ".m.rule.suppress_notices", [], conditions=[_match("content.msgtype", "m.notice")]
            ),
            _rule(
                ".m.rule.invite_for_me",
                ["notify", _sound("default")],
                conditions=[
                    _match("type", "m.room.member"),
                    _match("content.membership", "invite"),
                    _match("state_key", user_id),
                ],
            ),
            _rule(".m.rule.member_event", [], conditions=[_match("type", "m.room.member")]),
            _rule(
                ".m.rule.is_user_mention",
                mention,
                conditions=[
                    {
                        "kind": "event_property_contains",
                        "key": "content.m\\.mentions.user_ids",
                        "value": user_id,
                    }
                ],
            ),
            _rule(
                ".m.rule.contains_display_name",
                ["notify", _sound("default"), _highlight()],
                conditions=[{"kind": "contains_display_name"}],
            ),
            _rule(
                ".m.rule.is_room_mention",
                ["notify", _highlight()],
                conditions=[
                    {
                        "kind": "event_property_is",
                        "key": "content.m\\.mentions.room",
                        "value": True,
                    },
                    {"kind": "sender_notification_permission", "key": "room"},
                ],
            ),
            _rule(
                ".m.rule.roomnotif",
                ["notify", _highlight()],
                conditions=[
                    _match("content.body", "@room"),
                    {"kind": "sender_notification_permission", "key": "room"},
                ],
            ),
            _rule(
                ".m.rule.tombstone",
                ["notify", _highlight()],
                conditions=[_match("type", "m.room.tombstone"), _match("state_key", "")],
            ),
            _rule(".m.rule.reaction", [], conditions=[_match("type", "m.reaction")]),
            _rule(
                ".m.rule.room.server_acl",
                [],
                conditions=[_match("type", "m.room.server_acl"), _match("state_key", "")],
            ),
            _rule(
                ".m.rule.suppress_edits",
                [],
                conditions=[
                    {
                        "kind": "event_property_is",
                        "key": "content.m\\.relates_to.rel_type",
                        "value": "m.replace",
                    }
                ],
            ),
        ],
        "content": [
            _rule(
                ".m.rule.contains_user_name",
                ["notify", _sound("default"), _highlight()],
                pattern=localpart,
            ),
        ],
        "room": [],
        "sender": [],
        "underride": [
            _rule(
                ".m.rule.call",
                ["notify", _sound("ring")],
                conditions=[_match("type", "m.call.invite")],
            ),
            _rule(
                ".m.rule.encrypted_room_one_to_one",
                ["notify", _sound("default")],
                conditions=[
                    {"kind": "room_member_count", "is": "2"},
                    _match("type", "m.room.encrypted"),
                ],
            ),
            _rule(
                ".m.rule.room_one_to_one",
                ["notify", _sound("default")],
                conditions=[
                    {"kind": "room_member_count", "is": "2"},
                    _match("type", "m.room.message"),
                ],
            ),
            _rule(".m.rule.message", ["notify"], conditions=[_match("type", "m.room.message")]),
            _rule(".m.rule.encrypted", ["notify"], conditions=[_match("type", "m.room.encrypted")]),
        ],
    }


# rule ids of the server-default rules, per kind
DEFAULT_IDS = {
    kind: frozenset(r["rule_id"] for r in rules)
    for kind, rules in server_default_rules("@user:server").items()
}


# ---------------------------------------------------------------- validation (check_*)


def check_scope(scope: str) -> None:
    if scope != SCOPE:
        raise ValidationError("only the 'global' scope exists", fields={"scope": "unknown"})


def check_path(scope: str, kind: str) -> None:
    check_scope(scope)
    if kind not in KINDS:
        raise ValidationError(
            f"unknown push rule kind (one of {', '.join(KINDS)})", fields={"kind": "unknown"}
        )


def check_rule_id(kind: str, rule_id: str) -> None:
    """A rule id a client may create: not a server-default one, no slashes; a room rule's id is
    the room's id and a sender rule's the user's."""
    if rule_id.startswith("."):
        raise ValidationError(
            "rule ids starting with '.' are reserved for server-default rules",
            fields={"rule_id": "reserved"},
        )
    if not rule_id or len(rule_id) > MAX_ID_CHARS or "/" in rule_id or "\\" in rule_id:
        raise ValidationError(
            "a rule id is 1 to 255 characters without '/' or '\\'", fields={"rule_id": "invalid"}
        )
    if kind == "room" and not (rule_id.startswith("!") and ":" in rule_id):
        raise ValidationError("a room rule's id is a room id", fields={"rule_id": "not a room id"})
    if kind == "sender" and not (rule_id.startswith("@") and ":" in rule_id):
        raise ValidationError("a sender rule's id is a user id", fields={"rule_id": "not a user"})


def check_actions(raw: Any) -> list[Any]:
    if not isinstance(raw, list):
        raise BadRequest("'actions' must be a list", errcode="M_BAD_JSON")
    for action in raw:
        if isinstance(action, str):
            if action not in ACTIONS and not NAMESPACED.match(action):
                raise BadRequest(f"unknown action {action!r}", errcode="M_BAD_JSON")
        elif isinstance(action, dict):
            if not isinstance(action.get("set_tweak"), str) or not action["set_tweak"]:
                raise BadRequest("an action object needs a 'set_tweak' name", errcode="M_BAD_JSON")
        else:
            raise BadRequest("an action is a string or an object", errcode="M_BAD_JSON")
    return raw


def _scalar(value: Any) -> bool:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return True
    return isinstance(value, int) and -MAX_JSON_INT <= value <= MAX_JSON_INT


def _check_condition(c: Any) -> JsonDict:
    if not isinstance(c, dict) or not isinstance(c.get("kind"), str) or not c["kind"]:
        raise BadRequest("a condition is an object with a 'kind'", errcode="M_BAD_JSON")
    kind = c["kind"]

    def need_str(key: str) -> None:
        if not isinstance(c.get(key), str):
            raise BadRequest(f"a {kind} condition needs a string '{key}'", errcode="M_BAD_JSON")

    if kind == "event_match":
        need_str("key")
        need_str("pattern")
    elif kind in ("event_property_is", "event_property_contains"):
        need_str("key")
        if "value" not in c or not _scalar(c["value"]):
            raise BadRequest(
                f"a {kind} condition's 'value' is a string, an integer, a boolean or null",
                errcode="M_BAD_JSON",
            )
    elif kind == "room_member_count":
        if not isinstance(c.get("is"), str) or not MEMBER_COUNT.match(c["is"]):
            raise BadRequest(
                "a room_member_count condition's 'is' is a number with an optional "
                "==, <, >, <= or >= prefix",
                errcode="M_BAD_JSON",
            )
    elif kind == "sender_notification_permission":
        need_str("key")
    # contains_display_name has no parameters; other kinds are kept as sent (the spec: an
    # unrecognised condition never matches, so the rule is in effect disabled)
    return c


def check_new_rule(kind: str, rule_id: str, body: JsonDict) -> JsonDict:
    """The rule to store for a PUT body (without ``enabled``, which the caller decides)."""
    check_rule_id(kind, rule_id)
    if "actions" not in body:
        raise BadRequest("'actions' is required", errcode="M_BAD_JSON")
    rule: JsonDict = {"rule_id": rule_id}
    if kind == "content":
        pattern = body.get("pattern")
        if not isinstance(pattern, str) or not pattern:
            raise BadRequest("a content rule needs a string 'pattern'", errcode="M_BAD_JSON")
        rule["pattern"] = pattern
    elif kind in ("override", "underride"):
        conditions = body.get("conditions", [])
        if not isinstance(conditions, list):
            raise BadRequest("'conditions' must be a list", errcode="M_BAD_JSON")
        rule["conditions"] = [_check_condition(c) for c in conditions]
    rule["actions"] = check_actions(body["actions"])
    if len(dumps(rule)) > MAX_RULE_CHARS:
        raise ValidationError("the push rule is too large", fields={"rule": "too large"})
    return rule


def check_enabled(body: JsonDict) -> bool:
    enabled = body.get("enabled")
    if not isinstance(enabled, bool):
        raise BadRequest("'enabled' must be true or false", errcode="M_BAD_JSON")
    return enabled


def check_client_account_data(data_type: str) -> None:
    """Clients may not write the account data the server manages."""
    if data_type in SERVER_MANAGED:
        raise MethodNotAllowed(
            f"{data_type} is managed by the server and cannot be set through this API",
            errcode="M_BAD_JSON",
        )


# ---------------------------------------------------------------- one user's rules


def _not_found() -> NotFound:
    return NotFound("no such push rule")


@dataclass
class UserPushRules:
    """What the user changed, as stored: their own rules per kind (most important first) and
    their ``enabled``/``actions`` overrides of server-default rules, keyed ``kind/rule_id``."""

    rules: dict[str, list[JsonDict]] = field(default_factory=lambda: {k: [] for k in KINDS})
    defaults: dict[str, JsonDict] = field(default_factory=dict)

    @classmethod
    def from_stored(cls, stored: JsonDict | None) -> UserPushRules:
        mine = cls()
        if not stored:
            return mine
        rules = stored.get("rules") or {}
        for kind in KINDS:
            mine.rules[kind] = [r for r in rules.get(kind) or [] if isinstance(r, dict)]
        mine.defaults = {
            k: v for k, v in (stored.get("defaults") or {}).items() if isinstance(v, dict)
        }
        return mine

    def to_stored(self) -> JsonDict:
        return {"rules": self.rules, "defaults": self.defaults}

    # --------------------------------------------------------- reading

    def ruleset(self, user_id: str) -> JsonDict:
        """The user's global ruleset: user rules before the server-default rules of their kind,
        except ``.m.rule.master``, which comes before everything."""
        out: JsonDict = {}
        for kind, defaults in server_default_rules(user_id).items():
            base = [self._apply(kind, r) for r in defaults]
            own = [{**r, "default": False} for r in self.rules[kind]]
            out[kind] = base[:1] + own + base[1:] if kind == "override" else own + base
        return out

    def _apply(self, kind: str, rule: JsonDict) -> JsonDict:
        change = self.defaults.get(f"{kind}/{rule['rule_id']}")
        if change:
            if isinstance(change.get("enabled"), bool):
                rule["enabled"] = change["enabled"]
            if isinstance(change.get("actions"), list):
                rule["actions"] = change["actions"]
        return rule

    def find(self, user_id: str, kind: str, rule_id: str) -> JsonDict:
        for rule in self.ruleset(user_id)[kind]:
            if rule["rule_id"] == rule_id:
                r: JsonDict = rule
                return r
        raise _not_found()

    def _own_index(self, kind: str, rule_id: str) -> int | None:
        for i, r in enumerate(self.rules[kind]):
            if r.get("rule_id") == rule_id:
                return i
        return None

    # --------------------------------------------------------- changing

    def put(self, kind: str, rule: JsonDict, before: str | None, after: str | None) -> None:
        """Add or replace a user rule. A new rule is enabled and, without ``before``/``after``,
        the most important of its kind; a replaced one keeps its place and ``enabled``.
        ``before`` wins when both are given (the spec)."""
        rules = self.rules[kind]
        old = self._own_index(kind, rule["rule_id"])
        rule["enabled"] = True if old is None else rules[old].get("enabled", True) is not False
        anchor = before if before is not None else after
        if anchor is None:
            if old is None:
                if sum(len(v) for v in self.rules.values()) >= MAX_RULES:
                    raise ValidationError(
                        f"at most {MAX_RULES} push rules per user", fields={"rule": "too many"}
                    )
                rules.insert(0, rule)
            else:
                rules[old] = rule
            return
        if anchor.startswith("."):
            raise BadRequest(
                "a rule cannot be placed relative to a server-default rule", errcode="M_UNKNOWN"
            )
        others = [r for r in rules if r.get("rule_id") != rule["rule_id"]]
        where = next((i for i, r in enumerate(others) if r.get("rule_id") == anchor), None)
        if where is None:
            # the spec's example answer for this case
            raise BadRequest(f"before/after rule not found: {anchor}", errcode="M_UNKNOWN")
        if old is None and sum(len(v) for v in self.rules.values()) >= MAX_RULES:
            raise ValidationError(
                f"at most {MAX_RULES} push rules per user", fields={"rule": "too many"}
            )
        others.insert(where if before is not None else where + 1, rule)
        self.rules[kind] = others

    def delete(self, kind: str, rule_id: str) -> None:
        if rule_id.startswith("."):
            if rule_id in DEFAULT_IDS[kind]:
                raise ValidationError(
                    "server-default push rules cannot be deleted (disable them instead)",
                    fields={"rule_id": "server-default"},
                )
            raise _not_found()
        i = self._own_index(kind, rule_id)
        if i is None:
            raise _not_found()
        del self.rules[kind][i]

    def set_attr(self, kind: str, rule_id: str, attr: str, value: Any) -> None:
        """Set ``enabled`` or ``actions`` of a user rule, or the user's override of them on a
        server-default rule."""
        if rule_id.startswith("."):
            if rule_id not in DEFAULT_IDS[kind]:
                raise _not_found()
            self.defaults.setdefault(f"{kind}/{rule_id}", {})[attr] = value
            return
        i = self._own_index(kind, rule_id)
        if i is None:
            raise _not_found()
        self.rules[kind][i][attr] = value


def push_rules_content(user_id: str, stored: JsonDict | None) -> JsonDict:
    """The content of ``m.push_rules`` for the user's stored changes (``GET /pushrules/``)."""
    return {"global": UserPushRules.from_stored(stored).ruleset(user_id)}


def push_rules_event(user_id: str, stored: JsonDict | None) -> JsonDict:
    return {"type": PUSH_RULES, "content": push_rules_content(user_id, stored)}


# ---------------------------------------------------------------- the service (do_*)


class PushRuleService:
    def __init__(self, devices: DeviceService) -> None:
        self.devices = devices

    async def _stored(self, user_id: str) -> JsonDict | None:
        return await self.devices.account_data_or_none(user_id, "", STORED_TYPE)

    async def _load(self, user_id: str) -> UserPushRules:
        return UserPushRules.from_stored(await self._stored(user_id))

    async def _change(self, req: Requester, change: Callable[[UserPushRules], None]) -> None:
        def update(stored: JsonDict | None) -> JsonDict:
            mine = UserPushRules.from_stored(stored)
            change(mine)  # raises (and rolls back) when the change is refused
            return mine.to_stored()

        await self.devices.do_update_account_data(req, "", STORED_TYPE, update)

    async def all_rules(self, user_id: str) -> JsonDict:
        return push_rules_content(user_id, await self._stored(user_id))

    async def scope_rules(self, user_id: str, scope: str) -> JsonDict:
        check_scope(scope)
        return (await self._load(user_id)).ruleset(user_id)

    async def kind_rules(self, user_id: str, scope: str, kind: str) -> list[JsonDict]:
        check_path(scope, kind)
        rules: list[JsonDict] = (await self._load(user_id)).ruleset(user_id)[kind]
        return rules

    async def rule(self, user_id: str, scope: str, kind: str, rule_id: str) -> JsonDict:
        check_path(scope, kind)
        return (await self._load(user_id)).find(user_id, kind, rule_id)

    async def do_put_rule(
        self,
        req: Requester,
        scope: str,
        kind: str,
        rule_id: str,
        body: JsonDict,
        *,
        before: str | None,
        after: str | None,
    ) -> None:
        check_path(scope, kind)
        rule = check_new_rule(kind, rule_id, body)
        await self._change(req, lambda mine: mine.put(kind, rule, before, after))

    async def do_delete_rule(self, req: Requester, scope: str, kind: str, rule_id: str) -> None:
        check_path(scope, kind)
        await self._change(req, lambda mine: mine.delete(kind, rule_id))

    async def do_set_enabled(
        self, req: Requester, scope: str, kind: str, rule_id: str, body: JsonDict
    ) -> None:
        check_path(scope, kind)
        enabled = check_enabled(body)
        await self._change(req, lambda mine: mine.set_attr(kind, rule_id, "enabled", enabled))

    async def do_set_actions(
        self, req: Requester, scope: str, kind: str, rule_id: str, body: JsonDict
    ) -> None:
        check_path(scope, kind)
        actions = check_actions(body.get("actions"))
        await self._change(req, lambda mine: mine.set_attr(kind, rule_id, "actions", actions))

    # --------------------------------------------------------- the account-data endpoint

    async def client_account_data(self, user_id: str, room_id: str, data_type: str) -> JsonDict:
        """Account data as the client's GET sees it: ``m.push_rules`` built (as in /sync), the
        private store hidden."""
        if data_type == STORED_TYPE:
            raise NotFound("no account data of that type")
        if data_type == PUSH_RULES:
            if room_id:
                raise NotFound("push rules are global account data")
            return await self.all_rules(user_id)
        return await self.devices.account_data(user_id, room_id, data_type)

    async def do_set_client_account_data(
        self, req: Requester, room_id: str, data_type: str, content: JsonDict
    ) -> None:
        check_client_account_data(data_type)
        await self.devices.do_set_account_data(req, room_id, data_type, content)
