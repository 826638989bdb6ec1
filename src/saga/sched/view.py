"""The scheduler core's interface: what a policy may read of the world it decides for.

A policy is typed against this module only. Each runtime brings an *adapter* that
satisfies these protocols over its own state, and the same policy object runs in all
of them (docs/architecture.md):

* the engine model's :class:`saga.engine.replica.Replica` and its ``Request`` (the
  simulator and the emulator);
* the gateway's :class:`saga.gateway.view.RemoteReplicaView` and its call records;
* :class:`saga.integrations.vllm_view.VLLMReplicaView` and its ``VLLMCall``, over vLLM's
  own queues and block pool (``SagaScheduler`` runs inside vLLM).

The protocols are read-only views (properties), so an adapter may keep a plain
attribute, a property or a computed value behind each member. The one verb a policy
may use is :meth:`ReplicaView.unpin` (SAGA lets a stolen workflow's pin go); every
other decision is returned as data (:mod:`saga.sched.decisions`).

The KV cache vocabulary (:data:`~saga.engine.kvcache.Run`, the radix tree's
:class:`~saga.engine.kvcache.KVNode`, :class:`~saga.engine.kvcache.EvictionOrder`)
stays in :mod:`saga.engine.kvcache`: that module is a pure data structure that imports
nothing of SAGA, reads no clock and does no I/O, so it sits *below* the core and both
the core and the engine model use it (an eviction order is a decision the core returns;
``RadixKV`` is also the SGLang baseline's own router tree). The import-linter contracts
in pyproject.toml keep it a leaf.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from saga.engine.kvcache import Run


@dataclass(slots=True)
class CallInfo:
    """What a policy may know about a call when it becomes ready.

    ``output_tokens`` is the call's true output length: known to the simulator,
    not to a real scheduler. Only offline bounds (``belady``) may read it, and
    ``next_gap`` (the tool time before the workflow's next call) and ``next_runs``
    (the KV blocks of the next call's prompt) likewise.
    ``after`` names the calls this one waited for (the DAG's edges, as a client's
    request would say which results it carries) and ``next_tool`` the tool that the
    call's output invokes (visible in a real response's tool call), if any.

    ``turn_ended`` says what the call's response shows: False if it invokes a tool (the
    client will call again), True if it ends the turn (only a human's message may follow),
    None when the runtime does not report it.

    ``ends_workflow`` is the client's end marker (the gateway's ``x-saga-end`` header):
    set only on the last call of a workflow whose client sends one (``end_signal =
    "explicit"``). ``oracle_last_call`` is the truth, whether or not the client says it:
    the call is its workflow's last. Only offline bounds may read it (:data:`ORACLE_FIELDS`).
    """

    workflow: str
    tenant: str
    agent: str
    call_id: str
    index: int
    tool: str | None
    prompt_tokens: int
    runs: tuple[Run, ...]
    issued_at: float
    workflow_arrival: float
    slo: float | None
    ends_workflow: bool
    output_tokens: int = 0
    next_gap: float | None = None
    after: tuple[str, ...] = ()
    next_tool: str | None = None
    next_runs: tuple[Run, ...] | None = None
    oracle_last_call: bool = False
    turn_ended: bool | None = None


#: What the simulator knows and a real gateway does not: only policies with
#: ``offline = True`` may read these fields of :class:`CallInfo`.
ORACLE_FIELDS: tuple[str, ...] = ("output_tokens", "next_gap", "next_runs", "oracle_last_call")


@dataclass(slots=True)
class WorkflowInfo:
    """A workflow as a policy sees it when it arrives (no knowledge of its calls)."""

    workflow: str
    tenant: str
    agent: str
    arrival: float
    slo: float | None


class CallView(Protocol):
    """A call queued or running on a replica, as a policy may read it."""

    @property
    def workflow(self) -> str: ...

    @property
    def info(self) -> CallInfo | None:
        """The call as it became ready (None for calls a runtime made up itself)."""
        ...

    @property
    def seq(self) -> int:
        """A runtime-wide arrival counter: the last tie-break of every queue order."""
        ...

    @property
    def enqueued_at(self) -> float: ...

    @property
    def scheduled_at(self) -> float:
        """When it was first admitted to the running batch; negative while never."""
        ...

    @property
    def prompt_tokens(self) -> int: ...

    @property
    def generated(self) -> int:
        """Output tokens produced so far."""
        ...

    @property
    def computed(self) -> int:
        """Tokens whose KV exists (0 where the runtime cannot see the engine's progress)."""
        ...

    @property
    def total_tokens(self) -> int:
        """Prompt plus output so far: the KV it needs before its next token."""
        ...

    @property
    def runs(self) -> tuple[Run, ...]:
        """The prompt's KV blocks, as runs."""
        ...

    @property
    def locked_blocks(self) -> int:
        """Blocks of its prefix it holds locked in the replica's cache."""
        ...

    @property
    def preemptions(self) -> int: ...

    @property
    def lock(self) -> object | None:
        """The runtime's handle on the call's locked prefix: not None while it holds KV."""
        ...


class KVView(Protocol):
    """One memory tier of a replica, in blocks."""

    @property
    def capacity(self) -> int: ...

    @property
    def cached_blocks(self) -> int: ...

    @property
    def locked_blocks(self) -> int:
        """Held by calls or pins: not evictable."""
        ...

    @property
    def anonymous_blocks(self) -> int:
        """Held by running calls outside the prefix cache."""
        ...

    def match_blocks(self, runs: Sequence[Run]) -> int:
        """Blocks of the longest cached prefix of ``runs``."""
        ...


class PinView(Protocol):
    """KV a retention decision keeps for a workflow between its calls."""

    @property
    def expires(self) -> float: ...


class ReplicaView(Protocol):
    """One replica as a policy may read it.

    The queue token sums are kept by the adapter as calls move (see
    :class:`saga.engine.replica.QueueTokens` for their definitions).
    """

    @property
    def index(self) -> int: ...

    @property
    def up(self) -> bool: ...

    @property
    def slots(self) -> int | None:
        """Sequences whose KV the replica keeps between calls (llama.cpp's ``--parallel``:
        a workflow beyond them takes another's slot), None when only memory bounds them
        (vLLM, the simulator)."""
        ...

    @property
    def block_tokens(self) -> int: ...

    @property
    def block_bytes(self) -> int:
        """Bytes of KV one block occupies."""
        ...

    @property
    def max_num_batched_tokens(self) -> int:
        """The chunk budget of a step (vLLM's ``max_num_batched_tokens``)."""
        ...

    @property
    def waiting(self) -> Sequence[CallView]: ...

    @property
    def running(self) -> Sequence[CallView]: ...

    @property
    def context_tokens(self) -> int: ...

    @property
    def demand_tokens(self) -> int: ...

    @property
    def backlog_tokens(self) -> int: ...

    @property
    def kv(self) -> KVView: ...

    @property
    def host(self) -> KVView | None:
        """The host (CPU) tier, None when the replica has none."""
        ...

    @property
    def pins(self) -> Mapping[str, PinView]:
        """Workflow -> the pin a retention decision made for it."""
        ...

    def load(self) -> int:
        """Calls queued or running."""
        ...

    def outstanding_tokens(self) -> int:
        """Work a router can see (prompts still to prefill plus a decode allowance)."""
        ...

    def cached_blocks_for(self, runs: Sequence[Run]) -> int:
        """Blocks of ``runs``' prefix cached on the GPU tier."""
        ...

    def unpin(self, workflow: str, now: float) -> bool:
        """Let ``workflow``'s pin go (its KV becomes evictable); False if it had none."""
        ...


class ModelFootprint(Protocol):
    """What a policy reads of the served model: the size of its KV."""

    def kv_bytes_per_token(self) -> int: ...


class CostView(Protocol):
    """The cost figures policies predict with (:class:`saga.engine.costmodel.CostModel`)."""

    @property
    def model(self) -> ModelFootprint: ...

    @property
    def host_link_bandwidth(self) -> float:
        """Bytes per second between host memory and the GPUs."""
        ...

    def prefill_time(self, prompt_tokens: int, cached_tokens: int = 0, chunk: int = 8192) -> float:
        """Seconds to prefill one prompt alone, in chunks of ``chunk`` tokens."""
        ...

    def decode_steps_time(self, n_seqs: int, ctx_sum: int, k: int) -> float:
        """Seconds for ``k`` pure-decode steps of ``n_seqs`` sequences."""
        ...

    def host_transfer_time(self, nbytes: float) -> float: ...
