"""saga's queue key computes the fit-first check inline, skipping the prefix tree's walk
when the whole prompt fits (docs/engine.md, "Eleventh pass"): at every key the engine
asks in whole simulations under memory pressure, its flag equals the check as defined
(``SagaPolicy._blocked``), and every branch of the shortcut is taken."""

from __future__ import annotations

import random
from collections import Counter
from unittest.mock import patch

import pytest

from saga.engine.cluster import get_cluster
from saga.sched.policy import CallView, ReplicaView
from saga.sched.saga.policy import SagaPolicy
from saga.sim.run import run_policy
from saga.workloads import build_workload


@pytest.mark.parametrize("case", range(4))
def test_the_inline_fit_first_flag_equals_the_check_at_every_key(case: int) -> None:
    rng = random.Random(2100 + case)
    base = get_cluster("small")
    engine = base.engine.model_copy(update={
        "kv_capacity_blocks": rng.choice([256, 512, 1024]),
        "max_num_seqs": rng.choice([8, 16, 64]),
        "max_num_batched_tokens": rng.choice([1024, 2048, 4096]),
    })
    cluster = base.model_copy(update={"replicas": rng.choice([1, 2]), "engine": engine})
    workflows = build_workload("agents", seed=rng.randrange(100), params={}).workflows
    seen: Counter[str] = Counter()
    inline = SagaPolicy.queue_key

    def checked(
        self: SagaPolicy, replica: ReplicaView, request: CallView, now: float
    ) -> tuple[float, ...]:
        key = inline(self, replica, request, now)
        wait = self.config.fit_first_wait
        assert wait is not None and request.info is not None
        waited = now - request.enqueued_at
        assert key[1] == self._blocked(replica, request, waited, wait)
        if waited < wait:
            kv = replica.kv
            free = kv.capacity - kv.locked_blocks - kv.anonymous_blocks
            blocks = -(-request.prompt_tokens // replica.block_tokens)
            seen["fits whole" if blocks <= free else "fits by its prefix"
                 if key[1] == 0 else "blocked"] += 1
        return key

    with patch.object(SagaPolicy, "queue_key", checked):
        run_policy(cluster, "saga", workflows, seed=rng.randrange(100))
    # the shortcut, the walk that finds the prompt fits, and a blocked prompt all happen
    assert seen["fits whole"] > 0 and seen["fits by its prefix"] > 0 and seen["blocked"] > 0
