"""The decode guard: a replica's step computes fewer prompt tokens while a call decodes."""

from __future__ import annotations

from dataclasses import dataclass

from saga.engine.config import EngineConfig
from saga.engine.costmodel import cost_model_for
from saga.engine.replica import Replica, Request
from saga.sched.saga.chunking import decode_guard, decoding, guard_tokens
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
