"""A running call's backlog in the gateway's view is the prefill it still has to do: its
prompt less the prefix the view expected cached when it was sent, not its whole context.

Counting a cache-hit call as the prefill of its whole context made a replica busy with
another workflow's (cheap, cached) call look seconds behind, and SAGA stole workflows away
from the KV it had kept for them (a full re-prefill on the other replica; `saga bench
real`'s light case, docs/engines.md)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from saga.gateway.config import GatewayConfig
from saga.gateway.view import GatewayCall, RemoteReplicaView
from saga.sched.view import CallInfo

if TYPE_CHECKING:
    from saga.gateway.app import Gateway


def _info(workflow: str, index: int, prompt: int, blocks: int, shared: int = 0) -> CallInfo:
    """A call of ``prompt`` tokens: ``shared`` blocks of a system prompt every workflow
    has, then ``blocks`` blocks of its workflow's own."""
    runs = ((("h:system", 0, shared),) if shared else ()) + ((f"h:{workflow}", 0, blocks),)
    return CallInfo(workflow=workflow, tenant="t", agent="a", call_id=str(index), index=index,
                    tool=None, prompt_tokens=prompt, runs=runs, issued_at=0.0,
                    workflow_arrival=0.0, slo=None, ends_workflow=False)


def test_a_running_call_counts_only_the_prompt_it_found_uncached() -> None:
    view = RemoteReplicaView(0, capacity_blocks=64, block_tokens=16, max_concurrency=1)
    first = GatewayCall(_info("w", 0, 64, 4), 8, 16, 1, 0.0)
    assert view.try_start(first, 1.0)
    assert first.cached_tokens == 0 and view.backlog_tokens == 63  # nothing cached yet
    view.finish(first, 2.0, lambda call: True)
    assert view.backlog_tokens == 0

    # the next call extends the prompt: its first 4 blocks (64 tokens) were sent here
    second = GatewayCall(_info("w", 1, 100, 6), 8, 16, 2, 3.0)
    waiting = GatewayCall(_info("w", 2, 100, 6), 8, 16, 3, 3.0)
    assert view.try_start(second, 3.0)
    assert second.cached_tokens == 64
    assert view.backlog_tokens == 100 - 64 - 1
    # a call waiting at the gateway has not reached the engine's cache: its whole prompt
    view.enqueue(waiting, 1.0)
    assert (view.demand_tokens, view.backlog_tokens) == (100, 35 + 100)
    view.check_queue_tokens()
    assert view.finish(second, 4.0, lambda call: True) == [waiting]
    assert waiting.cached_tokens == 96  # all 6 blocks were sent here (by `second`)
    assert view.backlog_tokens == 100 - 96 - 1
    view.check_queue_tokens()
    view.finish(waiting, 5.0, lambda call: True)
    assert (view.demand_tokens, view.backlog_tokens) == (0, 0)


def test_the_lookups_the_view_makes_for_itself_are_not_counted_as_placement_lookups() -> None:
    view = RemoteReplicaView(0, capacity_blocks=64, block_tokens=16, max_concurrency=1)

    class Events:
        def session_prefix_blocks(self, session: str) -> int:
            return 2

    view.kv.add((("h:w", 0, 4),), "w")
    view.events = Events()  # type: ignore[assignment]
    call = GatewayCall(_info("w", 1, 100, 6), 8, 16, 1, 0.0)
    assert view.try_start(call, 1.0)
    assert call.cached_tokens == 2 * 16  # the engine still holds 2 of the 4 blocks sent
    assert view.prefix_lookups == [0, 0, 0]
    assert view.kv.match_blocks((("h:w", 0, 6),)) == 2
    assert view.prefix_lookups == [1, 6, 2]  # the call sent all 6 blocks here


def _two_replica_gateway() -> Gateway:
    """SAGA's gateway over two (unreached) vLLM backends, sessions not pinned."""
    from saga.gateway.app import Gateway

    return Gateway(GatewayConfig.model_validate({
        "policy": "saga", "cluster": "cpu-tiny", "block_tokens": 128,
        "sticky_sessions": False,
        "backends": [{"url": "http://127.0.0.1:1", "kind": "vllm"},
                     {"url": "http://127.0.0.1:2", "kind": "vllm"}],
    }))


