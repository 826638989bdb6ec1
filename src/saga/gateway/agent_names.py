"""A bound on the agent names each tenant may teach the gateway.

Every agent name a call carries (``x-saga-agent``, a coding agent's headers, body
``metadata.agent``) keys a learned graph, call statistics in the store, gate and end
accounting. A client that sends a new name per call would grow all of those without
limit, so each tenant gets at most ``limit`` names: the first ``limit`` distinct names
it sends keep their own graphs for the gateway's lifetime; every later new name is
*folded* into the tenant's catch-all agent :data:`CATCH_ALL` (one shared graph), and the
fold is counted per tenant. First come keeps, rather than least recently used, because
evicting a name would forget (and then re-learn) a graph a live agent still uses.

A catch-all keeps the call served and scheduled; only its learning is shared. Tenants
are bounded by the configuration (their API keys), so the whole table is bounded by
tenants x (``limit`` + 1). Each gateway process bounds its own names: with several
gateways over one store, a tenant's names in the store are bounded by gateways x limit.
"""

from __future__ import annotations

from collections import defaultdict

#: The agent every name past a tenant's limit is folded into (a name the identity rules
#: never produce on their own, so it reads as what it is in graphs and metrics).
CATCH_ALL = "(other)"


class AgentNames:
    """Per tenant, the agent names admitted so far, at most ``limit`` of them."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        self.limit = limit
        self._names: defaultdict[str, set[str]] = defaultdict(set)
        #: tenant -> calls whose agent name was folded into :data:`CATCH_ALL`
        self.folded: defaultdict[str, int] = defaultdict(int)

    def resolve(self, tenant: str, agent: str) -> str:
        """The agent name ``tenant``'s call is learned under: ``agent`` itself when it is
        known or there is room for it, else :data:`CATCH_ALL` (counted)."""
        names = self._names[tenant]
        if agent in names:
            return agent
        if len(names) < self.limit:
            names.add(agent)
            return agent
        self.folded[tenant] += 1
        return CATCH_ALL

    def count(self, tenant: str) -> int:
        """How many names ``tenant`` has been given (the catch-all not counted)."""
        return len(self._names.get(tenant, ()))

    def tenants(self) -> list[str]:
        """Tenants that have sent a call, sorted."""
        return sorted(self._names)
