"""The vLLM adapter to the scheduler core: one vLLM engine as a :class:`ReplicaView`.

:class:`VLLMReplicaView` reads vLLM's own waiting and running queues and block pool
(through the small :class:`VLLMState` the scheduler class offers) and :class:`VLLMCall`
wraps one of vLLM's ``Request`` objects as a :class:`~saga.sched.view.CallView`, so that
``SagaScheduler`` (:mod:`saga.integrations.vllm_scheduler`) drives the very policy the
simulator and the gateway drive. Pure: it imports nothing of vLLM and reads its objects
by the members named below, so tests run it over fakes.

What is exact and what is not:

* ``waiting``/``running``: vLLM's queues, exactly (requests the scheduler class was
  told about; ``kv_holding_waiting`` counts as waiting);
* a call's ``computed``, ``generated``, ``total_tokens``, ``prompt_tokens``: vLLM's
  ``num_computed_tokens``, ``num_output_tokens``, ``num_tokens``, ``num_prompt_tokens``;
  ``locked_blocks``: the blocks its tokens fill (``ceil(num_tokens / block_size)``);
* the queue token sums: computed from those on each read (one engine's queues are short);
* ``kv``: the block pool: ``capacity`` its usable blocks, ``locked_blocks`` those not in
  its free queue (held by requests or pins); ``match_blocks`` is 0: a call's runs are
  not known before vLLM hashes its blocks, and one engine has nothing to place;
* ``pins``: the pins the scheduler holds (their blocks kept out of the free queue);
* cost figures (:class:`StepCost`): seconds per prefill token and per decode step,
  from the configuration (no GPU model of a real engine is assumed).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from saga.engine.kvcache import Run
from saga.sched.view import CallInfo, PinView


class VLLMState(Protocol):
    """What the view reads of the vLLM scheduler it adapts."""

    def saga_waiting_requests(self) -> Iterable[Any]:
        """vLLM ``Request`` objects waiting (in no particular order)."""
        ...

    def saga_running_requests(self) -> Iterable[Any]: ...

    def saga_free_blocks(self) -> int:
        """Blocks in the pool's free queue (free or cached and evictable)."""
        ...


class VLLMCall:
    """One vLLM request as a policy reads it."""

    __slots__ = ("block_size", "enqueued_at", "info", "request", "scheduled_at", "seq")

    def __init__(
        self, request: Any, info: CallInfo, seq: int, enqueued_at: float, block_size: int
    ) -> None:
        self.request = request
        self.info = info
        self.seq = seq
        self.enqueued_at = enqueued_at
        self.scheduled_at = -1.0  # first scheduled (the scheduler sets it)
        self.block_size = block_size

    @property
    def workflow(self) -> str:
        return self.info.workflow

    @property
    def prompt_tokens(self) -> int:
        return int(self.request.num_prompt_tokens)

    @property
    def generated(self) -> int:
        return int(self.request.num_output_tokens)

    @property
    def computed(self) -> int:
        return int(self.request.num_computed_tokens)

    @property
    def total_tokens(self) -> int:
        return int(self.request.num_tokens)

    @property
    def runs(self) -> tuple[Run, ...]:
        return self.info.runs

    @property
    def locked_blocks(self) -> int:
        return math.ceil(self.total_tokens / self.block_size)

    @property
    def preemptions(self) -> int:
        return int(getattr(self.request, "num_preemptions", 0))

    @property
    def lock(self) -> object | None:
        return self.request if self.computed > 0 else None

    def __repr__(self) -> str:
        return f"VLLMCall({self.workflow}/{self.info.call_id})"


class BlockPoolView:
    """vLLM's block pool as one memory tier."""

    def __init__(self, state: VLLMState, capacity: int) -> None:
        self._state = state
        self.capacity = capacity

    @property
    def locked_blocks(self) -> int:
        return max(0, self.capacity - self._state.saga_free_blocks())

    @property
    def cached_blocks(self) -> int:
        return self.locked_blocks

    anonymous_blocks = 0

    def match_blocks(self, runs: Sequence[Run]) -> int:
        return 0


class VLLMReplicaView:
    """One vLLM engine as a :class:`~saga.sched.view.ReplicaView` (replica 0)."""

    index = 0
    up = True
    host = None
    slots = None  # vLLM keeps any number of sequences' KV, as memory allows

    def __init__(
        self, state: VLLMState, calls: Mapping[str, VLLMCall], pins: Mapping[str, PinView],
        *, block_size: int, capacity_blocks: int, max_num_batched_tokens: int,
        block_bytes: int = 0,
    ) -> None:
        self._state = state
        self._calls = calls  # request id -> its call, kept by the scheduler
        self._pins = pins
        self.block_tokens = block_size
        self.block_bytes = block_bytes
        self.max_num_batched_tokens = max_num_batched_tokens
        self.kv = BlockPoolView(state, capacity_blocks)

    def _wrap(self, requests: Iterable[Any]) -> list[VLLMCall]:
        calls = self._calls
        return [c for c in (calls.get(r.request_id) for r in requests) if c is not None]

    @property
    def waiting(self) -> list[VLLMCall]:
        return self._wrap(self._state.saga_waiting_requests())

    @property
    def running(self) -> list[VLLMCall]:
        return self._wrap(self._state.saga_running_requests())

    @property
    def pins(self) -> Mapping[str, PinView]:
        return self._pins

    @property
    def context_tokens(self) -> int:
        return sum(c.computed for c in self.running)

    @property
    def demand_tokens(self) -> int:
        return sum(c.total_tokens - c.computed for c in self.waiting)

    @property
    def backlog_tokens(self) -> int:
        running = sum(max(0, c.total_tokens - c.computed - 1) for c in self.running)
        return running + sum(max(0, c.prompt_tokens - c.computed) for c in self.waiting)

    def load(self) -> int:
        return len(self.waiting) + len(self.running)

    def outstanding_tokens(self) -> int:
        calls = self.waiting + self.running
        return sum(max(0, c.prompt_tokens - c.computed) + 16 for c in calls)

    def cached_blocks_for(self, runs: Sequence[Run]) -> int:
        return 0

    def unpin(self, workflow: str, now: float) -> bool:
        """One engine: SAGA never moves a workflow away, so never unpins through here."""
        return False


class _KVFootprint:
    def __init__(self, kv_bytes_per_token: int) -> None:
        self._bytes = kv_bytes_per_token

    def kv_bytes_per_token(self) -> int:
        return self._bytes


class StepCost:
    """A :class:`~saga.sched.view.CostView` of linear step times: ``t_token`` seconds per
    prefill token, ``t_decode`` per decode step (whatever the batch), no host link."""

    host_link_bandwidth = math.inf

    def __init__(self, t_token: float, t_decode: float, kv_bytes_per_token: int = 0) -> None:
        self.t_token = t_token
        self.t_decode = t_decode
        self.model = _KVFootprint(kv_bytes_per_token)

    def prefill_time(self, prompt_tokens: int, cached_tokens: int = 0, chunk: int = 8192) -> float:
        return max(prompt_tokens - cached_tokens, 0) * self.t_token

    def decode_steps_time(self, n_seqs: int, ctx_sum: int, k: int) -> float:
        return k * self.t_decode

    def host_transfer_time(self, nbytes: float) -> float:
        return 0.0
