"""Backends behind one small interface: send a call, check health, carry out retention.

:class:`Backend` speaks OpenAI HTTP to any compatible server. Calls (and the emulator's
KV control calls, one per retention decision) go through a keep-alive
:class:`~saga.gateway.upstream.UpstreamPool`, the hot path; health checks, metrics and
llama.cpp's slot actions, which are rare, through the shared aiohttp session. The other
classes add what their engine understands, in :meth:`Backend.prepare` (just before a call
is sent, once it has its replica) and :meth:`Backend.retain` (after it finished):

* :class:`EmulatorBackend` -- SAGA's emulator: the scheduler's priority as a header,
  retention through the emulator's KV control API;
* :class:`VLLMBackend` -- vLLM: the priority in the request's ``priority`` field (when the
  server runs ``--scheduling-policy priority``), the workflow id in ``vllm_xargs``, prefix
  cache counters from its Prometheus ``/metrics``;
* :class:`LlamaCppBackend` -- llama.cpp's server: a slot per active workflow (LRU over
  the slots, ``id_slot`` and ``cache_prompt``), ``offload`` as slot save to the server's
  ``--slot-save-path`` and restore on the workflow's next call when its slot went to
  another workflow meanwhile, ``drop`` as slot erase.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import aiohttp

from saga.gateway.config import BackendConfig
from saga.gateway.llama_purge import SlotPurges
from saga.gateway.upstream import UpstreamError, UpstreamPool, UpstreamResponse
from saga.integrations.engines import PrefixCacheStats, parse_prometheus
from saga.sched.decisions import Retention
from saga.sched.policy import CallInfo

log = logging.getLogger("saga.gateway")

#: vLLM priorities are integers; a queue key's two first elements are packed into one,
#: each in milliseconds, the second offset so that it stays positive (order kept while
#: it lies within +-``_SECOND_SPAN`` / 2 ms).
_SECOND_SPAN = 10**12


class BackendError(Exception):
    """The backend could not be reached or failed; the gateway answers 502/504."""

    def __init__(self, message: str, timeout: bool = False) -> None:
        super().__init__(message)
        self.timeout = timeout


def vllm_priority(key: tuple[float, ...]) -> int:
    """A scheduler queue key (lower first) as one vLLM priority (lower first too).

    The key's first element (e.g. a tenant's normalized service) and second (e.g. the
    workflow's remaining work) are compared in that order, to the millisecond; later
    elements (arrival, sequence) are vLLM's own tie-break (arrival order).
    """
    first = round(key[0] * 1000) if key else 0
    second = round(key[1] * 1000) if len(key) > 1 else 0
    second = min(max(second + _SECOND_SPAN // 2, 0), _SECOND_SPAN - 1)
    return first * _SECOND_SPAN + second


class Backend:
    """An OpenAI-compatible server: calls on its own keep-alive pool, the rest on the
    aiohttp ``session`` shared by all backends."""

    kind: ClassVar[str] = "openai"
    #: Whether :meth:`prepare` uses the scheduler's queue key (the gateway computes it).
    takes_priority: ClassVar[bool] = False
    #: Whether :meth:`retain` carries out retention decisions.
    retains: ClassVar[bool] = False
    #: Whether it has a host tier for ``offload`` (the policy's view then shows one).
    offloads: ClassVar[bool] = False
    #: Whether a workflow's next call may go before :meth:`retain` is over: the backend
    #: records a decision as soon as :meth:`retain` starts (before it first waits) and
    #: its engine carries out what was asked in the order it was asked. Else the next
    #: call waits for the retention step (``retain_wait``, saga.gateway.retain_step).
    retains_in_order: ClassVar[bool] = False
    #: Whether it keeps KV in ``config.slots`` slots, one per active workflow (the
    #: policy's view then carries the count: :attr:`RemoteReplicaView.slots`).
    has_slots: ClassVar[bool] = False

    def __init__(
        self, index: int, config: BackendConfig, session: aiohttp.ClientSession,
        timeout: aiohttp.ClientTimeout,
    ) -> None:
        self.index = index
        self.config = config
        self.url = config.url
        self.label = config.label
        self.max_concurrency = config.max_concurrency
        self._session = session
        self._timeout = timeout
        self._health_timeout = aiohttp.ClientTimeout(total=2.0)
        self._control_timeout = aiohttp.ClientTimeout(total=30.0)
        self.pool = UpstreamPool(
            config.url, connect_timeout=timeout.connect or timeout.total or 5.0,
            timeout=timeout.total,
        )

    async def send(self, path: str, body: bytes, headers: dict[str, str]) -> UpstreamResponse:
        """POST ``body`` to ``path``; once the answer's head is in, the caller reads the
        answer and releases it (or closes it to abandon the call)."""
        try:
            return await self.pool.request("POST", path, body, headers)
        except TimeoutError:
            raise BackendError(f"backend {self.label} timed out", timeout=True) from None
        except UpstreamError as error:
            raise BackendError(f"backend {self.label} unreachable: {error}") from None

    def close(self) -> None:
        """Close the call connections (the aiohttp session is its owner's to close)."""
        self.pool.close()

    async def healthy(self) -> bool:
        try:
            async with self._session.get(
                self.url + "/health", timeout=self._health_timeout
            ) as response:
                return response.status == 200
        except (TimeoutError, aiohttp.ClientError):
            return False

    async def prepare(
        self, workflow: str, data: dict[str, Any], headers: dict[str, str],
        key: tuple[float, ...] | None, call: CallInfo | None = None,
    ) -> None:
        """Adapt one call (its body ``data``, a copy, and ``headers``) for this engine
        before it is sent; ``key`` is the scheduler's queue key when
        :attr:`takes_priority` and the policy orders queues, else None; ``call`` is what
        the scheduler core knows of the call (agent, tool before it, last call or not)."""

    def finished(self, workflow: str) -> None:
        """The call :meth:`prepare` adapted is over (answered, failed or abandoned)."""

    def forget(self, workflow: str) -> None:
        """``workflow`` is over: drop what is kept for it here."""

    def sweep(self) -> None:
        """At start: remove what an earlier run left behind."""

    async def retain(self, workflow: str, decision: Retention, now: float) -> None:
        """Carry out a retention decision (a generic server has no way: nothing)."""

    async def prefix_cache(self) -> PrefixCacheStats | None:
        """The engine's own prefix-cache counters (tokens), or None if it has none."""
        return None

    async def _metrics(self) -> dict[str, list[tuple[dict[str, str], float]]] | None:
        try:
            async with self._session.get(
                self.url + "/metrics", timeout=self._health_timeout
            ) as response:
                if response.status != 200:
                    return None
                return parse_prometheus(await response.text())
        except (TimeoutError, aiohttp.ClientError):
            return None

    async def _post_json(self, path: str, payload: Mapping[str, Any], what: str) -> Any:
        try:
            async with self._session.post(
                self.url + path, json=payload, timeout=self._control_timeout
            ) as response:
                if response.status != 200:
                    text = (await response.read())[:200].decode("utf-8", "replace")
                    raise BackendError(
                        f"backend {self.label}: {what} answered {response.status}: {text}"
                    )
                return await response.json(content_type=None)
        except (TimeoutError, aiohttp.ClientError) as error:
            raise BackendError(f"backend {self.label}: {what} failed: {error}") from None


class EmulatorBackend(Backend):
    """SAGA's emulator: priorities as a header, retention through ``/saga/kv/*``."""

    kind = "emulator"
    takes_priority = True
    retains = True

    async def prepare(
        self, workflow: str, data: dict[str, Any], headers: dict[str, str],
        key: tuple[float, ...] | None, call: CallInfo | None = None,
    ) -> None:
        if key is not None:
            headers["x-saga-priority"] = repr(float(key[0]))

    async def retain(self, workflow: str, decision: Retention, now: float) -> None:
        """``now`` is the gateway's clock, the one ``decision.prefetch_at`` is on."""
        payload: dict[str, object] = {"workflow": workflow}
        if decision.kind == "release":
            return
        if decision.kind == "pin":
            payload["ttl"] = decision.ttl
        elif decision.kind == "offload" and decision.prefetch_at is not None:
            payload["prefetch_after"] = max(0.0, decision.prefetch_at - now)
        verb = decision.kind
        headers = {"Content-Type": "application/json"}
        if self.config.admin_key:
            headers["Authorization"] = "Bearer " + self.config.admin_key
        try:
            response = await self.pool.request(
                "POST", f"/saga/kv/{verb}", json.dumps(payload).encode(), headers, timeout=2.0,
            )
            try:
                await response.read()
            finally:
                response.release()
        except (TimeoutError, UpstreamError) as error:
            raise BackendError(f"backend {self.label}: KV {verb} failed: {error}") from None
        if response.status != 200:
            raise BackendError(f"backend {self.label}: KV {verb} answered {response.status}")


def _metric(metrics: Mapping[str, list[tuple[dict[str, str], float]]], *names: str) -> float:
    for name in names:
        if name in metrics:
            return sum(v for _, v in metrics[name])
    return 0.0


class VLLMBackend(Backend):
    """vLLM's OpenAI server.

    The workflow id goes in ``vllm_xargs["saga_workflow"]`` and its tenant (the scope of
    the id, before the first ``/``) in ``saga_tenant`` (per-request extras vLLM hands to
    its engine and scheduler). With ``priority_scheduling`` (the server runs
    ``--scheduling-policy priority``) the scheduler's queue key goes in ``priority``
    (:func:`vllm_priority`); without it vLLM rejects a non-zero priority, so none is sent.
    Prefix-cache counters: ``vllm:prefix_cache_queries`` and ``_hits`` (tokens).

    Retention: vLLM's own scheduler keeps finished KV evictable. SAGA's scheduler inside
    vLLM (:mod:`saga.integrations.vllm_scheduler`, docs/engines.md) pins it when asked:
    the policy's decision arrives (:meth:`retain`) only after a call has finished, so a
    ``pin`` is sent as ``saga_ttl`` (seconds) with the workflow's next call, as the hint
    for that call's retention; without a hint the scheduler in vLLM decides itself.
    A stock vLLM ignores these extras. ``saga_tenant`` and ``saga_ttl`` from the client
    are replaced (the gateway's word counts, not the caller's).
    """

    kind = "vllm"
    takes_priority = True
    retains = True
    #: Workflows whose next-call TTL hint is remembered (oldest forgotten first).
    max_hints: ClassVar[int] = 65536

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._next_ttl: OrderedDict[str, float] = OrderedDict()

    async def prepare(
        self, workflow: str, data: dict[str, Any], headers: dict[str, str],
        key: tuple[float, ...] | None, call: CallInfo | None = None,
    ) -> None:
        xargs = dict(data.get("vllm_xargs") or {})
        xargs.pop("saga_ttl", None)
        tenant, scoped, _ = workflow.partition("/")
        xargs["saga_workflow"] = workflow
        xargs["saga_tenant"] = tenant if scoped else "default"
        # vLLM tags the KV events of the blocks a request stores with its session id:
        # the workflow, so the gateway's KV-event index knows whose prefix a block is.
        xargs["session_id"] = workflow
        if call is not None:  # what SAGA inside vLLM learns its graph from
            xargs["saga_agent"] = call.agent
            if call.tool is not None:
                xargs["saga_tool"] = call.tool
            if call.ends_workflow:
                xargs["saga_end"] = True
        ttl = self._next_ttl.pop(workflow, None)
        if ttl is not None:
            xargs["saga_ttl"] = ttl
        data["vllm_xargs"] = xargs
        if key is not None and self.config.priority_scheduling:
            data["priority"] = vllm_priority(key)

    async def retain(self, workflow: str, decision: Retention, now: float) -> None:
        """Remember a ``pin``'s TTL for the workflow's next call; other kinds forget it."""
        if decision.kind == "pin" and decision.ttl > 0:
            self._next_ttl[workflow] = decision.ttl
            self._next_ttl.move_to_end(workflow)
            while len(self._next_ttl) > self.max_hints:
                self._next_ttl.popitem(last=False)
        else:
            self._next_ttl.pop(workflow, None)

    async def prefix_cache(self) -> PrefixCacheStats | None:
        metrics = await self._metrics()
        if metrics is None:
            return None
        return PrefixCacheStats(
            queries=_metric(metrics, "vllm:prefix_cache_queries_total",
                            "vllm:prefix_cache_queries"),
            hits=_metric(metrics, "vllm:prefix_cache_hits_total", "vllm:prefix_cache_hits"),
        )


def slot_file(workflow: str) -> str:
    """The bare file name a workflow's slot is saved under (llama.cpp accepts no paths)."""
    return "saga-" + hashlib.blake2b(workflow.encode(), digest_size=12).hexdigest() + ".bin"


class LlamaCppBackend(Backend):
    """llama.cpp's server with ``config.slots`` slots (its ``--parallel``).

    Each active workflow owns a slot; a workflow without one takes a free slot, else the
    least recently used slot that is not serving a call (else the least recently used),
    whose owner loses it. Calls carry ``id_slot`` and ``cache_prompt: true``, so a
    workflow's next call reuses its slot's KV. ``pin`` keeps the slot from being taken
    until the pin expires (while another slot can be taken); ``offload`` saves the slot to
    the server's ``--slot-save-path`` and, if the slot went to another workflow by the
    workflow's next call, restores it first (the host tier); ``drop`` erases the slot.
    Counts of saves, restores and erases are in :attr:`actions`, their seconds in
    :attr:`action_seconds`.

    The slots' bookkeeping changes at once, never across a wait, and no lock is held
    while the server carries out a slot action: llama.cpp runs a slot action between two
    batches, so one waits for the batch in progress (up to a second on one CPU thread),
    and holding the replica's calls for it cost each a batch. The server takes its tasks
    in the order they arrive, so a save asked before the workflow's next call (or another
    workflow's call in that slot, or a restore of the save) is done before it: the next
    call need not wait for the save (:attr:`retains_in_order`). A slot being saved is
    taken last.

    With ``kv_tokens`` (the server's unified KV) the backend follows the server's purges
    of idle slots (:mod:`saga.gateway.llama_purge`, counted in :attr:`purges`): a saved
    workflow whose own slot was purged restores it on its next call
    (:attr:`purge_restores`) instead of recomputing its prompt. That rule counts tokens,
    and the server purges more than it predicts (on the real benchmark 6 purges logged
    for 2 followed in one run), so with ``restore_kept`` (off by default) a workflow whose
    save holds all its KV (asked after its last call) restores it before each call even
    when its slot should still hold it (:attr:`kept_restores`): the same KV again, one
    server step of milliseconds, where a missed purge costs the whole prompt's prefill.

    llama.cpp never deletes a saved slot file (its API has save, restore and erase, and
    erase only clears the slot). With ``slot_save_path`` (the directory as this gateway
    sees it) the gateway deletes them: a workflow's file when it is dropped and when the
    workflow ends, every ``saga-*.bin`` left there when the gateway starts (:meth:`sweep`;
    gateways sharing one llama.cpp server lose each other's saves then: their next calls
    recompute), and the oldest saves beyond ``slot_save_budget`` bytes after each save.
    Deletions by reason are in :attr:`deleted`.
    """

    kind = "llamacpp"
    retains = True
    offloads = True
    retains_in_order = True
    has_slots = True

    def __init__(
        self, index: int, config: BackendConfig, session: aiohttp.ClientSession,
        timeout: aiohttp.ClientTimeout,
    ) -> None:
        super().__init__(index, config, session, timeout)
        self.slots = config.slots
        self.owner: list[str | None] = [None] * self.slots
        self.busy = [0] * self.slots
        self._lru: OrderedDict[str, int] = OrderedDict()  # workflow -> slot, oldest first
        self._pinned: dict[str, float] = {}  # workflow -> expiry (time.monotonic)
        self._saved: OrderedDict[str, None] = OrderedDict()  # saved workflows, oldest first
        # slot -> the ended workflow whose KV it still holds: the workflow's last call may
        # end it (forget) before that call's drop decision arrives to erase the slot
        self._ended_in: dict[int, str] = {}
        self._saving = [0] * self.slots  # saves asked and not yet answered, per slot
        # saved workflows whose save was asked after their last call: it holds all their KV
        self._fresh: set[str] = set()
        # the server's purges of idle slots, followed by its rule (config.kv_tokens)
        self.purges = SlotPurges(self.slots, config.kv_tokens)
        self.purge_restores = 0  # restores of a saved workflow whose own slot was purged
        self.kept_restores = 0  # restores into a workflow's own slot believed intact
        self.actions: dict[str, int] = {"save": 0, "restore": 0, "erase": 0}
        # actions the server refused where the gateway goes on without them (a restore
        # that finds no room in the KV is a cache miss: expected under memory pressure)
        self.failed: dict[str, int] = {"save": 0, "restore": 0, "erase": 0}
        # seconds each kind of slot action took, from the request to the server's answer
        # (it waits for the server's batch in progress), failed ones included
        self.action_seconds: dict[str, float] = {"save": 0.0, "restore": 0.0, "erase": 0.0}
        self.slot_dir = Path(config.slot_save_path) if config.slot_save_path else None
        self.deleted: dict[str, int] = {"drop": 0, "end": 0, "sweep": 0, "budget": 0}

    def slot_of(self, workflow: str) -> int | None:
        return self._lru.get(workflow)

    def _take_slot(self, workflow: str) -> int:
        free = [s for s in range(self.slots) if self.owner[s] is None]
        if free:
            slot = free[0]
        else:
            now = time.monotonic()
            order = list(self._lru.items())
            candidates = (
                [s for w, s in order if not self.busy[s] and not self._saving[s]
                 and self._pinned.get(w, 0.0) <= now]
                or [s for w, s in order if not self.busy[s] and self._pinned.get(w, 0.0) <= now]
                or [s for _, s in order if not self.busy[s]]
                or [s for _, s in order]
            )
            slot = candidates[0]
            loser = self.owner[slot]
            if loser is not None:
                del self._lru[loser]
                self._pinned.pop(loser, None)
        self.owner[slot] = workflow
        self._lru[workflow] = slot
        self._ended_in.pop(slot, None)
        return slot

    async def prepare(
        self, workflow: str, data: dict[str, Any], headers: dict[str, str],
        key: tuple[float, ...] | None, call: CallInfo | None = None,
    ) -> None:
        slot = self._lru.get(workflow)
        if slot is not None:
            self._lru.move_to_end(workflow)
            # its slot is its own, but the server may have purged it (llama_purge), or
            # purged it unseen (restore_kept: only a save holding all its KV is restored;
            # not while that save is still at the server: this call goes right behind it,
            # with no batch between them that could purge the slot)
            purged = self.purges.purged[slot]
            kept = self.config.restore_kept and workflow in self._fresh \
                and not self._saving[slot]
            restore = (purged or kept) and workflow in self._saved and not self.busy[slot]
            self.purge_restores += restore and purged
            self.kept_restores += restore and not purged
        else:
            slot = self._take_slot(workflow)
            restore = workflow in self._saved and not self.busy[slot]
        self._fresh.discard(workflow)  # this call adds KV its save does not hold
        self._pinned.pop(workflow, None)  # a pin lasts until the next call
        self.busy[slot] += 1  # before the restore's wait: no other call takes the slot
        if restore:
            try:
                await self._restore(slot, workflow)
            except BaseException:  # cancelled: the call is not sent (no finished())
                self.busy[slot] -= 1
                raise
        # what the call may fill: its prompt (the gateway's estimate) and its output limit
        limit = data.get("max_completion_tokens") or data.get("max_tokens") or 0
        fill = (call.prompt_tokens if call is not None else 0) + \
            (limit if isinstance(limit, int) else 0)
        self.purges.charge(slot, fill, self.busy)
        data["id_slot"] = slot
        data["cache_prompt"] = True

    async def _restore(self, slot: int, workflow: str) -> None:
        """Restore ``workflow``'s saved KV into ``slot``. llama.cpp frees no room for a
        restore (a prompt's batch makes room by purging idle slots; a restore fails, "No
        available space in KV cache"), so when it fails this erases idle slots whose owner
        is saved too, least recently used first, one at a time, until it succeeds: their
        owners lose the slot and restore on their next call (milliseconds) where this
        workflow would recompute its whole prompt. Slots whose KV is nowhere else are kept:
        the call then recomputes (a cache miss)."""
        if await self._action(slot, "restore", slot_file(workflow), quiet=True):
            return
        for other, held in list(self._lru.items()):
            # (the slots' state as it is now: other calls went on during the waits)
            if held == slot or self._lru.get(other) != held or self.busy[held] \
                    or other not in self._saved:
                continue
            del self._lru[other]
            self.owner[held] = None
            self._pinned.pop(other, None)
            self.purges.emptied(held)
            if not await self._action(held, "erase", None, quiet=True):
                return
            if await self._action(slot, "restore", slot_file(workflow), quiet=True):
                return

    def finished(self, workflow: str) -> None:
        slot = self._lru.get(workflow)
        if slot is not None and self.busy[slot]:
            self.busy[slot] -= 1

    async def retain(self, workflow: str, decision: Retention, now: float) -> None:
        """Record the decision, then ask the server for its slot action (the workflow's
        next call need not wait for that: the class doc)."""
        slot = self._lru.get(workflow)
        if decision.kind == "pin" and slot is not None:
            self._pinned[workflow] = time.monotonic() + decision.ttl
        elif decision.kind == "offload" and slot is not None and not self.busy[slot]:
            # a restore asked from now on comes after this save at the server
            self._saved[workflow] = None
            self._saved.move_to_end(workflow)
            self._fresh.add(workflow)
            self._saving[slot] += 1
            try:
                await self._action(slot, "save", slot_file(workflow))
            except BackendError:
                self._saved.pop(workflow, None)  # nothing to restore
                self._fresh.discard(workflow)
                raise
            finally:
                self._saving[slot] -= 1
            self._keep_budget()
        elif decision.kind == "drop":
            self._delete(workflow, "drop")
            if slot is not None and not self.busy[slot]:
                del self._lru[workflow]
                self.owner[slot] = None
                self._pinned.pop(workflow, None)
                self.purges.emptied(slot)
                await self._action(slot, "erase", None)
            elif slot is None:  # ended already: erase the slot if no one took it since
                ended = [s for s, w in self._ended_in.items() if w == workflow]
                for s in ended:
                    del self._ended_in[s]
                for s in ended:
                    if self.owner[s] is None and not self.busy[s]:
                        self.purges.emptied(s)
                        await self._action(s, "erase", None)

    def forget(self, workflow: str) -> None:
        self._delete(workflow, "end")
        self._pinned.pop(workflow, None)
        slot = self._lru.get(workflow)
        if slot is not None and not self.busy[slot]:  # the slot is free for another
            del self._lru[workflow]
            self.owner[slot] = None
            self._ended_in[slot] = workflow

    def sweep(self) -> None:
        for path in self._files():
            if _unlink(path):
                self.deleted["sweep"] += 1

    def slot_files(self) -> tuple[int, int]:
        """Saved slot files in ``slot_save_path`` and their bytes ((0, 0) without it)."""
        count = size = 0
        for path in self._files():
            with contextlib.suppress(OSError):
                size += path.stat().st_size
                count += 1
        return count, size

    def _files(self) -> list[Path]:
        if self.slot_dir is None:
            return []
        try:
            return list(self.slot_dir.glob("saga-*.bin"))
        except OSError:
            return []

    def _delete(self, workflow: str, reason: str) -> None:
        if workflow not in self._saved:
            return
        del self._saved[workflow]
        self._fresh.discard(workflow)
        if self.slot_dir is not None and _unlink(self.slot_dir / slot_file(workflow)):
            self.deleted[reason] += 1

    def _keep_budget(self) -> None:
        """Delete the oldest saves while the files exceed ``slot_save_budget``."""
        if self.slot_dir is None:
            return
        _, size = self.slot_files()
        budget = self.config.slot_save_budget
        while size > budget and self._saved:
            oldest = next(iter(self._saved))
            path = self.slot_dir / slot_file(oldest)
            try:
                freed = path.stat().st_size
            except OSError:
                freed = 0
            self._delete(oldest, "budget")
            size -= freed

    async def _action(self, slot: int, action: str, filename: str | None,
                      quiet: bool = False) -> bool:
        """Ask the server for a slot action; whether it was done (``quiet``: a failure
        is logged, not raised)."""
        payload = {"filename": filename} if filename is not None else {}
        began = time.monotonic()
        try:
            await self._post_json(f"/slots/{slot}?action={action}", payload, f"slot {action}")
        except BackendError:
            self.action_seconds[action] += time.monotonic() - began
            if not quiet:
                raise
            # A failed restore is a cache miss: the call recomputes its prompt. Counted
            # (saga_slot_actions_total), not warned of: under memory pressure it is routine.
            self.failed[action] += 1
            log.debug("backend %s: slot %s of slot %d failed", self.label, action, slot)
            return False
        self.action_seconds[action] += time.monotonic() - began
        self.actions[action] += 1
        return True

    async def prefix_cache(self) -> PrefixCacheStats | None:
        metrics = await self._metrics()
        if metrics is None:
            return None
        cached = _metric(metrics, "llamacpp:prompt_tokens_cached_total")
        evaluated = _metric(metrics, "llamacpp:prompt_tokens_total")
        return PrefixCacheStats(queries=cached + evaluated, hits=cached)


def _unlink(path: Path) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    except OSError as error:
        log.warning("cannot delete slot file %s: %s", path.name, error)
        return False
    return True


BACKENDS: dict[str, type[Backend]] = {
    "openai": Backend, "emulator": EmulatorBackend, "vllm": VLLMBackend,
    "llamacpp": LlamaCppBackend,
}


def build_backend(
    index: int, config: BackendConfig, session: aiohttp.ClientSession,
    timeout: aiohttp.ClientTimeout,
) -> Backend:
    return BACKENDS[config.kind](index, config, session, timeout)
