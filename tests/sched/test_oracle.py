"""No online policy reads what only the simulator knows (CallInfo's oracle fields).

A real gateway does not know a call's output length, the tool time after it, the next
call's prompt, or whether a call is its workflow's last (unless the client marks it:
``ends_workflow``). Only offline bounds (``Policy.offline``, e.g. belady) may read those.
Two checks: the policies' sources never name them, and a run of every online policy
never reads them (a CallInfo that records every read of an oracle field).
"""

from __future__ import annotations

import pathlib
import re

import pytest

from saga.core.workflow import Call, EndSignal, Prompt, Workflow
from saga.engine.cluster import get_cluster
from saga.sched.policy import ORACLE_FIELDS, CallInfo, Policy
from saga.sched.registry import build_policy, list_policies
from saga.sched.vllm import VLLMRoundRobin
from saga.sim import simulator

SCHED = pathlib.Path(__file__).parents[2] / "src" / "saga" / "sched"
OFFLINE_SOURCES = {"belady.py"}  # the offline bounds' next uses, allowed to read the future
BT = 64

reads: list[str] = []


class SpyInfo(CallInfo):
    """A CallInfo that records every read of an oracle field."""

    def __getattribute__(self, name: str) -> object:
        if name in ORACLE_FIELDS:
            reads.append(name)
        return super().__getattribute__(name)


def _workload(end_signal: EndSignal) -> list[Workflow]:
    out = []
    for w in range(6):
        calls = []
        n = 20 + 10 * w
        for k in range(4):
            calls.append(Call(f"c{k}", Prompt(200 + n * BT, (("sys", 200),), ((0, n),)),
                              40 + 30 * k, (f"c{k - 1}",) if k else (), 2.0 if k else 0.0,
                              "bash" if k else None))
            n += 3
        out.append(Workflow(f"w{w}", f"t{w % 2}", "agent", 1.5 * w, tuple(calls),
                            end_signal=end_signal))
    return out


def _oracle_reads(policy: Policy, monkeypatch: pytest.MonkeyPatch,
                  end_signal: EndSignal) -> list[str]:
    monkeypatch.setattr(simulator, "CallInfo", SpyInfo)
    reads.clear()
    simulator.Simulation(get_cluster("test-2"), policy, _workload(end_signal),
                         end_idle_timeout=5.0).run()
    return sorted(set(reads))


ONLINE = [name for name in list_policies() if not build_policy(name).offline]


@pytest.mark.parametrize("end_signal", ["explicit", "idle"])
@pytest.mark.parametrize("name", ONLINE)
def test_no_online_policy_reads_an_oracle_field(
    name: str, end_signal: EndSignal, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert _oracle_reads(build_policy(name), monkeypatch, end_signal) == []


def test_the_check_catches_a_policy_that_reads_an_oracle_field(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Cheater(VLLMRoundRobin):
        def on_call_ready(self, call: CallInfo, now: float) -> None:
            if call.oracle_last_call and call.next_gap is None:
                self.last = call.output_tokens

    assert _oracle_reads(Cheater(), monkeypatch, "idle") == [
        "next_gap", "oracle_last_call", "output_tokens"]


def test_the_offline_bounds_are_the_only_policies_reading_them() -> None:
    # computed here, not from ONLINE: other tests may register policies after collection
    assert [name for name in list_policies() if build_policy(name).offline] == [
        "belady", "saga-belady", "saga-min-eviction"]


def test_no_online_policy_source_names_an_oracle_field() -> None:
    pattern = re.compile(
        # read as a field, not called: graph.output_tokens(node) is the learned mean
        r"\.(" + "|".join(ORACLE_FIELDS) + r")\b(?!\()"
    )
    offenders = [
        f"{path.relative_to(SCHED)}:{n}: {line.strip()}"
        for path in sorted(SCHED.rglob("*.py"))
        if path.name not in OFFLINE_SOURCES and path != SCHED / "policy.py"  # the definitions
        for n, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)
    ]
    assert offenders == []
