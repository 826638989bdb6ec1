"""saga's queue keys as the engine sorts by them (``SagaPolicy.queue_keys``: one function
per sort, the fair-share key and the fit-first check inline, the replica's free blocks
read once, the prefix tree's walk skipped when the whole prompt fits; docs/engine.md,
"Eleventh pass"): at every key of every sort in whole simulations under memory pressure
they equal the keys as defined (``FairShare.key`` and ``SagaPolicy._blocked``), and every
branch of the fit-first check is taken. A function kept past its sort goes stale."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from unittest.mock import patch

import pytest

from saga.core.workflow import Workflow
from saga.engine.cluster import ClusterSpec, get_cluster
from saga.sched.policy import CallView, ReplicaView
from saga.sched.saga.config import SagaConfig
from saga.sched.saga.policy import SagaPolicy
from saga.sim.run import run_policy
from saga.sim.simulator import Simulation
from saga.workloads import build_workload

KeyFunction = Callable[[CallView], tuple[float, ...]]


def defined_key(
    policy: SagaPolicy, replica: ReplicaView, request: CallView, now: float
) -> tuple[float, ...]:
    """saga's queue key from its definitions, call by call."""
    info, enqueued = request.info, request.enqueued_at
    assert info is not None and policy.config.afs
    flow = policy.flows.get(request.workflow)
    priority = flow.priority if flow is not None else 0.0
    tenant, remaining = policy.fair.key(info.tenant, priority, now - enqueued)
    wait = policy.config.fit_first_wait
    if wait is None:
        return (tenant, remaining, enqueued, request.seq)
    return (tenant, policy._blocked(replica, request, now - enqueued, wait), remaining,
            enqueued, request.seq)


def pressed(case: int) -> tuple[ClusterSpec, list[Workflow], int]:
    """A small cluster under memory pressure, a workload and a seed drawn from ``case``."""
    rng = random.Random(2100 + case)
    base = get_cluster("small")
    engine = base.engine.model_copy(update={
        "kv_capacity_blocks": rng.choice([256, 512, 1024]),
        "max_num_seqs": rng.choice([8, 16, 64]),
        "max_num_batched_tokens": rng.choice([1024, 2048, 4096]),
    })
    cluster = base.model_copy(update={"replicas": rng.choice([1, 2]), "engine": engine})
    workflows = build_workload("agents", seed=rng.randrange(100), params={}).workflows
    return cluster, workflows, rng.randrange(100)


@pytest.mark.parametrize("case", range(4))
def test_the_sort_keys_equal_the_defined_keys_at_every_sort(case: int) -> None:
    cluster, workflows, seed = pressed(case)
    seen: Counter[str] = Counter()
    made = SagaPolicy.queue_keys

    def checked(self: SagaPolicy, replica: ReplicaView, now: float) -> KeyFunction:
        keys = made(self, replica, now)

        def key(request: CallView) -> tuple[float, ...]:
            got = keys(request)
            assert got == defined_key(self, replica, request, now)
            if now - request.enqueued_at < 60.0:
                kv = replica.kv
                free = kv.capacity - kv.locked_blocks - kv.anonymous_blocks
                blocks = -(-request.prompt_tokens // replica.block_tokens)
                seen["fits whole" if blocks <= free else "fits by its prefix"
                     if got[1] == 0 else "blocked"] += 1
            return got

        return key

    with patch.object(SagaPolicy, "queue_keys", checked):
        run_policy(cluster, "saga", workflows, seed=seed)
    # the shortcut, the walk that finds the prompt fits, and a blocked prompt all happen
    assert seen["fits whole"] > 0 and seen["fits by its prefix"] > 0 and seen["blocked"] > 0


def test_the_sort_keys_without_fit_first_equal_the_defined_keys() -> None:
    cluster, workflows, seed = pressed(1)
    made = SagaPolicy.queue_keys
    asked = 0

    def checked(self: SagaPolicy, replica: ReplicaView, now: float) -> KeyFunction:
        keys = made(self, replica, now)

        def key(request: CallView) -> tuple[float, ...]:
            nonlocal asked
            got = keys(request)
            assert len(got) == 4 and got == defined_key(self, replica, request, now)
            asked += 1
            return got

        return key

    with patch.object(SagaPolicy, "queue_keys", checked):
        Simulation(cluster, SagaPolicy(SagaConfig(fit_first_wait=None)), workflows,
                   seed=seed).run()
    assert asked > 0


def test_a_key_function_kept_past_its_sort_goes_stale() -> None:
    """Why the engine asks for a function per sort: one made at an earlier sort of the
    same replica (the free blocks it read, the instant it ages by) gives other keys."""
    cluster, workflows, seed = pressed(0)
    made = SagaPolicy.queue_keys
    kept: dict[int, KeyFunction] = {}
    stale = 0

    def reused(self: SagaPolicy, replica: ReplicaView, now: float) -> KeyFunction:
        nonlocal stale
        fresh = made(self, replica, now)
        old = kept.setdefault(replica.index, fresh)
        kept[replica.index] = fresh

        def key(request: CallView) -> tuple[float, ...]:
            nonlocal stale
            got = fresh(request)
            stale += old(request) != got
            return got

        return key

    with patch.object(SagaPolicy, "queue_keys", reused):
        run_policy(cluster, "saga", workflows, seed=seed)
    assert stale > 0


def test_keys_of_a_subclass_or_set_on_the_instance_are_the_ones_sorted_by() -> None:
    class Inverted(SagaPolicy):
        def queue_key(self, replica: ReplicaView, request: CallView, now: float
                      ) -> tuple[float, ...]:
            return (-now,)

    subclass = Inverted(SagaConfig())
    assert subclass.queue_keys(None, 4.0)(None) == (-4.0,)  # type: ignore[arg-type]
    policy = SagaPolicy(SagaConfig())
    policy.queue_key = lambda replica, request, now: (now * 2,)  # type: ignore[method-assign]
    assert policy.queue_keys(None, 4.0)(None) == (8.0,)  # type: ignore[arg-type]
