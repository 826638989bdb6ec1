"""The adapters a policy runs behind, each as a small *world* the contract test drives.

A world binds a policy to one runtime's replicas (:class:`saga.sched.view.ReplicaView`)
and moves calls the way that runtime does, so that the test can put the runtime's own
call records (:class:`saga.sched.view.CallView`) in front of every hook:

* ``engine-model``: the engine model's ``Replica`` and ``Request``, built and bound as
  the simulator builds them; a submitted call is enqueued and the replica plans a
  step (the engine then asks the policy for queue keys itself), so calls are running
  or, while a step is in flight, waiting;
* ``gateway``: a real ``Gateway`` (not started: no backend is contacted) and its
  ``RemoteReplicaView``s; calls are the gateway's ``GatewayCall`` records moved through
  the view's verbs, two slots per backend;
* ``vllm``: the vLLM adapter (:mod:`saga.integrations.vllm_view`) as ``SagaScheduler``
  builds it, over fake vLLM requests, queues and block pool (:mod:`fake_vllm`).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Protocol

from fake_vllm import FakeEngine, FakeRequest

from saga.engine.cluster import get_cluster
from saga.engine.replica import Replica, Request
from saga.gateway.config import GatewayConfig
from saga.gateway.view import GatewayCall
from saga.integrations.vllm_scheduler import SagaInVLLM, VLLMSchedulerConfig
from saga.integrations.vllm_view import VLLMCall
from saga.sched.decisions import Retention
from saga.sched.policy import Policy, PolicyContext
from saga.sched.registry import build_policy
from saga.sched.view import CallInfo, CallView, CostView, ReplicaView

BLOCK = 64


class World(Protocol):
    policy: Policy
    replicas: Sequence[ReplicaView]

    def submit(self, info: CallInfo, replica: int, now: float) -> CallView: ...

    def finish(self, call: CallView, replica: int, decision: Retention, now: float) -> None: ...


class EngineWorld:
    def __init__(self, policy_name: str) -> None:
        cluster = get_cluster("small")
        self.policy = build_policy(policy_name)
        self.cost: CostView = cluster.cost_model()
        self.engine_replicas: list[Replica] = []
        self.replicas: Sequence[ReplicaView] = self.engine_replicas
        ctx = PolicyContext(self.engine_replicas, self.cost, BLOCK, random.Random(0))
        for i in range(2):
            self.engine_replicas.append(Replica(
                i, cluster.engine, cluster.cost_model(), self.policy, block_tokens=BLOCK,
                capacity_blocks=cluster.kv_capacity_blocks(BLOCK),
                host_capacity_blocks=cluster.host_capacity_blocks(BLOCK),
                eviction=self.policy.eviction_order(i),
            ))
        self.policy.bind(ctx)
        self._seq = 0

    def submit(self, info: CallInfo, replica: int, now: float) -> CallView:
        self._seq += 1
        request = Request(info.workflow, info.call_id, info.runs, info.prompt_tokens, 16,
                          BLOCK, self._seq, info)
        engine = self.engine_replicas[replica]
        engine.enqueue(request, now)
        engine.plan(now)  # the engine orders its queues by the policy's keys
        return request

    def finish(self, call: CallView, replica: int, decision: Retention, now: float) -> None:
        """The engine finishes calls itself when it steps; the call stays in its batch."""


class GatewayWorld:
    def __init__(self, policy_name: str) -> None:
        from saga.gateway.app import Gateway

        config = GatewayConfig.model_validate({
            "policy": policy_name, "cluster": "small", "block_tokens": BLOCK,
            "backends": [
                {"url": "http://127.0.0.1:1", "kind": "emulator", "max_concurrency": 2},
                {"url": "http://127.0.0.1:2", "kind": "llamacpp", "max_concurrency": 2},
            ],
        })
        self.gateway = Gateway(config)  # binds the policy to its views
        self.policy = self.gateway.policy
        self.replicas: Sequence[ReplicaView] = self.gateway.views
        self._seq = 0

    def submit(self, info: CallInfo, replica: int, now: float) -> CallView:
        self._seq += 1
        call = GatewayCall(info, 16, BLOCK, self._seq, now)
        view = self.gateway.views[replica]
        view.kv.add(info.runs)
        if not view.try_start(call, now):
            view.enqueue(call, 1.0)
        return call

    def finish(self, call: CallView, replica: int, decision: Retention, now: float) -> None:
        view = self.gateway.views[replica]
        assert isinstance(call, GatewayCall)
        if call in view.running:
            view.finish(call, now, lambda waiting: True)
        else:
            view.withdraw(call)
        view.note_retention(call.workflow, decision, now)


class VLLMWorld:
    """The vLLM adapter as ``SagaScheduler`` builds it, with the policy asked for, over a
    fake engine: two requests run at a time (each holding its blocks), the rest wait."""

    def __init__(self, policy_name: str) -> None:
        self.engine = FakeEngine()
        self.saga = SagaInVLLM(
            VLLMSchedulerConfig(), self.engine, lambda blocks: None, block_size=BLOCK,
            capacity_blocks=self.engine.capacity, max_num_batched_tokens=8192,
            policy=build_policy(policy_name),
        )
        self.policy = self.saga.policy
        self.replicas: Sequence[ReplicaView] = [self.saga.view]
        self._seq = 0

    def submit(self, info: CallInfo, replica: int, now: float) -> CallView:
        self._seq += 1
        request = FakeRequest(f"r{self._seq}", info.prompt_tokens, arrival_time=now)
        call = VLLMCall(request, info, self._seq, now, BLOCK)
        self.saga.calls[request.request_id] = call
        engine = self.engine
        if len(engine.running) < 2:
            request.num_computed_tokens = request.num_prompt_tokens
            request.num_output_tokens = 1
            engine.free -= call.locked_blocks
            engine.running.append(request)
            self.saga.scheduled([request.request_id], now)
        else:
            engine.waiting.append(request)
        return call

    def finish(self, call: CallView, replica: int, decision: Retention, now: float) -> None:
        assert isinstance(call, VLLMCall)
        engine = self.engine
        if call.request in engine.running:
            engine.running.remove(call.request)
            if decision.kind == "pin" and decision.ttl > 0:
                self.saga.pins.pin(call.workflow, [0] * call.locked_blocks, now, decision.ttl)
            else:
                engine.free += call.locked_blocks
        else:
            engine.waiting.remove(call.request)
        self.saga.calls.pop(call.request.request_id, None)


WORLDS: dict[str, Callable[[str], World]] = {
    "engine-model": EngineWorld,
    "gateway": GatewayWorld,
    "vllm": VLLMWorld,
}
