"""A gateway policy that reads the replicas as the gateway sees them, not as the engine is.

A policy deployed as a gateway in front of engines (saga.sched.stock: every baseline of
``saga bench real``) reads the gateway's view of each backend
(:class:`saga.gateway.view.RemoteReplicaView`), and two of its figures are not the engine's:

* ``waiting``: the calls the *gateway* holds for the backend (beyond its
  ``max_concurrency``, 256 by default), not vLLM's waiting queue: the gateway sends every
  call on and cannot see which ones vLLM left waiting;
* ``kv.locked_blocks``: the whole prompt blocks of every call the gateway has in flight
  there (running or waiting inside vLLM alike), in the gateway's prompt count (its estimate,
  scaled as it learns: saga.sched.estimated), at most the capacity; ``anonymous_blocks`` is
  0. vLLM's own usage counts only the blocks its admitted requests hold.

llm-d's flow control and KV scorer read exactly these (saga.sched.baselines.llmd): on the
memory-bound real case the gateway's count says "saturated" long before vLLM's blocks do,
so the deployed llm-d holds sessions at the door that the engine's figures would admit.
:class:`GatewayViews` binds the wrapped policy to replicas seen that way, so that the
simulator runs what the gateway runs. Everything else a view says is the engine's (the
prefix match among it: the gateway's index of what it routed agrees with the engine's
cache to a few per cent, docs/engines.md). Pins the gateway recorded from the policy's
retention decisions over a stock engine are not counted (no policy reading these figures
pins).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from saga.sched.policy import Policy, PolicyContext
from saga.sched.wrapped import WrappedPolicy

if TYPE_CHECKING:
    from collections.abc import Mapping

    from saga.engine.kvcache import Run
    from saga.sched.view import CallView, KVView, PinView, ReplicaView

#: The prompt tokens the gateway counts for a call in flight (its estimate as given to the
#: policy), else None (the engine's count is taken).
GatewayTokens = Callable[["CallView"], "int | None"]

#: The gateway's default ``max_concurrency`` per backend (saga.gateway.config).
GATEWAY_MAX_CONCURRENCY = 256


def _engine_tokens(call: CallView) -> int | None:
    return None


class GatewayKV:
    """A replica's KV tier as the gateway counts it (see the module doc)."""

    def __init__(self, view: GatewayReplicaView) -> None:
        self._view = view

    @property
    def capacity(self) -> int:
        return self._view.engine.kv.capacity

    @property
    def cached_blocks(self) -> int:
        return self._view.engine.kv.cached_blocks

    @property
    def locked_blocks(self) -> int:
        """Whole prompt blocks of the calls in flight, in the gateway's count."""
        view = self._view
        bt = view.engine.block_tokens
        held = sum(-(-view.prompt_tokens(c) // bt) for c in view.unordered())
        return min(held, self.capacity)

    @property
    def anonymous_blocks(self) -> int:
        return 0

    def match_blocks(self, runs: Sequence[Run]) -> int:
        return self._view.engine.kv.match_blocks(runs)


class GatewayReplicaView:
    """``engine`` as the gateway in front of it sees it (a
    :class:`~saga.sched.view.ReplicaView`; see the module doc)."""

    def __init__(self, engine: ReplicaView, tokens: GatewayTokens = _engine_tokens,
                 max_concurrency: int = GATEWAY_MAX_CONCURRENCY) -> None:
        self.engine = engine
        self._tokens = tokens
        self.max_concurrency = max_concurrency
        self._kv = GatewayKV(self)

    def unordered(self) -> list[CallView]:
        """The calls sent to the engine and not answered, in no particular order."""
        return [*self.engine.running, *self.engine.waiting]

    def in_flight(self) -> list[CallView]:
        """The calls sent to the engine and not answered, in the order they came."""
        return sorted(self.unordered(), key=lambda c: c.seq)

    def prompt_tokens(self, call: CallView) -> int:
        counted = self._tokens(call)
        return call.prompt_tokens if counted is None else counted

    # ---- what the gateway's view says differently ------------------------------------
    @property
    def waiting(self) -> Sequence[CallView]:
        """The calls the gateway would hold back: those past its concurrency limit."""
        engine = self.engine
        if len(engine.running) + len(engine.waiting) <= self.max_concurrency:
            return ()  # the common case: nothing held, no need to order the calls
        return self.in_flight()[self.max_concurrency:]

    @property
    def kv(self) -> KVView:
        return self._kv

    # ---- the engine's --------------------------------------------------------------------
    @property
    def index(self) -> int:
        return self.engine.index

    @property
    def up(self) -> bool:
        return self.engine.up

    @property
    def slots(self) -> int | None:
        return self.engine.slots

    @property
    def block_tokens(self) -> int:
        return self.engine.block_tokens

    @property
    def block_bytes(self) -> int:
        return self.engine.block_bytes

    @property
    def max_num_batched_tokens(self) -> int:
        return self.engine.max_num_batched_tokens

    @property
    def running(self) -> Sequence[CallView]:
        return self.engine.running

    @property
    def context_tokens(self) -> int:
        return self.engine.context_tokens

    @property
    def demand_tokens(self) -> int:
        return self.engine.demand_tokens

    @property
    def backlog_tokens(self) -> int:
        return self.engine.backlog_tokens

    @property
    def host(self) -> KVView | None:
        return self.engine.host

    @property
    def pins(self) -> Mapping[str, PinView]:
        return self.engine.pins

    def load(self) -> int:
        return self.engine.load()

    def outstanding_tokens(self) -> int:
        return self.engine.outstanding_tokens()

    def cached_blocks_for(self, runs: Sequence[Run]) -> int:
        return self.engine.cached_blocks_for(runs)

    def unpin(self, workflow: str, now: float) -> bool:
        return self.engine.unpin(workflow, now)


class GatewayViews(WrappedPolicy):
    """``inner`` bound to the replicas as the gateway sees them (see the module doc);
    its decisions and observations are otherwise its own."""

    def __init__(self, inner: Policy, tokens: GatewayTokens = _engine_tokens,
                 max_concurrency: int = GATEWAY_MAX_CONCURRENCY) -> None:
        super().__init__(inner)
        self.tokens = tokens
        self.max_concurrency = max_concurrency

    def bind(self, ctx: PolicyContext) -> None:
        self.ctx = ctx
        seen: list[ReplicaView] = [
            GatewayReplicaView(r, self.tokens, self.max_concurrency) for r in ctx.replicas]
        self.inner.bind(PolicyContext(replicas=seen, cost=ctx.cost,
                                      block_tokens=ctx.block_tokens, rng=ctx.rng))


def with_gateway_views(
    inner: Policy, tokens: GatewayTokens = _engine_tokens,
    max_concurrency: int = GATEWAY_MAX_CONCURRENCY,
) -> Policy:
    """``inner`` reading the gateway's view of each replica, named as ``inner`` (a class
    per wrapped policy: the engine reads ``static_order`` and the simulator ``name`` from
    the class)."""
    cls = type(f"GatewayViewed_{type(inner).__name__}", (GatewayViews,),
               {"name": inner.name, "static_order": inner.static_order,
                "offline": inner.offline})
    policy: Policy = cls(inner, tokens, max_concurrency)
    return policy
