"""SAGA's retention decisions on the Ray path: decided by the router when a call ends,
carried by the workflow's next call to the replica holding the pin, and passed on to
vLLM as ``saga_ttl`` (fakes only, no Ray)."""

from __future__ import annotations

from saga.integrations.ray.call import RayCall
from saga.integrations.ray.routing import SagaRouting, Tiers
from saga.integrations.ray.vllm import request_body
from saga.wire.prefix import estimate_tokens, text_runs


def _call(workflow: str, text: str, tool: str | None = None, ends: bool = False,
          body: dict[str, object] | None = None) -> RayCall:
    return RayCall(
        workflow=workflow, tenant="default", agent="coder", tool=tool, ends=ends,
        kind="chat", model="m", messages=[{"role": "user", "content": text}],
        prompt_tokens=estimate_tokens(text), runs=text_runs(text, 64), max_tokens=8,
        body=dict(body or {}),
    )


def _route(routing: SagaRouting, rid: str, call: RayCall, now: float,
           replica: str | None = None) -> str:
    decision = routing.route(rid, call, now)
    assert isinstance(decision, Tiers), decision
    sent_to = replica or decision.ranks[0][0]
    routing.sent(rid, sent_to, now)
    return sent_to


def _pinned_on_home() -> tuple[SagaRouting, str, float]:
    """w1's first call ends on its home while another workflow's long prompt runs there
    (memory pressure: releasing w1's KV risks its eviction), so the policy pins it."""
    routing = SagaRouting("saga", slots=2, cluster="test-2", retains=True)  # 512 x 64 tokens
    routing.update_replicas(["r-a", "r-b"])
    home = _route(routing, "q1", _call("w1", "ctx " * 4000), 0.0)
    _route(routing, "o1", _call("other", "busy " * 24_000), 0.0, replica=home)
    routing.completed("q1", 1.0)
    assert routing.stats.pins == 1
    replica, ttl = routing.ttl_hints["w1"]
    assert replica == home and ttl > 0
    view = routing.views[routing.slot_of[home]]
    assert "w1" in view.pins  # the view holds the pin's blocks until the next call
    return routing, home, ttl


def test_a_pin_rides_the_workflows_next_call_to_the_replica_that_holds_it() -> None:
    routing, home, ttl = _pinned_on_home()
    routing.completed("o1", 2.0)
    nxt = _call("w1", "ctx " * 4200, tool="bash")
    assert _route(routing, "q2", nxt, 3.0) == home
    assert nxt.ttl_hints == {home: ttl}
    assert routing.stats.hinted == 1
    assert "w1" not in routing.ttl_hints  # sent once
    assert "w1" not in routing.views[routing.slot_of[home]].pins  # its next call took it


def test_a_call_stolen_from_its_home_carries_the_hint_only_for_the_home() -> None:
    routing, home, ttl = _pinned_on_home()  # "other" still runs on the home
    nxt = _call("w1", "ctx " * 4200, tool="bash")
    moved = _route(routing, "q2", nxt, 3.0)
    assert moved != home and routing.stats.steals >= 1
    assert nxt.ttl_hints == {home: ttl}  # what the replica there applies: nothing
    assert "saga_ttl" not in request_body(nxt, moved)["vllm_xargs"]


def test_a_release_forgets_the_pin_and_the_next_call_carries_no_hint() -> None:
    routing, _, _ = _pinned_on_home()
    routing.completed("o1", 2.0)  # memory is free again
    _route(routing, "q2", _call("w1", "ctx " * 4200, tool="bash"), 3.0)
    routing.completed("q2", 4.0)  # nothing else runs: no pressure, nothing to pin
    assert "w1" not in routing.ttl_hints
    third = _call("w1", "ctx " * 4400, tool="bash")
    _route(routing, "q3", third, 6.0)
    assert third.ttl_hints == {}


def test_a_workflow_handed_to_another_router_takes_no_hint_there() -> None:
    routing, _, _ = _pinned_on_home()
    routing.hand_over("w1", 2.0)  # another router placed its next call
    assert "w1" not in routing.ttl_hints


def test_hints_are_bounded() -> None:
    routing, home, _ = _pinned_on_home()
    routing.max_hints = 1
    _route(routing, "q2", _call("w2", "two " * 4000), 3.0, replica=home)
    routing.completed("q2", 4.0)  # "other" still runs there: w2 is pinned too
    assert list(routing.ttl_hints) == ["w2"]


def test_replicas_that_keep_no_kv_get_no_hint_and_the_view_holds_no_pinned_blocks() -> None:
    routing = SagaRouting("saga", slots=2, cluster="test-2")  # emulator replicas: no retains
    routing.update_replicas(["r-a", "r-b"])
    home = _route(routing, "q1", _call("w1", "ctx " * 4000), 0.0)
    _route(routing, "o1", _call("other", "busy " * 24_000), 0.0, replica=home)
    held = routing.views[routing.slot_of[home]].kv.held
    routing.completed("q1", 1.0)
    assert routing.ttl_hints == {} and routing.stats.pins == 0
    view = routing.views[routing.slot_of[home]]
    assert view.kv.held == held - -(-estimate_tokens("ctx " * 4000) // 64)  # w1's call left
    nxt = _call("w1", "ctx " * 4200, tool="bash")
    _route(routing, "q2", nxt, 3.0)
    assert nxt.ttl_hints == {}


def test_vllm_gets_the_hint_meant_for_its_replica_and_saga_s_extras() -> None:
    call = _call("acme/w1", "hi", tool="bash",
                 body={"model": "m", "stream": True,
                       "vllm_xargs": {"saga_ttl": 99.0, "saga_tenant": "evil", "keep": 1}})
    call.ttl_hints = {"r-a": 12.5}
    body = request_body(call, "r-a")
    assert body["stream"] is False
    assert body["vllm_xargs"] == {
        "keep": 1, "saga_workflow": "acme/w1", "saga_tenant": "acme",
        "session_id": "acme/w1", "saga_agent": "coder", "saga_tool": "bash",
        "saga_ttl": 12.5,
    }
    assert call.body["vllm_xargs"]["saga_ttl"] == 99.0  # the call itself is unchanged


def test_another_replica_gets_no_hint_and_a_client_cannot_set_one() -> None:
    call = _call("w1", "hi", ends=True, body={"vllm_xargs": {"saga_ttl": 99.0}})
    call.ttl_hints = {"r-a": 12.5}
    xargs = request_body(call, "r-b")["vllm_xargs"]
    assert "saga_ttl" not in xargs
    assert xargs["saga_end"] is True and xargs["saga_tenant"] == "default"
