"""The decode guard: a replica's step computes fewer prompt tokens while a call decodes."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from pydantic import ValidationError

from saga.engine.config import EngineConfig
from saga.engine.costmodel import cost_model_for
from saga.engine.replica import Replica, Request
from saga.sched.saga.chunking import (
    GuardRule,
    decode_guard,
    decoding,
    guard_tokens,
    step_prefill_limit,
)
from saga.sched.saga.config import SagaConfig
from saga.sched.saga.policy import SagaPolicy


@dataclass
class Call:
    prompt_tokens: int
    generated: int
    computed: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.generated


@dataclass
class Queues:
    """What the guard reads of a replica: its step budget and its two queues."""

    max_num_batched_tokens: int
    running: list[Call]
    waiting: list[Call] = field(default_factory=list)


PREFILLING = Call(1000, 0, 512)
DECODING = Call(1000, 3, 1002)
RECOMPUTING = Call(1000, 3, 200)  # preempted after 3 tokens, rebuilding its KV
LAST_PROMPT_TOKEN = Call(1000, 0, 999)  # no first token yet


def test_only_a_call_with_its_sequence_computed_and_a_token_out_decodes() -> None:
    assert [decoding(c) for c in (PREFILLING, DECODING, RECOMPUTING, LAST_PROMPT_TOKEN)] == [
        False, True, False, False]


def test_the_guard_limits_prompt_tokens_only_while_enough_calls_decode() -> None:
    assert decode_guard([PREFILLING, DECODING], 512, 1) == 512
    assert decode_guard([PREFILLING, DECODING], 512, 2) is None
    assert decode_guard([DECODING, RECOMPUTING, DECODING], 512, 2) == 512
    assert decode_guard([PREFILLING, RECOMPUTING, LAST_PROMPT_TOKEN], 512, 1) is None
    assert decode_guard([], 512, 1) is None
    assert decode_guard([PREFILLING, DECODING], None, 1) is None


def test_the_guard_is_a_share_of_the_engines_step_budget() -> None:
    assert guard_tokens(2048, 0.0625) == 128
    assert guard_tokens(8192, 0.0625) == 512
    assert guard_tokens(100, 0.0625) == 16  # at least a block
    assert guard_tokens(2048, None) is None


def test_saga_answers_the_engine_with_its_configured_guard() -> None:
    config = EngineConfig(max_num_batched_tokens=2048, max_num_seqs=8)
    cost = cost_model_for("llama-3.1-8b", "h100-sxm", 1)
    policy = SagaPolicy(SagaConfig(decode_guard_share=0.125, decode_guard_decodes=1))
    replica = Replica(0, config, cost, policy, block_tokens=64, capacity_blocks=256)
    short = Request("a", "c0", (("w:a", 0, 1),), 64, 20, 64, 1)
    replica.enqueue(short, 0.0)
    replica.plan(0.0)
    assert policy.prefill_limit(replica, 0.0) is None  # a prefills: nothing decodes yet
    replica.complete(replica.step_end)
    long = Request("b", "c0", (("w:b", 0, 20),), 1280, 3, 64, 2)
    replica.enqueue(long, replica.step_end)
    assert policy.prefill_limit(replica, replica.step_end) == 256  # 1/8 of 2,048
    replica.plan(replica.step_end)
    assert [(r.workflow, q) for r, q in replica._batch] == [("a", 1), ("b", 256)]
    # by default the guard waits for 3 decoding calls: here one decodes
    assert SagaPolicy().prefill_limit(replica, replica.step_end) is None


def limit(rule: GuardRule, running: list[Call], waiting: int = 0, budget: int = 2048) -> int | None:
    return step_prefill_limit(Queues(budget, running, [PREFILLING] * waiting),  # type: ignore[arg-type]
                              rule)


def test_the_rule_of_a_config_is_its_guard_fields() -> None:
    assert GuardRule.of(SagaConfig()) == GuardRule(0.0546875, 2, None, None, False)
    config = SagaConfig(decode_guard_share=0.0625, decode_guard_decodes=2, decode_guard_backlog=4,
                        decode_guard_backlog_share=0.03125, decode_guard_per_decode=True)
    assert GuardRule.of(config) == GuardRule(0.0625, 2, 4, 0.03125, True)


def test_without_a_backlog_rule_the_queue_does_not_change_the_guard() -> None:
    rule = GuardRule(0.046875, 3)
    assert limit(rule, [DECODING] * 3 + [PREFILLING]) == 96
    assert limit(rule, [DECODING] * 3 + [PREFILLING], waiting=50) == 96
    assert limit(rule, [DECODING] * 2 + [PREFILLING], waiting=50) is None


def test_from_the_backlog_on_the_guard_takes_the_backlog_share() -> None:
    off = GuardRule(0.046875, 3, backlog=2)  # no guard while 2 or more calls wait
    assert [limit(off, [DECODING] * 3, waiting=n) for n in (0, 1, 2, 9)] == [96, 96, None, None]
    tighter = GuardRule(0.046875, 3, backlog=1, backlog_share=0.03125)
    assert [limit(tighter, [DECODING] * 3, waiting=n) for n in (0, 1)] == [96, 64]
    assert limit(tighter, [DECODING] * 2, waiting=1) is None  # still from 3 decoding calls
    only = GuardRule(None, 3, backlog=1, backlog_share=0.046875)  # a guard only with a backlog
    assert [limit(only, [DECODING] * 3, waiting=n) for n in (0, 1)] == [None, 96]


def test_per_decode_the_guard_shrinks_as_more_calls_decode() -> None:
    rule = GuardRule(0.046875, 3, per_decode=True)
    assert [limit(rule, [DECODING] * n + [PREFILLING]) for n in (2, 3, 4, 6, 7, 18, 30)] == [
        None, 96, 72, 48, 41, 16, 16]  # 96 x 3 / n tokens, at least a block
    assert limit(rule, [DECODING] * 3 + [RECOMPUTING] * 5) == 96  # recomputing is not decoding


@pytest.mark.parametrize("fields", [
    {"decode_guard_backlog": 0}, {"decode_guard_backlog_share": 0.0},
    {"decode_guard_backlog_share": 1.5}])
def test_the_backlog_fields_are_validated(fields: dict[str, float]) -> None:
    with pytest.raises(ValidationError):
        SagaConfig(**fields)  # type: ignore[arg-type]
