"""SAGA's routing decisions for Ray Serve against fake replicas (no Ray needed)."""

from __future__ import annotations

from saga.integrations.ray.call import RayCall
from saga.integrations.ray.routing import Held, SagaRouting, SharedSession, Tiers
from saga.integrations.ray.view import ReplicaStats
from saga.wire.prefix import estimate_tokens, text_runs


def _call(workflow: str, text: str, tenant: str = "default", ends: bool = False) -> RayCall:
    return RayCall(
        workflow=workflow, tenant=tenant, agent="a", tool=None, ends=ends, kind="chat",
        model="m", messages=[{"role": "user", "content": text}],
        prompt_tokens=estimate_tokens(text), runs=text_runs(text, 64), max_tokens=8,
    )


def _router(policy: str = "saga", cluster: str = "small") -> SagaRouting:
    routing = SagaRouting(policy, slots=2, cluster=cluster)
    routing.update_replicas(["r-a", "r-b"])
    return routing


def _send(routing: SagaRouting, rid: str, call: RayCall, now: float,
          shared: SharedSession | None = None) -> Tiers:
    decision = routing.route(rid, call, now, shared)
    assert isinstance(decision, Tiers), decision
    routing.sent(rid, decision.ranks[0][0], now)
    return decision


def test_tiers_put_the_home_first_then_lighter_then_the_rest() -> None:
    routing = _router()
    first = _send(routing, "q1", _call("w1", "hello " * 200), 0.0)
    home = first.ranks[0][0]
    assert routing.home_id("w1") == home
    routing.completed("q1", 1.0)
    again = routing.route("q2", _call("w1", "hello " * 220), 2.0)
    assert isinstance(again, Tiers)
    assert again.ranks[0] == [home]
    assert [r for tier in again.ranks for r in tier] == [home, "r-b" if home == "r-a" else "r-a"]
    # asked again for the same request, the same answer (decided once)
    assert routing.route("q2", _call("w1", "hello " * 220), 2.5) is again


def test_a_loaded_home_lists_the_lighter_replica_as_a_stealing_candidate() -> None:
    routing = _router()
    tiers = _send(routing, "q1", _call("w1", "x " * 100), 0.0)
    home = tiers.ranks[0][0]
    other = "r-b" if home == "r-a" else "r-a"
    routing.report(home, ReplicaStats(waiting=0, running=3))
    routing.completed("q1", 0.5)
    again = routing.route("q2", _call("w1", "x " * 110), 1.0)
    assert isinstance(again, Tiers)
    assert other in again.ranks[0] or again.ranks[1] == [other]


def test_a_home_placed_by_another_router_replica_is_adopted() -> None:
    a, b = _router(), _router()
    home = _send(a, "q1", _call("w1", "shared prefix " * 300), 0.0).ranks[0][0]
    a.completed("q1", 1.0)
    # router b sees the workflow for the first time; the shared state names its home
    tiers = b.route("q2", _call("w1", "shared prefix " * 320), 2.0,
                    SharedSession(home=home, admitted=True))
    assert isinstance(tiers, Tiers)
    assert tiers.ranks[0] == [home]
    assert b.stats.adopted == 1


def test_a_dead_replicas_workflow_moves_to_a_live_one() -> None:
    routing = _router()
    home = _send(routing, "q1", _call("w1", "y " * 100), 0.0).ranks[0][0]
    routing.completed("q1", 0.5)
    survivor = "r-b" if home == "r-a" else "r-a"
    routing.update_replicas([survivor])
    tiers = routing.route("q2", _call("w1", "y " * 120), 1.0)
    assert isinstance(tiers, Tiers)
    assert tiers.ranks == [[survivor]]
    # a replacement replica takes the dead one's slot
    routing.update_replicas([survivor, "r-c"])
    assert routing.views[routing.slot_of["r-c"]].up
    assert home not in routing.slot_of


