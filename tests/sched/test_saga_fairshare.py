"""Agent Fair Share: queue order and the deviation bound (property test)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from saga.sched.saga.config import SagaConfig
from saga.sched.saga.fairshare import FairShare


def test_tenant_below_its_share_goes_first_then_least_remaining_work() -> None:
    fs = FairShare(SagaConfig(tenant_weights={"a": 2.0, "b": 1.0}, aging=0.5))
    for t in ("a", "b"):
        fs.activate(t)
    fs.charge("a", 10.0)  # normalized 5
    fs.charge("b", 6.0)  # normalized 6: a is further below its share
    assert fs.key("a", 100.0, 0.0) < fs.key("b", 1.0, 0.0)
    # within a tenant: least remaining work, unless the other has waited long enough
    assert fs.key("a", 10.0, 0.0) < fs.key("a", 20.0, 0.0)
    assert fs.key("a", 20.0, 30.0) < fs.key("a", 10.0, 0.0)  # 20 - 0.5 * 30 = 5 < 10


def test_an_idle_tenant_returns_at_the_minimum_not_with_credit() -> None:
    fs = FairShare(SagaConfig())
    fs.activate("a")
    fs.charge("a", 50.0)
    fs.activate("b")  # never served: would otherwise own 50 s of credit
    assert fs.account("b").normalized == 50.0


@settings(max_examples=200, deadline=None)
@given(
    weights=st.lists(st.floats(0.25, 4.0), min_size=2, max_size=5),
    charges=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=300),
    joins=st.lists(st.integers(0, 299), max_size=4),
)
def test_deviation_bound(weights: list[float], charges: list[float], joins: list[int]) -> None:
    """Serving the smallest key, backlogged tenants stay within Q / min weight of each
    other in normalized service (Q = 1, the largest charge)."""
    names = [f"t{i}" for i in range(len(weights))]
    fs = FairShare(SagaConfig(tenant_weights=dict(zip(names, weights, strict=True))))
    active = names[:1]
    fs.activate(names[0])
    late = sorted(joins)
    bound = 1.0 / min(weights) + 1e-9
    for step, q in enumerate(charges):
        while late and late[0] <= step and len(active) < len(names):
            late.pop(0)
            newcomer = names[len(active)]
            active.append(newcomer)
            fs.activate(newcomer)
        served = min(active, key=lambda t: fs.key(t, 0.0, 0.0))
        fs.charge(served, q)
        assert fs.spread(active) <= bound


def test_tenant_weights_set_after_construction_reach_the_accounts() -> None:
    from saga.sched.saga.policy import SagaPolicy

    policy = SagaPolicy()
    policy.fair.account("alice")  # an account made before the weights arrive
    policy.set_tenant_weights({"alice": 2.0, "bob": 0.5})
    assert policy.fair.account("alice").weight == 2.0
    assert policy.fair.account("bob").weight == 0.5
    assert policy.fair.account("carol").weight == 1.0
    policy.fair.charge("alice", 4.0)
    assert policy.fair.key("alice", 0.0, 0.0)[0] == 2.0  # normalized service: 4 / 2
