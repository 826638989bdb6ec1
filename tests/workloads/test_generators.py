"""Generators: valid, deterministic, shaped as stated, and close to the Claude Code trace."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from pydantic import ValidationError
from workload_helpers import real_trace

from saga.core.trace import validate_workflow
from saga.workloads import arrivals
from saga.workloads.fit import collect, ks_two_sample
from saga.workloads.generators import (
    GENERATORS,
    BrowserAgent,
    BrowserParams,
    CodingAgent,
    CodingParams,
    Fanout,
    FanoutParams,
)


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_valid_and_deterministic(name: str) -> None:
    gen = GENERATORS[name]()
    p = gen.Params(count=15)
    a = gen.generate(p, np.random.default_rng(7))
    b = gen.generate(p, np.random.default_rng(7))
    c = gen.generate(p, np.random.default_rng(8))
    assert a == b and a != c and len(a) == 15
    for w in a:
        validate_workflow(w)
    assert len({w.id for w in a}) == 15


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_params_are_strict(name: str) -> None:
    P = GENERATORS[name].Params
    with pytest.raises(ValidationError):
        P(bogus=1)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        P(count=0)
    with pytest.raises(ValidationError):
        P(slo=0.5)
    p = P()
    with pytest.raises(ValidationError):
        p.count = 3  # frozen


def test_coding_agent_chain_and_kv_convention() -> None:
    p = CodingParams(count=5, max_prompt_tokens=30_000, compact_tokens=5000)
    for w in CodingAgent().generate(p, np.random.default_rng(1)):
        prev = None
        for k, c in enumerate(w.calls):
            assert c.after == ((f"c{k - 1}",) if k else ())
            assert c.prompt.shared == (("sys:swe-agent", 14948),)
            assert c.prompt.tokens <= 30_000
            if prev is not None and c.prompt.blocks[0][0] == prev.prompt.blocks[0][0]:
                # Same context: the run grows over the previous prompt *and* its output.
                n_prev = prev.prompt.block_count()
                assert c.prompt.block_count() >= n_prev + prev.output_tokens // 64
            prev = c


def test_browser_agent_observation_replaced() -> None:
    p = BrowserParams(count=3)
    for w in BrowserAgent().generate(p, np.random.default_rng(2)):
        seen_obs: set[int] = set()
        for k, c in enumerate(w.calls):
            history, *obs = c.prompt.blocks
            assert history[0] == 0
            if k:
                prev_hist = w.calls[k - 1].prompt.blocks[0]
                assert history[1] >= prev_hist[1]  # history grows
            for first, _ in obs:
                assert first >= 1 << 24 and first not in seen_obs  # fresh observation ids
                seen_obs.add(first)


def test_fanout_shape() -> None:
    p = FanoutParams(count=4, min_workers=3, max_workers=3)
    for w in Fanout().generate(p, np.random.default_rng(3)):
        ids = [c.id for c in w.calls]
        assert ids[0] == "c0" and ids[-1] == "m"
        firsts = [c for c in w.calls if c.id.endswith(".0")]
        assert len(firsts) == 3 and all(c.after == ("c0",) for c in firsts)
        merge = w.calls[-1]
        assert len(merge.after) == 3
        branches = {c.prompt.blocks[-1][0] >> 20 for c in w.calls if c.id.startswith("w")}
        assert branches == {1, 2, 3}


def test_arrivals() -> None:
    rng = np.random.default_rng(0)
    t = arrivals.poisson(rng, 2.0, count=20_000)
    assert t[0] == 0.0 and np.all(np.diff(t) >= 0)
    assert abs(np.diff(t).mean() - 0.5) < 0.02
    g = np.diff(arrivals.gamma(rng, 2.0, 3.0, count=20_000))
    assert abs(g.mean() - 0.5) < 0.05 and abs(g.std() / g.mean() - 3.0) < 0.3
    d = arrivals.poisson(rng, 1.0, duration=100.0)
    assert d.max() < 100.0 and 60 < len(d) < 140
    m = arrivals.mmpp(rng, (0.5, 5.0), 20.0, count=2000)
    assert len(m) == 2000 and m[0] == 0.0
    gaps = np.diff(m)
    assert gaps.std() / gaps.mean() > 1.2  # burstier than Poisson
    assert list(arrivals.replay([5.0, 3.0, 4.0], scale=2.0)) == [0.0, 2.0, 4.0]


def _growth(ws: list) -> np.ndarray:  # type: ignore[type-arg]
    out = [b.prompt.tokens - a.prompt.tokens for w in ws for a, b in itertools.pairwise(w.calls)
           if b.prompt.tokens > a.prompt.tokens]
    return np.asarray(out, dtype=np.float64)


@pytest.mark.real_traces
def test_coding_agent_matches_claude_trace() -> None:
    """KS distances to the trace, with the tolerances stated in docs/workloads.md."""
    s = collect(real_trace("claude_code_sessions.jsonl.gz"))
    p = CodingParams(count=400, max_gap=1e9, max_output_tokens=10**6)
    ws = CodingAgent().generate(p, np.random.default_rng(0))
    f = np.float64
    calls = np.asarray([len(w.calls) for w in ws], dtype=f)
    out = np.asarray([c.output_tokens for w in ws for c in w.calls], dtype=f)
    gaps = np.asarray([c.gap for w in ws for c in w.calls if c.after], dtype=f)
    assert ks_two_sample(calls, np.asarray(s.calls, dtype=f)) < 0.08
    assert ks_two_sample(out, np.asarray(s.output, dtype=f)) < 0.06
    # The trace's gaps are whole seconds; ours are continuous: that alone costs ~0.09.
    assert ks_two_sample(gaps, np.asarray(s.tool_gap, dtype=f)) < 0.12
    # Growth is at least the previous output, which shifts it up a little.
    growth = _growth(ws)
    assert ks_two_sample(growth, np.asarray(s.growth, dtype=f)) < 0.12
    for mine, theirs in ((calls, s.calls), (out, s.output), (gaps, s.tool_gap)):
        ratio = np.median(mine) / np.median(theirs)
        assert 0.85 < ratio < 1.15
