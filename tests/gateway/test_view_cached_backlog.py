"""A running call's backlog in the gateway's view is the prefill it still has to do: its
prompt less the prefix the view expected cached when it was sent, not its whole context.

Counting a cache-hit call as the prefill of its whole context made a replica busy with
another workflow's (cheap, cached) call look seconds behind, and SAGA stole workflows away
from the KV it had kept for them (a full re-prefill on the other replica; `saga bench
real`'s light case, docs/engines.md)."""

from __future__ import annotations

from saga.gateway.config import GatewayConfig
from saga.gateway.view import GatewayCall, RemoteReplicaView
from saga.sched.view import CallInfo


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


def test_saga_keeps_a_workflow_home_while_another_cache_hit_runs_there() -> None:
    """Replica 0 holds both workflows' KV (they share a system prompt, so ``other`` joined
    ``mine`` there) and runs ``other``'s next call, which found its 5,888-token prefix
    cached; replica 1 is idle. ``mine``'s next call stays home (its prefix is cached
    there): the running call's remaining prefill is 112 tokens, not 6,000, so an idle
    replica that would recompute ``mine``'s 1,024-token context is no gain."""
    from saga.gateway.app import Gateway

    config = GatewayConfig.model_validate({
        "policy": "saga", "cluster": "cpu-tiny", "block_tokens": 128,
        "sticky_sessions": False,
        "backends": [{"url": "http://127.0.0.1:1", "kind": "vllm"},
                     {"url": "http://127.0.0.1:2", "kind": "vllm"}],
    })
    gateway = Gateway(config)
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