def test_saga_keeps_a_workflow_home_while_another_cache_hit_runs_there() -> None:
    """Replica 0 holds both workflows' KV (they share a system prompt, so ``other`` joined
    ``mine`` there) and runs ``other``'s next call, which found its 5,888-token prefix
    cached; replica 1 is idle. ``mine``'s next call stays home (its prefix is cached
    there): the running call's remaining prefill is 112 tokens, not 6,000, so an idle
    replica that would recompute ``mine``'s 1,024-token context is no gain."""
    gateway = _two_replica_gateway()
    policy, views = gateway.policy, gateway.views
    seq = 0

    def place(info: CallInfo, now: float) -> tuple[int, GatewayCall]:
        nonlocal seq
        seq += 1
        policy.on_call_ready(info, now)
        index = policy.place(info, now)
        call = GatewayCall(info, 32, 128, seq, now)
        assert views[index].try_start(call, now)
        return index, call

    def finish(index: int, call: GatewayCall, now: float) -> None:
        views[index].finish(call, now, lambda c: True)
        policy.on_call_finished(call.info, index, now)
        call.served(call.prompt_tokens + 32)
        views[index].note_retention(call.workflow, policy.retention(views[index], call, now),
                                    now, call)

    home, mine = place(_info("mine", 0, 1024, 4, shared=4), 0.0)
    finish(home, mine, 1.0)
    at, other = place(_info("other", 0, 5888, 42, shared=4), 2.0)
    finish(at, other, 3.0)
    assert (home, at) == (0, 0)  # the shared system prompt is cached on replica 0
    _, running = place(_info("other", 1, 6000, 42, shared=4), 4.0)
    assert views[0].running == [running] and not views[1].running
    assert views[0].backlog_tokens == 6000 - 5888 - 1
    steals = policy.steals
    again, _ = place(_info("mine", 1, 1100, 4, shared=4), 4.5)
    assert again == 0 and policy.steals == steals


def test_age_takes_off_the_prefill_a_running_call_has_had_time_for_in_sending_order() -> None:
    """1 ms per uncached token: A (999 tokens of backlog, sent at 0) is prefilled over
    [0, 1], B (499, sent at 0.2) after it, over [1, 1.5]."""
    view = RemoteReplicaView(0, capacity_blocks=64, block_tokens=16, max_concurrency=4,
                             prefill_time=lambda prompt, cached: (prompt - cached) * 1e-3)
    a = GatewayCall(_info("a", 0, 1000, 4), 8, 16, 1, 0.0)
    b = GatewayCall(_info("b", 0, 500, 4), 8, 16, 2, 0.2)
    assert view.try_start(a, 0.0) and view.try_start(b, 0.2)
    assert (a.prefill_seconds, b.prefill_seconds) == (1.0, 0.5)
    assert view.backlog_tokens == 999 + 499
    view.age(0.5)
    assert (a.backlog, b.backlog, view.backlog_tokens) == (500, 499, 999)  # B not begun
    view.check_queue_tokens()
    view.age(1.25)
    assert (a.backlog, b.backlog, view.backlog_tokens) == (0, 250, 250)
    view.age(0.6)  # a clock that went back never adds backlog again
    assert view.backlog_tokens == 250
    view.finish(a, 1.3, lambda call: True)
    assert view.backlog_tokens == 250
    view.age(2.0)
    assert (b.backlog, view.backlog_tokens) == (0, 0)
    view.check_queue_tokens()
    view.finish(b, 2.1, lambda call: True)
    assert view.backlog_tokens == 0

    plain = RemoteReplicaView(0, capacity_blocks=64, block_tokens=16)  # no cost model
    c = GatewayCall(_info("c", 0, 1000, 4), 8, 16, 1, 0.0)
    assert plain.try_start(c, 0.0)
    plain.age(100.0)
    assert plain.backlog_tokens == 999 and c.prefill_seconds == float("inf")


def _busy_home(after: float) -> tuple[int, int]:
    """``mine`` (homed on replica 0) calls again ``after`` seconds past the predicted end
    of the prefill of ``other``'s first call, running on replica 0 with nothing of its own
    cached (they share a 512-token system prompt); replica 1 is idle. The replica
    ``mine``'s call goes to, and SAGA's steals."""
    from saga.gateway.app import WorkflowState
    from saga.sched.view import WorkflowInfo

    gateway = _two_replica_gateway()
    views = gateway.views
    flows = {w: WorkflowState(WorkflowInfo(w, "t", "a", 0.0, None)) for w in ("mine", "other")}

    def start(info: CallInfo, now: float) -> tuple[int, GatewayCall]:
        index = asyncio.run(gateway.pipeline.place(info, None, now, flows[info.workflow]))
        call = GatewayCall(info, 32, 128, info.index + 1, now)
        assert views[index].try_start(call, now)
        return index, call

    home, first = start(_info("mine", 0, 1024, 4, shared=4), 0.0)
    views[home].finish(first, 1.0, lambda c: True)
    gateway.policy.on_call_finished(first.info, home, 1.0)
    at, running = start(_info("other", 0, 5888, 42, shared=4), 2.0)
    assert (home, at) == (0, 0) and running.cached_tokens == 512
    predicted = running.prefill_seconds
    assert 0.0 < predicted < 60.0
    chosen, _ = start(_info("mine", 1, 1100, 4, shared=4), 2.0 + predicted + after)
    return chosen, gateway.policy.steals  # type: ignore[attr-defined]


