"""Policies for the gateway tests, loaded by the gateway through its ``plugins`` option."""

from __future__ import annotations

from saga.sched.decisions import ADMIT, Admission, Retention
from saga.sched.policy import CallInfo, WorkflowInfo
from saga.sched.registry import register
from saga.sched.view import CallView, ReplicaView
from saga.sched.vllm import VLLMLeastLoaded


class AdmissionTestPolicy(VLLMLeastLoaded):
    """Agent ``blocked``: always deferred ("cluster full"). Other workflows are
    deferred once ("warming up") and then admitted. Finished calls are pinned 30 s."""

    name = "test-admission"

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def admit(self, workflow: WorkflowInfo, now: float) -> Admission:
        if workflow.agent == "blocked":
            return Admission("defer", "cluster full", 0.05)
        if workflow.workflow not in self.seen:
            self.seen.add(workflow.workflow)
            return Admission("defer", "warming up", 0.05)
        return ADMIT

    def retention(self, replica: ReplicaView, request: CallView, now: float) -> Retention:
        return Retention("pin", 30.0)


register(AdmissionTestPolicy.name, AdmissionTestPolicy)


class StealingTestPolicy(VLLMLeastLoaded):
    """Records every call it observes; places call k of a workflow on replica k % 2 (a
    policy that moves workflows, as saga's work stealing does)."""

    name = "test-stealing"

    def __init__(self) -> None:
        super().__init__()
        self.observed: list[str] = []

    def on_call_ready(self, call: CallInfo, now: float) -> None:
        self.observed.append(f"{call.workflow}/{call.index}")

    def place(self, call: CallInfo, now: float) -> int:
        return call.index % 2


register(StealingTestPolicy.name, StealingTestPolicy)


class FirstUpTestPolicy(VLLMLeastLoaded):
    """Places every call on the first replica that is up (a policy that would send a
    retry straight back to a failing replica if the gateway did not exclude it)."""

    name = "test-first-up"

    def place(self, call: CallInfo, now: float) -> int:
        return next(r.index for r in self.ctx.replicas if r.up)


register(FirstUpTestPolicy.name, FirstUpTestPolicy)


class OffloadTestPolicy(VLLMLeastLoaded):
    """Offloads every finished call's KV (agent ``dropper``: drops it from its second
    call on), so that slot files are saved on llama.cpp backends."""

    name = "test-offload"

    def retention(self, replica: ReplicaView, request: CallView, now: float) -> Retention:
        info = request.info
        if info is not None and info.agent == "dropper" and info.index >= 1:
            return Retention("drop")
        return Retention("offload")


register(OffloadTestPolicy.name, OffloadTestPolicy)
