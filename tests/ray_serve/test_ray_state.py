"""The shared state of SAGA's router replicas (the actor's class, without Ray)."""

from __future__ import annotations

import asyncio

from saga.gateway.store import FIRST_CURSOR
from saga.integrations.ray.state import BoundedTTL, SagaState
from saga.sched.saga.graph import Observation


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_bounded_ttl_keeps_the_newest_and_forgets_the_expired() -> None:
    clock = Clock()
    table: BoundedTTL[str] = BoundedTTL(2, 10.0, clock)
    table.put("a", "1")
    table.put("b", "2")
    table.put("c", "3")  # over capacity: the oldest goes
    assert (table.get("a"), table.get("b"), table.get("c")) == (None, "2", "3")
    clock.t = 10.0
    assert table.get("b") is None
    table.expire()
    assert len(table) == 0


def test_homes_admissions_and_events_cross_routers() -> None:
    async def run() -> None:
        clock = Clock()
        state = SagaState(max_sessions=10, session_ttl=60.0, clock=clock)
        assert await state.session("w") == (None, False)
        await state.placed("w", "replica-1", "router-a")
        assert await state.session("w") == ("replica-1", True)
        reply = await state.sync("router-b", 100.0, {"t": 2.0}, [], FIRST_CURSOR)
        assert reply.events == [("w", "placed")]  # placed by another router
        own = await state.sync("router-a", 50.0, {"t": 1.0}, [], FIRST_CURSOR)
        assert own.events == []  # its own placements are not news
        assert own.others_working_set == 100.0
        assert own.tenant_service == {"t": 3.0}
        later = await state.sync("router-b", 100.0, {}, [], reply.cursor,
                                 event_cursor=reply.event_cursor)
        assert later.events == []
        clock.t = 61.0
        assert await state.session("w") == (None, False)  # the TTL passed

    asyncio.run(run())


def test_learned_graph_observations_reach_the_other_routers_only() -> None:
    async def run() -> None:
        state = SagaState()
        seen = Observation("agent", "transition", "a", "b", 1.0, 10.0)
        await state.sync("router-a", 0.0, {}, [seen], FIRST_CURSOR)
        mine = await state.sync("router-a", 0.0, {}, [], FIRST_CURSOR)
        theirs = await state.sync("router-b", 0.0, {}, [], FIRST_CURSOR)
        assert mine.observations == []
        assert theirs.observations == [seen]

    asyncio.run(run())


def test_a_restarted_state_is_a_new_incarnation_that_knows_nothing() -> None:
    async def run() -> None:
        first = SagaState()
        await first.placed("w", "replica-1", "router-a")
        reply = await first.sync("router-a", 10.0, {"t": 1.0}, [], FIRST_CURSOR)
        restarted = SagaState()  # what Ray's restart of the actor builds
        again = await restarted.sync("router-a", 10.0, {}, [], reply.cursor,
                                     event_cursor=reply.event_cursor)
        assert again.incarnation != reply.incarnation
        assert await restarted.session("w") == (None, False)
        assert again.tenant_service == {}
        assert again.event_cursor == 0

    asyncio.run(run())
