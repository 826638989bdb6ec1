"""A policy seeing the gateway's prompt estimates (saga.sched.estimated): its gateway-side
hooks get the estimate, everything else is unchanged."""

from __future__ import annotations

from types import SimpleNamespace
from typing import cast

from saga.sched.decisions import Retention
from saga.sched.estimated import PromptEstimates, with_prompt_estimates
from saga.sched.policy import CallInfo, Policy, Router
from saga.sched.view import CallView, ReplicaView


class _Replica1(Router):
    def place(self, call: CallInfo, now: float) -> int:
        return 1


class _Recorder(Policy):
    name = "recorder"
    static_order = False

    def __init__(self) -> None:
        super().__init__(_Replica1())
        self.seen: list[tuple[str, int]] = []

    def on_call_ready(self, call: CallInfo, now: float) -> None:
        self.seen.append(("ready", call.prompt_tokens))

    def place(self, call: CallInfo, now: float) -> int:
        self.seen.append(("place", call.prompt_tokens))
        return super().place(call, now)

    def on_call_finished(self, call: CallInfo, replica: int, now: float) -> None:
        self.seen.append(("finished", call.prompt_tokens))

    def queue_key(self, replica: ReplicaView, request: CallView, now: float) -> tuple[float, ...]:
        return (-3.0,)

    def retention(self, replica: ReplicaView, request: CallView, now: float) -> Retention:
        return Retention("pin", ttl=2.0)


def _call(workflow: str, call_id: str, tokens: int) -> CallInfo:
    return CallInfo(workflow, "t", "coder", call_id, 0, None, tokens, (), 0.0, 0.0, None, False)


def test_gateway_hooks_see_the_estimate_and_the_rest_is_the_wrapped_policys() -> None:
    inner = _Recorder()
    policy = with_prompt_estimates(inner, {("default/s000", "c0"): 1359})
    assert isinstance(policy, PromptEstimates)
    assert policy.name == "recorder" and type(policy).static_order is False
    call = _call("default/s000", "c0", 2196)  # the engine's count
    policy.on_call_ready(call, 0.0)
    assert policy.place(call, 0.0) == 1
    policy.on_call_finished(call, 1, 2.0)
    other = _call("default/s001", "c0", 500)  # no estimate known: unchanged
    policy.on_call_ready(other, 0.0)
    assert inner.seen == [("ready", 1359), ("place", 1359), ("finished", 1359), ("ready", 500)]
    replica = cast(ReplicaView, SimpleNamespace())
    request = cast(CallView, SimpleNamespace(prompt_tokens=2196))
    assert policy.queue_key(replica, request, 0.0) == (-3.0,)
    assert policy.retention(replica, request, 0.0) == Retention("pin", ttl=2.0)


def test_learned_scale_applies_the_ratio_of_the_calls_finished_before_a_call_was_ready() -> None:
    inner = _Recorder()
    estimates = {("default/s000", "c0"): 1000, ("default/s001", "c0"): 1000,
                 ("default/s000", "c1"): 2000}
    policy = with_prompt_estimates(inner, estimates, learn_scale=True)
    first, second = _call("default/s000", "c0", 1600), _call("default/s001", "c0", 1500)
    policy.on_call_ready(first, 0.0)
    policy.on_call_ready(second, 0.1)  # ready before any answer: the plain estimate
    policy.on_call_finished(first, 1, 1.0)  # its answer: 1600 engine tokens for 1000
    assert policy.place(second, 1.0) == 1  # its count was fixed when it was ready
    policy.on_call_finished(second, 1, 2.0)  # 1500 for 1000: 3100 for 2000 so far
    nxt = _call("default/s000", "c1", 3000)
    policy.on_call_ready(nxt, 2.0)
    assert inner.seen == [("ready", 1000), ("ready", 1000), ("finished", 1000),
                          ("place", 1000), ("finished", 1000), ("ready", 3100)]



def test_a_prior_scales_the_calls_ready_before_any_answer_as_the_gateway_does() -> None:
    inner = _Recorder()
    estimates = {("default/s000", "c0"): 1000, ("default/s001", "c0"): 1000,
                 ("default/s000", "c1"): 2000}
    policy = with_prompt_estimates(inner, estimates, learn_scale=True, prior=1.6)
    first, second = _call("default/s000", "c0", 1600), _call("default/s001", "c0", 1500)
    policy.on_call_ready(first, 0.0)
    policy.on_call_ready(second, 0.1)  # before any answer: the prior's 1.6
    policy.on_call_finished(first, 1, 1.0)
    policy.on_call_finished(second, 1, 2.0)  # the answers' 3100 for 2000 replace it
    policy.on_call_ready(_call("default/s000", "c1", 3000), 2.0)
    assert inner.seen == [("ready", 1600), ("ready", 1600), ("finished", 1600),
                          ("finished", 1600), ("ready", 3100)]
    plain = _Recorder()  # the prior is the learned scale's: without learning, the estimate
    with_prompt_estimates(plain, estimates, prior=1.6).on_call_ready(first, 0.0)
    assert plain.seen == [("ready", 1000)]

class _RunsRecorder(_Recorder):
    """Records the blocks each gateway-side hook is given."""

    def __init__(self) -> None:
        super().__init__()
        self.runs: list[tuple[str, tuple[tuple[str, int, int], ...]]] = []

    def on_call_ready(self, call: CallInfo, now: float) -> None:
        self.runs.append(("ready", call.runs))

    def place(self, call: CallInfo, now: float) -> int:
        self.runs.append(("place", call.runs))
        return 1

    def on_call_finished(self, call: CallInfo, replica: int, now: float) -> None:
        self.runs.append(("finished", call.runs))


def test_gateway_hooks_see_the_gateways_blocks_when_given_and_the_engines_otherwise() -> None:
    engine_blocks = (("w:s000", 0, 17),)  # 17 blocks of the engine's tokens
    gateway_blocks = (("h:aa", 0, 1), ("h:bb", 0, 1))  # its text in 512-character blocks
    call = CallInfo("default/s000", "t", "coder", "c0", 0, None, 2196, engine_blocks, 0.0,
                    0.0, None, False)
    inner = _RunsRecorder()
    policy = with_prompt_estimates(inner, {("default/s000", "c0"): 1359},
                                   runs={("default/s000", "c0"): gateway_blocks})
    policy.on_call_ready(call, 0.0)
    policy.place(call, 0.0)
    policy.on_call_finished(call, 1, 1.0)
    assert inner.runs == [("ready", gateway_blocks), ("place", gateway_blocks),
                          ("finished", gateway_blocks)]
    # blocks given without a token estimate for the call: the blocks alone change
    inner = _RunsRecorder()
    policy = with_prompt_estimates(inner, {}, runs={("default/s000", "c0"): gateway_blocks})
    policy.place(call, 0.0)
    assert inner.runs == [("place", gateway_blocks)]
    # no blocks given (saga's deployment: its view reads the engine's KV events)
    inner = _RunsRecorder()
    policy = with_prompt_estimates(inner, {("default/s000", "c0"): 1359})
    policy.place(call, 0.0)
    assert inner.runs == [("place", engine_blocks)]
