"""Push rules: the server-default rules, a real matrix-nio client changing them, ``m.push_rules``
in /sync after every change, and the errors of bad requests."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from nio import (
    AsyncClient,
    AsyncClientConfig,
    DeletePushRuleResponse,
    EnablePushRuleResponse,
    LoginResponse,
    PushEventMatch,
    PushNotify,
    PushRuleKind,
    PushRuleset,
    PushRulesEvent,
    PushSetTweak,
    RoomCreateResponse,
    SetPushRuleActionsResponse,
    SetPushRuleResponse,
    SyncResponse,
)

from konsil import appkeys as K
from tests.conftest import Client, Person
from tests.messaging.mx import Mx, login

Users = Callable[..., Awaitable[Person]]

DEFAULT_OVERRIDE = [
    ".m.rule.master",
    ".m.rule.suppress_notices",
    ".m.rule.invite_for_me",
    ".m.rule.member_event",
    ".m.rule.is_user_mention",
    ".m.rule.contains_display_name",
    ".m.rule.is_room_mention",
    ".m.rule.roomnotif",
    ".m.rule.tombstone",
    ".m.rule.reaction",
    ".m.rule.room.server_acl",
    ".m.rule.suppress_edits",
]
DEFAULT_UNDERRIDE = [
    ".m.rule.call",
    ".m.rule.encrypted_room_one_to_one",
    ".m.rule.room_one_to_one",
    ".m.rule.message",
    ".m.rule.encrypted",
]


def ids(rules: list[Any]) -> list[str]:
    return [r.id for r in rules]


async def nio_sync(c: AsyncClient) -> PushRuleset | None:
    """One sync; the global push rules it delivered, if any."""
    resp = await c.sync(timeout=0)
    assert isinstance(resp, SyncResponse), resp
    events = [e for e in resp.account_data_events if isinstance(e, PushRulesEvent)]
    assert len(events) <= 1
    return events[0].global_rules if events else None


async def changed(c: AsyncClient) -> PushRuleset:
    rules = await nio_sync(c)
    assert rules is not None, "the change did not reach /sync"
    return rules


async def test_nio_client_reads_and_changes_push_rules(client: Client, create_user: Users) -> None:
    alice = await create_user("alice")
    base = str(client.make_url("")).rstrip("/")
    server = client.app[K.CONFIG].server_name
    c = AsyncClient(
        base,
        f"@alice:{server}",
        config=AsyncClientConfig(encryption_enabled=False, store_sync_tokens=False),
    )
    try:
        assert isinstance(await c.login(alice.password), LoginResponse)
        headers = {"Authorization": f"Bearer {c.access_token}"}

        # the first sync has the server-default rules
        rules = await nio_sync(c)
        assert rules is not None
        assert ids(rules.override) == DEFAULT_OVERRIDE
        assert ids(rules.underride) == DEFAULT_UNDERRIDE
        assert ids(rules.content) == [".m.rule.contains_user_name"]
        assert rules.content[0].pattern == "alice" and rules.content[0].default
        assert rules.room == [] and rules.sender == []
        master = rules.override[0]
        assert master.default and not master.enabled and master.actions == []
        invite = rules.override[2]
        assert invite.conditions[2].as_value == {
            "kind": "event_match",
            "key": "state_key",
            "pattern": c.user_id,
        }
        mention = rules.override[4]
        assert mention.conditions[0].as_value == {
            "kind": "event_property_contains",
            "key": "content.m\\.mentions.user_ids",
            "value": c.user_id,
        }
        assert [a.as_value for a in rules.underride[0].actions] == [
            "notify",
            {"set_tweak": "sound", "value": "ring"},
        ]
        # GET /pushrules/ answers what /sync delivered
        whole = await (await client.get("/_matrix/client/v3/pushrules/", headers=headers)).json()
        assert PushRuleset.from_dict(whole["global"]) == rules
        assert await nio_sync(c) is None  # nothing changed: not sent again

        # a content rule, then one before it and one after that one
        cake = [PushNotify(), PushSetTweak("sound", "cakealarm.wav")]
        r = await c.set_pushrule(
            "global", PushRuleKind.content, "cake", actions=cake, pattern="cake"
        )
        assert isinstance(r, SetPushRuleResponse), r
        rules = await changed(c)
        assert ids(rules.content) == ["cake", ".m.rule.contains_user_name"]
        assert rules.content[0].enabled and not rules.content[0].default
        assert rules.content[0].actions == cake

        r = await c.set_pushrule(
            "global", PushRuleKind.content, "lie", before="cake", actions=[], pattern="cake*lie"
        )
        assert isinstance(r, SetPushRuleResponse), r
        assert ids((await changed(c)).content) == ["lie", "cake", ".m.rule.contains_user_name"]
        r = await c.set_pushrule(
            "global",
            PushRuleKind.content,
            "tea",
            after="lie",
            actions=[PushNotify()],
            pattern="tea",
        )
        assert isinstance(r, SetPushRuleResponse), r
        rules = await changed(c)
        assert ids(rules.content) == ["lie", "tea", "cake", ".m.rule.contains_user_name"]
        # a new rule without before/after is the most important of its kind
        r = await c.set_pushrule(
            "global", PushRuleKind.content, "beer", actions=[PushNotify()], pattern="beer"
        )
        assert isinstance(r, SetPushRuleResponse), r
        assert ids((await changed(c)).content)[:2] == ["beer", "lie"]

        # a room rule (mute a room), and an override rule with conditions
        created = await c.room_create(name="Board")
        assert isinstance(created, RoomCreateResponse), created
        room = created.room_id
        r = await c.set_pushrule("global", PushRuleKind.room, room, actions=[])
        assert isinstance(r, SetPushRuleResponse), r
        r = await c.set_pushrule(
            "global",
            PushRuleKind.override,
            "urgent",
            actions=[PushNotify(), PushSetTweak("highlight", True)],
            conditions=[PushEventMatch("content.body", "urgent*")],
        )
        assert isinstance(r, SetPushRuleResponse), r
        rules = await changed(c)
        assert ids(rules.room) == [room] and rules.room[0].actions == []
        # user rules come after .m.rule.master and before the other server-default rules
        assert ids(rules.override)[:3] == [".m.rule.master", "urgent", ".m.rule.suppress_notices"]
        assert rules.override[1].conditions == [PushEventMatch("content.body", "urgent*")]

        # a server-default rule disabled, another one's actions changed
        r = await c.enable_pushrule("global", PushRuleKind.underride, ".m.rule.message", False)
        assert isinstance(r, EnablePushRuleResponse), r
        rules = await changed(c)
        message = next(x for x in rules.underride if x.id == ".m.rule.message")
        assert not message.enabled and message.default
        quiet = [PushNotify(), PushSetTweak("sound", "soft")]
        r = await c.set_pushrule_actions(
            "global", PushRuleKind.underride, ".m.rule.room_one_to_one", quiet
        )
        assert isinstance(r, SetPushRuleActionsResponse), r
        rules = await changed(c)
        one_to_one = next(x for x in rules.underride if x.id == ".m.rule.room_one_to_one")
        assert one_to_one.actions == quiet and one_to_one.enabled
        assert not next(x for x in rules.underride if x.id == ".m.rule.message").enabled
        assert ids(rules.underride) == DEFAULT_UNDERRIDE  # still there, in their order
        # and a user rule disabled
        r = await c.enable_pushrule("global", PushRuleKind.content, "cake", False)
        assert isinstance(r, EnablePushRuleResponse), r
        rules = await changed(c)
        assert not next(x for x in rules.content if x.id == "cake").enabled

        # replacing a rule keeps its place and its enabled state
        r = await c.set_pushrule(
            "global", PushRuleKind.content, "cake", actions=[PushNotify()], pattern="cakes"
        )
        assert isinstance(r, SetPushRuleResponse), r
        rules = await changed(c)
        cake_rule = next(x for x in rules.content if x.id == "cake")
        assert cake_rule.pattern == "cakes" and not cake_rule.enabled
        assert ids(rules.content) == ["beer", "lie", "tea", "cake", ".m.rule.contains_user_name"]

        # its own rule deleted
        r = await c.delete_pushrule("global", PushRuleKind.content, "tea")
        assert isinstance(r, DeletePushRuleResponse), r
        rules = await changed(c)
        assert ids(rules.content) == ["beer", "lie", "cake", ".m.rule.contains_user_name"]

        # a server-default rule cannot be deleted
        r = await c.delete_pushrule("global", PushRuleKind.override, ".m.rule.master")
        assert not isinstance(r, DeletePushRuleResponse)
        assert r.status_code == "M_INVALID_PARAM"
        assert await nio_sync(c) is None

        # a new login's first sync has the user's rules, not the defaults
        c2 = AsyncClient(base, c.user_id, config=AsyncClientConfig(encryption_enabled=False))
        try:
            assert isinstance(await c2.login(alice.password), LoginResponse)
            assert await nio_sync(c2) == rules
        finally:
            await c2.close()
    finally:
        await c.close()


async def test_a_change_wakes_a_waiting_sync_and_stays_per_user(
    client: Client, create_user: Users
) -> None:
    a = await login(client, await create_user("alice"))
    b = await login(client, await create_user("bob"))
    first = await a.sync()
    pushed = [e for e in first["account_data"]["events"] if e["type"] == "m.push_rules"]
    assert len(pushed) == 1

    waiting = asyncio.create_task(a.sync(first["next_batch"], timeout="20000"))
    await asyncio.sleep(0)
    await a.put("/pushrules/global/override/.m.rule.master/enabled", {"enabled": True})
    woke = await asyncio.wait_for(waiting, 10)
    [event] = woke["account_data"]["events"]
    assert event["type"] == "m.push_rules"
    assert event["content"]["global"]["override"][0] == {
        "rule_id": ".m.rule.master",
        "default": True,
        "enabled": True,
        "conditions": [],
        "actions": [],
    }
    assert await a.get("/pushrules/global/override/.m.rule.master/enabled") == {"enabled": True}
    assert await a.get("/pushrules/global/underride/.m.rule.call/actions") == {
        "actions": ["notify", {"set_tweak": "sound", "value": "ring"}]
    }
    assert (await a.get("/pushrules/global/content/.m.rule.contains_user_name"))[
        "pattern"
    ] == "alice"
    kind = await a.get("/pushrules/global/underride/")
    assert [r["rule_id"] for r in kind] == DEFAULT_UNDERRIDE
    whole = await a.get("/pushrules/global/")
    assert whole == (await a.get("/pushrules/"))["global"] == event["content"]["global"]
    # the account-data endpoint reads m.push_rules as /sync has it
    assert await a.get(f"/user/{a.user_id}/account_data/m.push_rules") == event["content"]

    # bob still has the defaults, with his own name
    bob_rules = (await b.get("/pushrules/"))["global"]
    assert bob_rules["override"][0]["enabled"] is False
    assert bob_rules["content"][0]["pattern"] == "bob"
    assert bob_rules["override"][2]["conditions"][2]["pattern"] == b.user_id
    # and his syncs were not concerned
    bob_first = await b.sync()
    await a.put("/pushrules/global/override/.m.rule.master/enabled", {"enabled": False})
    assert (await b.sync(bob_first["next_batch"]))["account_data"]["events"] == []


async def error(mx: Mx, method: str, path: str, body: Any, status: int, errcode: str) -> None:
    data = await mx.call(method, path, body, status=status)
    assert data["errcode"] == errcode, data
    assert isinstance(data["error"], str) and data["error"]


async def test_bad_push_rule_requests(client: Client, create_user: Users) -> None:
    a = await login(client, await create_user("alice"))
    before = await a.get("/pushrules/")
    first = await a.sync()
    room = await a.create_room()
    notify = {"actions": ["notify"]}

    # the path: scope, kind, rule id
    await error(a, "GET", "/pushrules/global/nope/x", None, 400, "M_INVALID_PARAM")
    await error(a, "GET", "/pushrules/device/override/x", None, 400, "M_INVALID_PARAM")
    await error(a, "GET", "/pushrules/device/", None, 400, "M_INVALID_PARAM")
    await error(a, "PUT", "/pushrules/global/nope/x", notify, 400, "M_INVALID_PARAM")
    await error(a, "GET", "/pushrules/global/override/nothing", None, 404, "M_NOT_FOUND")
    await error(a, "GET", "/pushrules/global/override/.m.rule.call", None, 404, "M_NOT_FOUND")
    body = {"actions": [], "pattern": "x"}
    await error(a, "PUT", "/pushrules/global/content/.mine", body, 400, "M_INVALID_PARAM")
    await error(a, "PUT", "/pushrules/global/content/a%5Cb", body, 400, "M_INVALID_PARAM")
    await error(a, "PUT", "/pushrules/global/room/not-a-room", notify, 400, "M_INVALID_PARAM")
    await error(a, "PUT", "/pushrules/global/sender/bob", notify, 400, "M_INVALID_PARAM")
    await error(a, "PUT", "/pushrules/global/content/" + "x" * 256, body, 400, "M_INVALID_PARAM")

    # the body: actions, conditions, pattern
    path = "/pushrules/global/override/mine"
    for bad in (
        {},
        {"actions": "notify"},
        {"actions": [42]},
        {"actions": ["bogus"]},
        {"actions": [{"value": "x"}]},
        {"actions": [], "conditions": {"kind": "event_match"}},
        {"actions": [], "conditions": [{"kind": "event_match", "key": "type"}]},
        {"actions": [], "conditions": [{"key": "type", "pattern": "x"}]},
        {"actions": [], "conditions": [{"kind": "room_member_count", "is": "lots"}]},
        {"actions": [], "conditions": [{"kind": "event_property_is", "key": "k", "value": [1]}]},
    ):
        await error(a, "PUT", path, bad, 400, "M_BAD_JSON")
    await error(a, "PUT", "/pushrules/global/content/c", notify, 400, "M_BAD_JSON")
    resp = await client.put(
        "/_matrix/client/v3" + path, data=b"{nope", headers={**a.h, "Content-Type": "text/json"}
    )
    assert resp.status == 400 and (await resp.json())["errcode"] == "M_NOT_JSON"

    # before/after: an unknown rule, a server-default rule (the spec's example errcode)
    await error(a, "PUT", path + "?before=nothing", notify, 400, "M_UNKNOWN")
    await error(a, "PUT", path + "?after=.m.rule.master", notify, 400, "M_UNKNOWN")

    # server-default rules: not deleted; their enabled/actions only where they are
    await error(
        a, "DELETE", "/pushrules/global/override/.m.rule.master", None, 400, "M_INVALID_PARAM"
    )
    await error(a, "DELETE", "/pushrules/global/override/.m.rule.nope", None, 404, "M_NOT_FOUND")
    await error(a, "DELETE", "/pushrules/global/override/mine", None, 404, "M_NOT_FOUND")
    enabled = "/pushrules/global/underride/.m.rule.master/enabled"
    await error(a, "PUT", enabled, {"enabled": True}, 404, "M_NOT_FOUND")
    master = "/pushrules/global/override/.m.rule.master"
    await error(a, "PUT", master + "/enabled", {"enabled": "yes"}, 400, "M_BAD_JSON")
    await error(a, "PUT", master + "/enabled", {}, 400, "M_BAD_JSON")
    await error(a, "PUT", master + "/actions", {"actions": {"notify": 1}}, 400, "M_BAD_JSON")
    await error(a, "PUT", "/pushrules/global/room/!x:y/actions", notify, 404, "M_NOT_FOUND")
    await error(a, "GET", "/pushrules/global/room/!x:y/enabled", None, 404, "M_NOT_FOUND")

    # m.push_rules (and the other server-managed types) cannot be written as account data
    user = f"/user/{a.user_id}"
    rules_body: dict[str, Any] = {"global": {}}
    await error(a, "PUT", f"{user}/account_data/m.push_rules", rules_body, 405, "M_BAD_JSON")
    await error(
        a, "PUT", f"{user}/rooms/{room}/account_data/m.push_rules", rules_body, 405, "M_BAD_JSON"
    )
    await error(a, "PUT", f"{user}/account_data/lu.konsil.push_rules", {}, 405, "M_BAD_JSON")
    fully_read = {"event_id": "$x"}
    await error(
        a, "PUT", f"{user}/rooms/{room}/account_data/m.fully_read", fully_read, 405, "M_BAD_JSON"
    )
    await error(a, "GET", f"{user}/account_data/lu.konsil.push_rules", None, 404, "M_NOT_FOUND")

    # nothing of that changed anything
    assert await a.get("/pushrules/") == before
    later = await a.sync(first["next_batch"])
    assert [e["type"] for e in later["account_data"]["events"]] == []

    # what is accepted: unknown condition kinds (they never match), namespaced actions, the
    # spec's legacy no-op actions, a sender rule
    ok = {
        "actions": ["notify", "dont_notify", "org.matrix.msc3768.notify_in_app"],
        "conditions": [{"kind": "org.example.future", "x": 1}, {"kind": "contains_display_name"}],
    }
    assert await a.put(path, ok) == {}
    assert await a.put("/pushrules/global/sender/@bob:localhost", {"actions": []}) == {}
    got = await a.get(path)
    assert got == {**ok, "rule_id": "mine", "default": False, "enabled": True}
    assert await a.get("/pushrules/global/sender/@bob:localhost") == {
        "rule_id": "@bob:localhost",
        "default": False,
        "enabled": True,
        "actions": [],
    }
