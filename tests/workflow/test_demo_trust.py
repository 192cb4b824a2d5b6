"""`konsil demo` runs its CNS simulator with the demo organisations' keys as trust list, as an
operator would with `konsil documents export-keys` + `konsil simulate cns --trust`."""

from __future__ import annotations

from sqlalchemy import func, select

from konsil.clock import SystemClock
from konsil.config import Config
from konsil.db import Database
from konsil.demo import demo_sidecars, demo_trust, seed
from konsil.identity.models import Organisation
from workflow.signing import KeyRing
from workflow.simulators import cns
from workflow.simulators.common import verify_signature


async def test_the_demo_cns_trusts_every_demo_organisation(config: Config) -> None:
    config.data_path.mkdir(parents=True)  # as run_demo does
    await seed(config)
    trusted = await demo_trust(config)
    db = Database(config.effective_database_url)
    try:
        async with db.session() as s:
            orgs = list((await s.execute(select(Organisation.id))).scalars())
            assert (await s.execute(select(func.count()).select_from(Organisation))).scalar_one()
        assert len(trusted) == len(orgs) >= 1
        assert await demo_trust(config) == trusted  # the keys are made once
        ring = KeyRing(config.secret_key, SystemClock())
        async with db.session() as s:
            signer = await ring.signer_for(s, orgs[0])
    finally:
        await db.dispose()
    document = b"<ClinicalDocument/>"
    signature = signer.sign(document)
    assert verify_signature(trusted, signer.key_id, document, signature) is None
    assert verify_signature(trusted, signer.key_id, document + b" ", signature) is not None
    # the demo's CNS simulator is the one that checks with these keys
    apps = {title: app for title, app, _ in demo_sidecars(config, trusted)}
    assert apps["CNS simulator"][cns.SETTINGS].trusted_keys == trusted
