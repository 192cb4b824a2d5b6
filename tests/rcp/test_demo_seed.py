"""``konsil demo``'s RCP data: a board covering the quorum specialties, upcoming sessions, two
submitted cases (one scheduled); seeding twice creates nothing more."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import date

from sqlalchemy import func, select

from konsil import appkeys as K
from konsil.audit.service import SYSTEM
from konsil.auth.service import Principal
from konsil.demo import DEMO_ACCOUNTS, DEMO_PATIENTS
from konsil.identity.matricule import make_matricule
from konsil.identity.models import Account
from konsil.identity.service import NewPatient
from rcp.domain.lifecycle import CaseState
from rcp.domain.quorum import Attendee, evaluate
from rcp.models import Board, Case
from rcp.web import demo
from rcp.web.keys import RCP
from tests.conftest import Client, Person


async def test_the_demo_board_is_alive_and_seeded_once(
    client: Client, create_user: Callable[..., Awaitable[Person]]
) -> None:
    app = client.app
    assert not await demo.seed(app)  # no demo accounts: nothing to do
    for username, role, name, specialty in DEMO_ACCOUNTS:
        await create_user(username, role, specialty=specialty, display_name=name)
    for birth, seq, given, family, sex in DEMO_PATIENTS:
        await app[K.IDENTITY].do_create_patient(
            SYSTEM,
            NewPatient(
                make_matricule(birth, seq),
                given,
                family,
                date(int(birth[:4]), int(birth[4:6]), int(birth[6:])),
                sex,
            ),
        )
    assert await demo.seed(app)
    assert not await demo.seed(app)  # idempotent

    rcp = app[RCP]
    async with app[K.DB].session() as s:
        board = (await s.execute(select(Board).where(Board.name == demo.BOARD))).scalar_one()
        states = sorted(
            (await s.execute(select(Case.state).where(Case.board_id == board.id))).scalars()
        )
        boards = await s.scalar(select(func.count()).select_from(Board))
        coord = (
            await s.execute(select(Account).where(Account.username == demo.COORDINATOR))
        ).scalar_one()
    assert boards == 1
    assert states == sorted([CaseState.SCHEDULED.value, CaseState.SUBMITTED.value])
    bv = await rcp.board(board.id)
    everyone = [Attendee(m.account_id, m.name, m.specialty, True) for m in bv.members]
    assert evaluate(bv.rule, everyone).met  # the members can reach quorum
    assert any(m.is_chair for m in bv.members)
    upcoming = await rcp.sessions(board.id, upcoming_only=True)
    assert len(upcoming) >= 7
    view = await rcp.session_view(Principal.of(coord), upcoming[0].id)
    assert len(view.agenda) + len(view.waiting) >= 1
