"""Agent Fair Share: weighted fairness across tenants, least remaining work within one.

Each tenant t has a weight w_t and an attained service S_t (estimated GPU seconds of
the calls it was served). Its *normalized service* is v_t = S_t / w_t. The queue
order serves the tenant with the smallest v first, i.e. the tenant furthest below
its fair share; within a tenant, the call whose workflow has the least expected
remaining work (from the Agent Execution Graph), minus an aging credit for the time
it has waited, so nothing starves.

A tenant that becomes active after an idle period starts at the smallest v among
active tenants (as in start-time fair queueing), so idleness earns no credit that it
could later use to starve others.

**Deviation bound.** Let Q be the largest service charged for one call. If every
charge goes to a tenant with the smallest v among the backlogged tenants (which is
what ordering by :meth:`FairShare.key` yields at each admission), then at all times,
for any two backlogged tenants i and j,

    |S_i / w_i - S_j / w_j| <= Q / min_k w_k.

Proof sketch, by induction on charges: before a charge all v lie in [m, m + Q/w_min];
the served tenant had v = m and moves to at most m + Q/w_min; others do not move
and the new minimum is >= m, so the spread stays <= Q/w_min. Joining at the current
minimum keeps the invariant. The engine batches several calls per step, so in the
simulator the bound holds at the granularity of admission order, not of tokens.

**Preemption of over-served tenants.** Queue order alone cannot help a tenant whose
call waits on a replica full of another tenant's long calls: service is charged when a
call finishes. So on a full replica (every sequence slot taken, or the last admission
found no blocks), when the first waiting call's tenant is below the last running call's
tenant by more than ``preempt_gap`` (G) seconds of normalized service, that running call
is preempted and the waiting call starts in the same step (:meth:`SagaPolicy.preempt_for
<saga.sched.saga.policy.SagaPolicy.preempt_for>`). The bound this gives: a call whose
tenant trails a running call's tenant by more than G waits behind it no longer than
until the replica next forms a batch (the next step boundary after an arrival or a
finish), unless that call was already preempted ``max_fair_preemptions`` times, which
caps the recompute one call can be made to pay. Each
tenant's *estimated slowdown* (TCT of its finished workflows over their predicted
ideal: calls alone plus tool gaps) is tracked as well, for reports; admission control
acts on its own tracker of interactive call slowdowns (:mod:`.admission`).
"""

from __future__ import annotations

from dataclasses import dataclass

from saga.sched.saga.config import SagaConfig


@dataclass(slots=True)
class TenantAccount:
    weight: float
    service: float = 0.0  # attained GPU seconds (estimated)
    active: int = 0  # workflows in progress
    # observed slowdown of finished workflows, as a running mean
    slowdown_sum: float = 0.0
    slowdown_n: int = 0

    @property
    def normalized(self) -> float:
        return self.service / self.weight

    @property
    def slowdown(self) -> float:
        return self.slowdown_sum / self.slowdown_n if self.slowdown_n else 1.0


class FairShare:
    """Tenant accounts and the AFS queue key."""

    def __init__(self, config: SagaConfig) -> None:
        self.config = config
        self.tenants: dict[str, TenantAccount] = {}

    def account(self, tenant: str) -> TenantAccount:
        acct = self.tenants.get(tenant)
        if acct is None:
            acct = self.tenants[tenant] = TenantAccount(self.config.weight(tenant))
        return acct

    def activate(self, tenant: str) -> None:
        """A workflow of ``tenant`` starts; a returning idle tenant joins at the minimum."""
        acct = self.account(tenant)
        if acct.active == 0:
            floor = self.min_active_normalized()
            if floor is not None and acct.normalized < floor:
                acct.service = floor * acct.weight
        acct.active += 1

    def deactivate(self, tenant: str, slowdown: float | None = None) -> None:
        acct = self.account(tenant)
        acct.active = max(0, acct.active - 1)
        if slowdown is not None:
            acct.slowdown_sum += slowdown
            acct.slowdown_n += 1

    def charge(self, tenant: str, seconds: float) -> None:
        self.account(tenant).service += max(seconds, 0.0)

    def min_active_normalized(self) -> float | None:
        values = [a.normalized for a in self.tenants.values() if a.active > 0]
        return min(values) if values else None

    def key(self, tenant: str, remaining: float, waited: float) -> tuple[float, float]:
        """Queue key: the tenant's normalized service, then aged remaining work.

        (The engine asks it of every queued call at every step: the account's
        ``normalized`` is computed here rather than through two more calls.)"""
        acct = self.tenants.get(tenant)
        if acct is None:
            acct = self.account(tenant)
        return (acct.service / acct.weight, remaining - self.config.aging * waited)

    def spread(self, tenants: list[str]) -> float:
        """max - min normalized service over ``tenants`` (for tests and reports)."""
        values = [self.account(t).normalized for t in tenants]
        return max(values) - min(values) if values else 0.0