def test_saga_steals_from_a_replica_only_while_its_running_prefill_is_ahead() -> None:
    assert _busy_home(after=-0.95 * _busy_prefill()) == (1, 1)  # 95 % of it ahead: steal
    assert _busy_home(after=0.1) == (0, 0)  # over by now: the call is decoding, stay


def _busy_prefill() -> float:
    from saga.engine.cluster import get_cluster

    return get_cluster("cpu-tiny").cost_model().prefill_time(5888, 512)


def _stored(blocks: int, session: str) -> dict[str, object]:
    """vLLM's BlockStored event for the first ``blocks`` blocks of ``session``'s prompt."""
    hashes = [hash((session, i)) for i in range(blocks)]
    return {"type": "BlockStored", "block_hashes": hashes, "parent_block_hash": None,
            "token_ids": [], "block_size": 16, "medium": "GPU", "session_id": session}


def test_with_kv_events_a_prefill_is_not_aged_past_what_the_engine_has_stored() -> None:
    """1 ms per uncached token: A's 999-token prefill is predicted over [0, 1]. The engine
    publishes a step's blocks once the step has run: until A's prompt blocks are stored,
    A is still prefilling at 3.0 (its 62 full blocks ahead); once 40 of them are stored,
    22 blocks (352 tokens); once all are, the model's aging again, which had it over."""
    from saga.gateway.kv_events import KVIndex

    view = RemoteReplicaView(0, capacity_blocks=64, block_tokens=16, max_concurrency=4,
                             prefill_time=lambda prompt, cached: (prompt - cached) * 1e-3)
    index = KVIndex()
    view.events = index
    a = GatewayCall(_info("a", 0, 1000, 62), 8, 16, 1, 0.0)
    assert view.try_start(a, 0.0)
    view.age(0.5)
    assert a.backlog == 62 * 16  # nothing stored yet: the model's 500 is not taken on trust
    view.age(3.0)
    assert view.backlog_tokens == a.backlog == 62 * 16
    index.apply_batch(0, [_stored(40, "a")])
    view.age(3.1)
    assert view.backlog_tokens == a.backlog == (62 - 40) * 16
    index.apply_batch(1, [_stored(62, "a")])
    view.age(3.2)
    assert view.backlog_tokens == a.backlog == 0
    view.check_queue_tokens()

    # an engine ahead of the model: stored blocks never take off more than the model says
    b = GatewayCall(_info("b", 0, 1000, 62), 8, 16, 2, 4.0)
    assert view.try_start(b, 4.0)
    index.apply_batch(2, [_stored(62, "b")])
    view.age(4.25)
    assert b.backlog == 750


def test_saga_sends_a_new_workflow_away_from_a_prefill_the_engine_has_not_finished() -> None:
    """The real bench's light case on a slow machine: ``first`` (replica 0) runs a call
    that hit its cache; ``slow`` (replica 1) was sent a 2,400-token prompt well past its
    predicted prefill. Without events the view has the prefill over, replica 1 has no
    backlog and the newcomer joins it; with them the engine has not stored ``slow``'s
    prompt, its prefill is still ahead, and the newcomer goes to replica 0."""
    from saga.gateway.app import WorkflowState
    from saga.gateway.kv_events import KVIndex
    from saga.sched.view import WorkflowInfo

    def newcomer_goes_to(events: bool) -> int:
        gateway = _two_replica_gateway()
        views = gateway.views
        indexes = [KVIndex(), KVIndex()]
        if events:
            for view, index in zip(views, indexes, strict=True):
                view.events = index
        flows = {w: WorkflowState(WorkflowInfo(w, "t", "a", 0.0, None))
                 for w in ("first", "slow", "new")}

        def start(info: CallInfo, now: float, at: int | None = None) -> GatewayCall:
            index = asyncio.run(gateway.pipeline.place(info, None, now, flows[info.workflow]))
            assert at is None or index == at
            call = GatewayCall(info, 32, 128, info.index + 1, now)
            assert views[index].try_start(call, now)
            return call

        done = start(_info("first", 0, 2200, 17), 0.0, at=0)
        views[0].finish(done, 0.9, lambda c: True)
        gateway.policy.on_call_finished(done.info, 0, 0.9)
        indexes[0].apply_batch(0, [_stored(17, "first") | {"block_size": 128}])
        start(_info("slow", 0, 2400, 18), 1.0, at=1)
        start(_info("first", 1, 2300, 17), 1.75, at=0)
        predicted = get_cluster_prefill(2400, 0)
        now = 1.0 + 2 * predicted  # twice its predicted prefill: the model has it over
        return asyncio.run(gateway.pipeline.place(_info("new", 0, 2000, 15), None, now,
                                                  flows["new"]))

    assert newcomer_goes_to(events=False) == 1
    assert newcomer_goes_to(events=True) == 0


def get_cluster_prefill(prompt: int, cached: int) -> float:
    from saga.engine.cluster import get_cluster

    return get_cluster("cpu-tiny").cost_model().prefill_time(prompt, cached)
