"""The queue token sums a replica keeps for placement equal a count from scratch after
every engine verb, on random traffic that preempts, pins, offloads, swaps and fails."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from saga.engine.config import EngineConfig
from saga.engine.costmodel import cost_model_for
from saga.engine.replica import Replica, Request
from saga.sched.decisions import Retention
from saga.sched.vllm import VLLMRoundRobin

BT = 16

RETENTIONS = [
    Retention("release"), Retention("drop"), Retention("pin", ttl=5.0), Retention("offload"),
]


class Hooks(VLLMRoundRobin):
    """FCFS with a chosen retention, pins given up under pressure and, when ``fair``,
    fair preemption whenever asked (so that full replicas preempt too)."""

    def __init__(self, retention: Retention, fair: bool) -> None:
        super().__init__()
        self.decision = retention
        self.fair = fair

    def retention(self, replica: Replica, request: Request, now: float) -> Retention:
        return self.decision

    def unpin_order(self, replica: Replica, now: float) -> list[str]:
        return list(replica.pins)  # under pressure every pin may go, oldest first

    def preempt_for(self, replica: Replica, waiting: Request, running: Request, now: float) -> bool:
        return self.fair and running.preemptions < 2


ENQUEUE = st.tuples(st.just("enqueue"), st.integers(0, 5), st.integers(1, 12),
                   st.integers(1, 80))
STEP = st.tuples(st.just("step"), st.integers(0, 150), st.just(0), st.just(0))
# one verb with its arguments, (name, a, b, c): mostly calls arriving and steps
VERBS = st.one_of(
    ENQUEUE, ENQUEUE, STEP, STEP, STEP, STEP,
    st.tuples(st.just("plan"), st.just(0), st.just(0), st.just(0)),
    st.tuples(st.just("interrupt"), st.integers(0, 100), st.just(0), st.just(0)),
    st.tuples(st.just("complete"), st.just(0), st.just(0), st.just(0)),
    st.tuples(st.just("withdraw"), st.integers(0, 50), st.just(0), st.just(0)),
    st.tuples(st.just("unpin"), st.integers(0, 5), st.just(0), st.just(0)),
    st.tuples(st.just("fail"), st.just(0), st.just(0), st.just(0)),
)


class Driver:
    """Applies verbs to one replica the way a runtime may, checking after each."""

    def __init__(self, replica: Replica) -> None:
        self.replica = replica
        self.now = 0.0
        self.seq = 0
        self.capacity = replica.kv.capacity
        self.prompts: dict[str, int] = {}  # workflow -> blocks its next call starts with

    def apply(self, verb: str, a: int, b: int, c: int) -> None:
        replica = self.replica
        if verb == "enqueue":
            self.enqueue(f"w{a}", b, c)
        elif verb == "step":  # plan, perhaps cut the step part way (a < 100), complete
            self.apply("plan", 0, 0, 0)
            if a < 100:
                self.apply("interrupt", a, 0, 0)
            self.apply("complete", 0, 0, 0)
        elif verb == "plan" and not replica.busy:
            replica.plan(self.now)
        elif verb == "interrupt" and replica.busy:
            cut = replica.step_start + (replica.step_end - replica.step_start) * a / 100
            self.now = max(self.now, cut)
            replica.interrupt(self.now)
        elif verb == "complete" and replica.busy:
            self.now = max(self.now, replica.step_end)
            replica.complete(self.now)
        elif verb == "withdraw" and replica.waiting:
            replica.withdraw(replica.waiting[a % len(replica.waiting)])
        elif verb == "unpin":
            replica.unpin(f"w{a}", self.now)
        elif verb == "fail":
            held = replica.fail(self.now)
            replica.check_queue_tokens()
            replica.up = True
            for request in held:  # the runtime places them again: here, back on this one
                replica.enqueue(request, self.now)
                replica.check_queue_tokens()
        replica.check_queue_tokens()

    def enqueue(self, workflow: str, grow: int, output: int) -> None:
        """A workflow's next call: its last prompt and some more, behind a shared prefix
        (back to a short prompt once its calls would outgrow the replica)."""
        self.seq += 1
        blocks = self.prompts.get(workflow, 0) + grow
        if blocks + 2 + output // BT + 2 > self.capacity:
            blocks = grow
        self.prompts[workflow] = blocks
        runs = (("s:sys", 0, 2), ("w:" + workflow, 0, blocks))
        prompt = (blocks + 2) * BT + self.seq % BT
        self.replica.enqueue(Request(workflow, f"c{self.seq}", runs, prompt, output, BT,
                                     self.seq), self.now)

    def drain(self) -> None:
        """Step until idle, cutting every other step or run half way, checking after
        every verb; then the sums are all 0."""
        replica = self.replica
        idle = 0
        for k in range(10_000):
            # Twice: a call that preempted itself for want of blocks leaves the
            # replica idle for this plan and runs at the next.
            if not replica.busy:
                planned = replica.plan(self.now)
                replica.check_queue_tokens()
                if planned is None:
                    idle += 1
                    if idle == 2:
                        break
                    continue
            idle = 0
            if k % 2:
                self.apply("interrupt", 50, 0, 0)
            self.apply("complete", 0, 0, 0)
        assert not replica.running and not replica.waiting
        assert (replica.context_tokens, replica.demand_tokens, replica.backlog_tokens) == (0, 0, 0)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    capacity=st.integers(24, 80),
    budget=st.sampled_from([16, 64, 256]),
    seqs=st.integers(1, 6),
    host=st.sampled_from([0, 400]),
    swap=st.booleans(),
    decode_runs=st.booleans(),
    retention=st.sampled_from(RETENTIONS),
    fair=st.booleans(),
    verbs=st.lists(VERBS, min_size=10, max_size=150),
)
def test_queue_sums_equal_a_recount_after_every_verb(
    capacity: int, budget: int, seqs: int, host: int, swap: bool, decode_runs: bool,
    retention: Retention, fair: bool, verbs: list[tuple[str, int, int, int]],
) -> None:
    config = EngineConfig(max_num_batched_tokens=budget, max_num_seqs=seqs,
                          preemption="swap" if swap else "recompute")
    replica = Replica(
        0, config, cost_model_for("llama-3.1-8b", "h100-sxm", 1), Hooks(retention, fair),
        block_tokens=BT, capacity_blocks=capacity, host_capacity_blocks=host,
    )
    replica.decode_runs = decode_runs
    driver = Driver(replica)
    for verb in verbs:
        driver.apply(*verb)
    driver.drain()
