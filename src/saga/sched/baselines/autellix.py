"""``autellix``: program-level least attained service (PLAS) and a locality-aware balancer.

Source (docs/baselines.md section 3): Luo et al., "Autellix: An Efficient Serving
Engine for LLM Agents as General Programs", arXiv 2502.13965. Only the abstract
was readable; the details are a reconstruction from third-party reimplementations
(``Crystalclear9/Autellix``, ``kungfu-team/autellix``) and summaries, so every
number below is a tunable parameter, not a fact from the paper.

PLAS. Each program (workflow) has an attained service ``T``: the sum of the
service of its completed calls (the paper's "sum rule"). We measure a call's
service as *seconds on the engine*: from its first admission into the running
batch to its last token (the paper counts engine execution time). A call's
priority level is the queue whose range holds ``T`` plus the service the call
has attained so far, among ``levels`` queues with boundaries
``first_quantum * 2^k`` seconds (0.02, 0.04, ... 0.64 s by default): a running
call is demoted as it exhausts its queue's quantum. Within a level, first come
first served by call arrival. Starvation: a call whose program's waiting time
``W`` (summed over its calls since the last promotion, plus the current wait)
reaches ``starvation_ratio * max(T, first_quantum)`` is promoted to the top
queue, and its service then counts from zero, as a fresh program's would; the
program's ``W`` is reset when the promoted call finishes.

Load balancer ("Algorithm 2"): prompts of at most ``short_prompt_tokens`` go to
the replica with the fewest calls queued or running; a longer prompt goes to the
program's replica when it has one, else to the least-loaded replica, which then
becomes the program's replica.

Not modelled, stated: ATLAS (critical-path service for DAG programs) needs each
call's parents, which :class:`~saga.sched.policy.CallInfo` does not carry, so DAG
programs use the sum rule too; a waiting call of a higher queue does not preempt
a running call of a lower one (the engine preempts only when memory runs out,
taking the running call with the largest key); preemption is by recompute.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from saga.sched.decisions import RELEASE, Retention
from saga.sched.policy import CallInfo, Policy, Router, WorkflowInfo
from saga.sched.view import CallView, ReplicaView


class AutellixConfig(BaseModel):
    """PLAS queues and the balancer's threshold (reconstructions, see the module doc)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    levels: int = Field(7, ge=1, description="Number of priority queues K.")
    first_quantum: float = Field(
        0.02, gt=0.0,
        description="Upper service boundary of the top queue in engine seconds; each "
        "further boundary doubles it (Crystalclear9's 0.02, 0.04, ... 0.64 s).",
    )
    starvation_ratio: float = Field(
        8.0, gt=0.0, description="Promote to the top queue when wait / service >= this (β)."
    )
    short_prompt_tokens: int = Field(
        2048, ge=0,
        description="Prompts up to this many tokens go to the least-loaded replica; longer "
        "ones stay on their program's replica.",
    )


class ProgramAccount:
    """A program's process-table entry: attained service and waiting time, in seconds."""

    __slots__ = ("service", "wait")

    def __init__(self) -> None:
        self.service = 0.0
        self.wait = 0.0


class LocalityAwareRouter(Router):
    """Short prompts to the least-loaded replica, long ones to the program's replica."""

    name = "autellix-locality"

    def __init__(self, short_prompt_tokens: int) -> None:
        self.short_prompt_tokens = short_prompt_tokens
        self.home: dict[str, int] = {}

    def place(self, call: CallInfo, now: float) -> int:
        ups = self.up_replicas()
        least_loaded = min(ups, key=lambda i: (self.ctx.replicas[i].load(), i))
        if call.prompt_tokens <= self.short_prompt_tokens:
            return least_loaded
        home = self.home.get(call.workflow)
        if home is not None and self.ctx.replicas[home].up:
            return home
        self.home[call.workflow] = least_loaded
        return least_loaded

    def forget(self, workflow: str) -> None:
        self.home.pop(workflow, None)


class Autellix(Policy):
    """PLAS in multi-level queues with starvation promotion, locality-aware balancing."""

    name = "autellix"

    def __init__(self, config: AutellixConfig | None = None) -> None:
        self.config = config or AutellixConfig()
        self.balancer = LocalityAwareRouter(self.config.short_prompt_tokens)
        super().__init__(self.balancer)
        self.programs: dict[str, ProgramAccount] = {}

    # ---- decisions -------------------------------------------------------------------
    def queue_key(self, replica: ReplicaView, request: CallView, now: float) -> tuple[float, ...]:
        return (float(self.level(request, now)), request.enqueued_at, request.seq)

    def level(self, request: CallView, now: float) -> int:
        """The request's queue: 0 is served first."""
        account = self.programs.get(request.workflow) or ProgramAccount()
        running_for = now - request.scheduled_at if request.scheduled_at >= 0 else 0.0
        if self.is_starved(account, request, now):
            return self.level_of(running_for)
        return self.level_of(account.service + running_for)

    def level_of(self, service: float) -> int:
        """Queue index whose service range holds ``service`` (boundaries double)."""
        level = 0
        boundary = self.config.first_quantum
        while level < self.config.levels - 1 and service >= boundary:
            level += 1
            boundary *= 2.0
        return level

    def is_starved(self, account: ProgramAccount, request: CallView, now: float) -> bool:
        # Depends only on when the call was admitted, so it is stable once it runs.
        waited_until = request.scheduled_at if request.scheduled_at >= 0 else now
        wait = account.wait + max(0.0, waited_until - request.enqueued_at)
        floor = max(account.service, self.config.first_quantum)
        return wait >= self.config.starvation_ratio * floor

    def retention(self, replica: ReplicaView, request: CallView, now: float) -> Retention:
        # The finished request is visible only here: charge its service and wait.
        account = self.programs.setdefault(request.workflow, ProgramAccount())
        promoted = self.is_starved(account, request, now)
        account.service += max(0.0, now - request.scheduled_at)
        if promoted:
            account.wait = 0.0
        else:
            account.wait += max(0.0, request.scheduled_at - request.enqueued_at)
        return RELEASE

    # ---- observations ----------------------------------------------------------------
    def on_workflow_finished(self, workflow: WorkflowInfo, now: float) -> None:
        self.programs.pop(workflow.workflow, None)
        self.balancer.forget(workflow.workflow)