def test_the_memory_gate_holds_a_workflow_until_memory_is_released() -> None:
    routing = _router(cluster="test-2")  # 2 x 512 blocks of 64 tokens
    big = "z " * 80_000  # 40k tokens: two exceed the gate (1.1 x 64k)
    _send(routing, "q1", _call("w1", big), 0.0)
    held = routing.route("q2", _call("w2", big + " other"), 0.1)
    assert isinstance(held, Held)
    assert "memory gate" in held.reason
    # asked again while w1 runs: still held
    assert isinstance(routing.route("q2", _call("w2", big + " other"), 0.2), Held)
    routing.completed("q1", 1.0)
    routing.route("q3", _call("w1", big, ends=True), 1.1)
    routing.sent("q3", "r-a", 1.1)
    routing.completed("q3", 1.5)  # w1 ended: its working set is gone
    assert isinstance(routing.route("q2", _call("w2", big + " other"), 1.6), Tiers)
    assert routing.stats.held == 2


def test_held_workflows_ask_in_agent_fair_share_order() -> None:
    routing = _router(cluster="test-2")
    big = "z " * 80_000
    # tenants learn apart: the light tenant's first contexts are known from a session of
    # its own (else the gate's cold start would let its first workflows in unsized)
    _send(routing, "q0", _call("w-l0", big, tenant="light", ends=True), 0.0)
    routing.completed("q0", 0.01)
    _send(routing, "q1", _call("w1", big, tenant="heavy"), 0.02)
    routing.charge("heavy", 100.0)  # the heavy tenant was served much more
    routing.route("h1", _call("w-heavy", big, tenant="heavy"), 0.1)
    routing.route("l1", _call("w-light", big, tenant="light"), 0.2)
    routing.completed("q1", 1.0)
    routing.route("q3", _call("w1", big, tenant="heavy", ends=True), 1.1)
    routing.sent("q3", "r-a", 1.1)
    routing.completed("q3", 1.5)
    # memory is free again; the heavy tenant's workflow, though it waited longer, stays
    # behind the light tenant's
    behind = routing.route("h1", _call("w-heavy", big, tenant="heavy"), 1.6)
    assert isinstance(behind, Held)
    assert "Agent Fair Share" in behind.reason
    assert isinstance(routing.route("l1", _call("w-light", big, tenant="light"), 1.7), Tiers)


def test_a_held_workflow_whose_client_left_leaves_the_line() -> None:
    routing = _router(cluster="test-2")
    big = "z " * 80_000
    _send(routing, "q1", _call("w1", big), 0.0)
    routing.route("g1", _call("gone", big), 0.1)
    routing.route("s1", _call("stays", big), 0.2)
    routing.completed("q1", 1.0)
    routing.route("q3", _call("w1", big, ends=True), 1.1)
    routing.sent("q3", "r-a", 1.1)
    routing.completed("q3", 1.5)
    # "gone" stopped asking more than held_ttl ago: "stays" is first now
    assert isinstance(routing.route("s1", _call("stays", big), 10.0), Tiers)
    assert "gone" not in routing.held


def test_any_online_policy_routes_through_the_same_adapter() -> None:
    routing = _router(policy="llm-d")
    tiers = _send(routing, "q1", _call("w1", "p " * 50), 0.0)
    assert tiers.ranks[0][0] in {"r-a", "r-b"}
    routing.completed("q1", 0.1)


def test_a_request_whose_chosen_replica_died_is_placed_again() -> None:
    routing = _router()
    first = routing.route("q1", _call("w1", "k " * 100), 0.0)
    assert isinstance(first, Tiers)
    dead = first.ranks[0][0]
    routing.replica_died(dead)
    again = routing.route("q1", _call("w1", "k " * 100), 0.1)
    assert isinstance(again, Tiers)
    assert dead not in [r for tier in again.ranks for r in tier]


def test_a_workflow_placed_by_another_router_is_handed_over() -> None:
    routing = _router(cluster="test-2")
    _send(routing, "q1", _call("w1", "z " * 60_000), 0.0)
    routing.completed("q1", 1.0)
    # its context (prompt) is homed, and the growth its next call is expected to append
    # (the graph's prior, 1000 tokens: SagaConfig.gate_growth)
    assert routing.local_working_set() == 30_000 + 1_000
    routing.hand_over("w1", 2.0)  # another router placed its next call
    assert routing.local_working_set() == 0
    assert not routing.knows_home("w1")
