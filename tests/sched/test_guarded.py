"""``NAME+guard``: a baseline with SAGA's decode guard, every other decision its own."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from tests.sched.test_saga_chunking import DECODING, PREFILLING, Call

from saga.errors import UserError
from saga.sched.gated import GatedPolicy
from saga.sched.guarded import GuardedPolicy
from saga.sched.registry import build_policy
from saga.sched.saga.chunking import GuardRule
from saga.sched.saga.config import SagaConfig
from saga.sched.saga.policy import SagaPolicy


@dataclass
class Replica:
    max_num_batched_tokens: int
    running: list[Call] = field(default_factory=list)
    waiting: list[Call] = field(default_factory=list)




@pytest.mark.parametrize("name", ["sglang+guard", "throughput+gate+guard", "vllm-affinity+guard"])
def test_a_guarded_baseline_answers_the_engine_as_saga_does(name: str) -> None:
    policy = build_policy(name)
    saga = SagaPolicy()
    assert isinstance(policy, GuardedPolicy) and policy.name == name
    for budget in (2048, 8192):
        for running in ([], [DECODING, PREFILLING], [DECODING] * 2 + [PREFILLING],
                        [DECODING] * 3, [PREFILLING] * 3, [DECODING] * 3 + [PREFILLING]):
            replica = Replica(budget, running)
            assert policy.prefill_limit(replica, 0.0) == saga.prefill_limit(  # type: ignore[arg-type]
                replica, 0.0)  # type: ignore[arg-type]
    assert policy.prefill_limit(Replica(2048, [DECODING] * 3), 0.0) == 112  # 7/128 of 2,048  # type: ignore[arg-type]
    # the wrapped policy answers None: without the suffix there is no guard
    assert build_policy(name.removesuffix("+guard")).prefill_limit(
        Replica(2048, [DECODING] * 3), 0.0) is None  # type: ignore[arg-type]


def test_the_guard_wraps_the_named_policy_and_keeps_its_class_flags() -> None:
    policy = build_policy("throughput+gate+guard")
    assert isinstance(policy, GuardedPolicy)
    assert isinstance(policy.inner, GatedPolicy) and policy.inner.name == "throughput+gate"
    sglang = build_policy("sglang")
    guarded = build_policy("sglang+guard")
    assert (guarded.static_order, guarded.offline) == (sglang.static_order, sglang.offline)


@pytest.mark.parametrize("name", ["saga+guard", "sglang+guard+guard", "nonesuch+guard"])
def test_saga_itself_a_double_guard_or_an_unknown_base_is_refused(name: str) -> None:
    with pytest.raises(UserError, match="unknown policy"):
        build_policy(name)


def test_a_guarded_baseline_takes_every_guard_field_of_a_saga_configuration() -> None:
    config = SagaConfig(decode_guard_backlog=2, decode_guard_backlog_share=0.03125,
                        decode_guard_per_decode=True)
    policy = build_policy("kvflow+guard")
    assert isinstance(policy, GuardedPolicy) and policy.guard == GuardRule.of(SagaConfig())
    policy.guard = GuardRule.of(config)
    saga = SagaPolicy(config)
    for waiting in (0, 1, 2, 5):
        for decodes in (2, 3, 4, 6):
            replica = Replica(2048, [DECODING] * decodes + [PREFILLING], [PREFILLING] * waiting)
            assert policy.prefill_limit(replica, 0.0) == saga.prefill_limit(  # type: ignore[arg-type]
                replica, 0.0)  # type: ignore[arg-type]
    assert policy.prefill_limit(Replica(2048, [DECODING] * 4, [PREFILLING] * 2),  # type: ignore[arg-type]
                                0.0) == 32  # 64 x 2 / 4 (the backlog's 1/32; 2 decodes over 4)
