"""``features``: one process serves only some feature packages (e.g. the Matrix homeserver)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from konsil import appkeys as K
from konsil.app import create_app
from konsil.audit.service import SYSTEM
from konsil.auth.passwords import PasswordHasher
from konsil.clock import FakeClock
from konsil.config import Config, WorkflowConfig, load_config
from konsil.errors import ConfigError
from konsil.identity.service import NewAccount
from messaging.web import HS
from rcp.web.keys import NOTICES
from video.web import SERVICE as VIDEO
from workflow.web.keys import OUTBOX, WORKER

# A delivery target: the workflow worker starts only when one is configured.
WITH_DSP = WorkflowConfig(dsp_url="http://127.0.0.1:9/dsp")


def _app(config: Config, hasher: PasswordHasher, *features: str) -> web.Application:
    cfg = dataclasses.replace(config, features=features, workflow=WITH_DSP)
    return create_app(cfg, clock=FakeClock(), hasher=hasher)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("messaging,chat", "unknown feature(s) chat; known: messaging, rcp, video, workflow"),
        ("", "features must name at least one of"),
        ("video", "features: video needs workflow in the same process"),
        ("rcp,workflow", "features: rcp needs messaging in the same process"),
    ],
)
def test_bad_features_are_one_clear_error(value: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(env={"KONSIL_FEATURES": value})
    assert message in str(err.value)


def test_features_default_to_all_and_read_from_env() -> None:
    assert load_config(env={}).features == ("messaging", "rcp", "video", "workflow")
    assert load_config(env={"KONSIL_FEATURES": " messaging "}).features == ("messaging",)
    assert load_config(env={"KONSIL_FEATURES": "workflow,video"}).features == ("workflow", "video")


async def test_messaging_only_serves_matrix_and_the_kernel_only(
    config: Config, hasher: PasswordHasher
) -> None:
    async with TestClient(TestServer(_app(config, hasher, "messaging"))) as client:
        app = client.app
        # background work of the disabled features did not start
        for key in (WORKER, OUTBOX, NOTICES, VIDEO):
            assert key not in app
        assert HS in app
        for path in ("/documents", "/admin/outbox", "/rcp", "/video", "/api/v1/documents"):
            resp = await client.get(path)
            assert resp.status == 404, path
        # the kernel is served
        assert (await client.get("/healthz")).status == 200
        assert (await client.get("/login")).status == 200
        # and Matrix works end to end: login, whoami
        await app[K.IDENTITY].do_create_account(
            SYSTEM, NewAccount(username="ana", password="pw-ana-0123456789", role="practitioner")
        )
        resp = await client.post(
            "/_matrix/client/v3/login",
            json={
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": "ana"},
                "password": "pw-ana-0123456789",
            },
        )
        assert resp.status == 200
        token = (await resp.json())["access_token"]
        resp = await client.get(
            "/_matrix/client/v3/account/whoami", headers={"Authorization": f"Bearer {token}"}
        )
        assert (await resp.json())["user_id"] == "@ana:localhost"


async def test_without_messaging_matrix_is_404_and_workflow_worker_runs(
    config: Config, hasher: PasswordHasher
) -> None:
    async with TestClient(TestServer(_app(config, hasher, "workflow", "video"))) as client:
        assert HS not in client.app  # no homeserver, no retention loop
        assert WORKER in client.app  # the same config starts it when workflow is on
        assert (await client.get("/_matrix/client/versions")).status == 404
        assert (await client.get("/.well-known/matrix/client")).status == 404
        # workflow and video pages exist (they ask for a login)
        for path in ("/documents", "/video"):
            resp = await client.get(path, allow_redirects=False)
            assert resp.status == 303 and resp.headers["Location"].startswith("/login"), path


def test_messaging_only_process_does_not_import_other_features(tmp_path: Path) -> None:
    """The memory point of the setting: what a Matrix-only process leaves unloaded."""
    from konsil.cli import main

    db = f"sqlite+aiosqlite:///{tmp_path / 'k.db'}"
    assert main(["db", "upgrade", "--database-url", db]) == 0
    probe = (
        "import asyncio, json, sys\n"
        "from aiohttp.test_utils import TestServer\n"
        "from konsil.app import create_app\n"
        "from konsil.config import load_config\n"
        "async def run():\n"
        "    server = TestServer(create_app(load_config()))\n"
        "    await server.start_server()\n"
        "    await server.close()\n"
        "asyncio.run(run())\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    env = {
        "KONSIL_DATABASE_URL": db,
        "KONSIL_DATA_DIR": str(tmp_path),
        "KONSIL_SECRET_KEY": "k" * 40,
        "KONSIL_FEATURES": "messaging",
        "PATH": "/usr/bin:/bin",
    }
    out = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    )
    loaded = set(json.loads(out.stdout.strip().splitlines()[-1]))
    assert {"konsil", "messaging"} <= loaded
    assert {"rcp", "video", "workflow", "alembic", "jinja2", "lxml", "aiortc"}.isdisjoint(loaded)


def test_cli_features_flag_is_checked(capsys: pytest.CaptureFixture[str]) -> None:
    from konsil.cli import main

    assert main(["serve", "--features", "messaging,telepathy"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("konsil: error: features: unknown feature(s) telepathy")
