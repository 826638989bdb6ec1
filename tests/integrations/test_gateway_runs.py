"""The simulated gateway names prompt blocks as the real one does (saga.integrations.replay
gateway_runs): from the text, in blocks of 4 x block_tokens characters, given to the
gateway-side hooks of the policies deployed over stock vLLM, not to saga's."""

from __future__ import annotations

from typing import Any

import pytest

from saga.core.workflow import Call, Prompt, Workflow
from saga.integrations.replay import (
    ReplayCall,
    ReplayWorkflow,
    gateway_estimates,
    gateway_runs,
    simulate_deployed,
)
from saga.sched.baselines import llmd
from saga.sched.saga.policy import SagaPolicy
from saga.wire.prefix import chat_text, text_runs

SALT = "[real sim memory]\n"


def _plans() -> list[ReplayWorkflow]:
    first = "x" * 1500
    return [ReplayWorkflow("s000", 0.0, (ReplayCall(first, 4, 0.0),
                                         ReplayCall(first + "y" * 700, 4, 0.1))),
            ReplayWorkflow("s001", 0.25, (ReplayCall("z" * 600, 4, 0.0),))]


def test_each_calls_blocks_are_the_gateways_names_for_its_chat_text() -> None:
    plans = _plans()
    named = gateway_runs(plans, salt=SALT, block_tokens=128)
    assert set(named) == set(gateway_estimates(plans, salt=SALT))
    for wf in plans:
        for i, call in enumerate(wf.calls):
            text = chat_text([{"role": "user", "content": SALT + call.text}])
            assert named[(f"default/{wf.id}", f"c{i}")] == text_runs(text, 128)
    # 512 characters a block, full blocks only: 1,500 characters of text and the chat
    # framing make 2 blocks, 2,200 make 4, and the second call's first 2 are the first's
    assert [len(named[("default/s000", c)]) for c in ("c0", "c1")] == [2, 4]
    assert named[("default/s000", "c1")][:2] == named[("default/s000", "c0")]
    assert len(named[("default/s001", "c0")]) == 1


def _workflows() -> list[Workflow]:
    out = []
    for k, tokens in enumerate((600, 900)):
        calls = tuple(
            Call(f"c{i}", Prompt(tokens + 100 * i, (), ((1000 * k, (tokens + 100 * i) // 128),)),
                 4, (f"c{i - 1}",) if i else (), 0.1 if i else 0.0, "tool" if i else None)
            for i in range(2))
        out.append(Workflow(f"default/s00{k}", "default", "agent", 0.25 * k, calls, None, 128,
                            end_signal="explicit"))
    return out


def test_only_the_stock_deployed_policies_gateway_hooks_get_the_gateways_blocks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    workflows = _workflows()
    estimates = {(w.id, c.id): c.prompt.tokens // 2 for w in workflows
                 for c in w.calls}
    named = {(w.id, c.id): ((f"h:{w.id}{c.id}", 0, 1),)
             for w in workflows for c in w.calls}
    seen: list[Any] = []
    place = llmd.EndpointPicker.place

    def recording(self: llmd.EndpointPicker, call: Any, now: float) -> int:
        seen.append(call.runs)
        return place(self, call, now)

    monkeypatch.setattr(llmd.EndpointPicker, "place", recording)
    simulate_deployed(workflows, "cpu-tiny", "llm-d", stock_engine=True, estimates=estimates,
                      runs=named)
    assert sorted(seen) == sorted(named.values())
    # saga reads the engines' KV events, in the engine's blocks: it is given those
    seen.clear()
    saga_place = SagaPolicy.place

    def saga_recording(self: SagaPolicy, call: Any, now: float) -> int:
        seen.append(call.runs)
        return saga_place(self, call, now)

    monkeypatch.setattr(SagaPolicy, "place", saga_recording)
    simulate_deployed(workflows, "cpu-tiny", "saga", estimates=estimates, runs=named)
    assert len(seen) == 4 and not set(seen) & set(named.values())
