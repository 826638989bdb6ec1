"""Agent Execution Graph: learned statistics and expected remaining work, with exact
expectations."""

from __future__ import annotations

import gc
import json
import math
import random
import weakref
from statistics import NormalDist
from typing import cast

import pytest

from saga.sched.saga.config import SagaConfig
from saga.sched.saga.graph import (
    KEPT_CDFS,
    KEPT_QUANTILES,
    AgentGraph,
    Gap,
    GraphStore,
    LogNormal,
    LogNormalFit,
    Observation,
    depth_bucket,
    node_key,
)

# refresh_every=1: remaining() and gap() are of every observation so far
EXACT = SagaConfig(prior_weight=0.0, depth_buckets=1, min_samples=2, refresh_every=1)


def test_node_keys_and_depth_buckets() -> None:
    assert [depth_bucket(i, 8) for i in (0, 1, 2, 3, 4, 7, 8, 1000)] == [0, 1, 2, 2, 3, 3, 4, 7]
    assert node_key(None, 0, 8) == "^#0"
    assert node_key("bash", 5, 8) == "bash#3"
    assert node_key(None, 5, 8) == "-#3"
    assert node_key("bash", 5, 1) == "bash#0"


def test_lognormal_fit_is_welford_on_logs() -> None:
    fit = LogNormalFit()
    for x in (1.0, math.e, math.e**2):
        fit.add(x)
    assert fit.n == 3
    assert fit.mean == pytest.approx(1.0)
    assert fit.sigma == pytest.approx(1.0)  # sample deviation of (0, 1, 2)


def test_lognormal_cdf_quantile_and_truncated_mean() -> None:
    d = LogNormal(math.log(5.0), 0.5)
    assert d.cdf(5.0) == pytest.approx(0.5)
    assert d.quantile(0.5) == pytest.approx(5.0)
    assert d.mean() == pytest.approx(5.0 * math.exp(0.125))
    # E[min(X, t)] -> E[X] as t grows, -> t as t shrinks
    assert d.mean_min(1e6) == pytest.approx(d.mean())
    assert d.mean_min(0.01) == pytest.approx(0.01, rel=1e-6)


def test_the_tool_time_still_expected_grows_with_the_time_a_tool_has_run() -> None:
    # E[X - e | X > e] of a log-normal: E[X; X > e] / P(X > e) - e, where
    # E[X; X > e] = E[X] * Phi(sigma - z) and z = (log e - mu) / sigma
    d = LogNormal(math.log(5.0), 1.5)
    gap = Gap(0.8, ((1.0, d),))
    phi = NormalDist().cdf
    for elapsed in (1.0, 5.0, 30.0):
        z = (math.log(elapsed) - d.mu) / d.sigma
        exact = d.mean() * phi(d.sigma - z) / (1.0 - phi(z)) - elapsed
        assert gap.residual_mean(elapsed) == pytest.approx(exact, rel=1e-9)
    assert gap.residual_mean(0.0) == gap.mean() == pytest.approx(5.0 * math.exp(1.125))
    # heavy-tailed: past its mean (15.4 s) a tool is expected to run longer, not to be due
    assert gap.residual_mean(30.0) > gap.residual_mean(5.0) > gap.residual_mean(1.0)
    assert gap.residual_mean(30.0) > gap.mean()
    # beyond any chance the mixture gives the gap, the time elapsed
    assert Gap(0.8, ((1.0, LogNormal(0.0, 0.1)),)).residual_mean(1e6) == 1e6


def _feed_chain(graph: AgentGraph) -> None:
    """4 workflows: ^ -> bash three times (growth 1000), one ends at ^;
    from bash: 2 continue to bash (growth 1000), 2 end. Outputs 200 at bash."""
    for duration in (2.0, 2.0 * math.e, 2.0 * math.e**2):
        graph.observe_transition("^#0", "bash#0", duration, 1000)
    graph.observe_end("^#0")
    for duration in (2.0, 2.0):
        graph.observe_transition("bash#0", "bash#0", duration, 1000)
    graph.observe_end("bash#0")
    graph.observe_end("bash#0")
    for _ in range(5):
        graph.observe_output("bash#0", 200)


def test_learned_probabilities_and_durations() -> None:
    g = AgentGraph(EXACT)
    _feed_chain(g)
    assert g.p_continue("^#0") == pytest.approx(0.75)
    assert g.p_continue("bash#0") == pytest.approx(0.5)
    assert g.successors("^#0") == {"bash#0": pytest.approx(1.0)}
    d = g.duration("bash")  # logs of 2, 2e, 2e^2, 2, 2: mean ln2 + 0.6
    assert d.mu == pytest.approx(math.log(2.0) + 0.6)
    assert d.sigma == pytest.approx(math.sqrt((0.36 * 3 + 0.16 + 1.96) / 4))
    gap = g.gap("^#0")
    assert gap.p_return_within(math.exp(d.mu)) == pytest.approx(0.75 * 0.5)
    assert g.output_tokens("bash#0") == pytest.approx(200.0)
    assert g.growth_tokens("bash#0") == pytest.approx(1000.0)


def test_expected_remaining_work_on_a_tiny_graph() -> None:
    # By hand: calls V(bash) = 0.5 (1 + V(bash)) = 1; V(^) = 0.75 (1 + 1) = 1.5.
    # tokens (r = growth 1000 + output 200): V(bash) = 0.5 (1200 + V) = 1200;
    # V(^) = 0.75 (1200 + 1200) = 1800.
    g = AgentGraph(EXACT)
    _feed_chain(g)
    values = g.expected_remaining()
    assert values["bash#0"] == pytest.approx((1.0, 1200.0))
    assert values["^#0"] == pytest.approx((1.5, 1800.0))
    assert g.remaining("^#0") == pytest.approx((1.5, 1800.0))


def test_cold_start_uses_priors_then_smooths_towards_the_pool() -> None:
    cfg = SagaConfig(prior_weight=2.0, prior_continue=0.9, depth_buckets=1)
    g = AgentGraph(cfg)
    assert g.p_continue("x#0") == pytest.approx(0.9)
    assert g.duration("bash").quantile(0.5) == pytest.approx(cfg.prior_tool_median)
    assert g.remaining("x#0")[0] == pytest.approx(0.9 / 0.1)  # geometric: c / (1 - c)
    g.observe_end("a#0")
    g.observe_end("a#0")
    # pooled: (0 + 2 * 0.9) / (2 + 2) = 0.45; node a: (0 + 2 * 0.45) / (2 + 2) = 0.225
    assert g.p_continue("a#0") == pytest.approx(0.225)
    assert g.p_continue("b#0") == pytest.approx(0.45)


def _feed_random(store: GraphStore, seed: int) -> None:
    """Observations of two agents as the policy makes them: transitions, outputs, ends."""
    rng = random.Random(seed)
    for w in range(30):
        agent = ("coder", "browser")[w % 2]
        graph = store.get(agent)
        node = node_key(None, 0, 4)
        for index in range(1, rng.randint(1, 6)):
            graph.observe_output(node, rng.randint(1, 400))
            nxt = node_key(rng.choice(("bash", "grep", None)), index, 4)
            graph.observe_transition(node, nxt, rng.lognormvariate(0.5, 1.2),
                                     rng.randint(-50, 3000))
            node = nxt
        graph.observe_output(node, rng.randint(1, 400))
        graph.observe_end(node)


def _estimates(graph: AgentGraph) -> dict[str, object]:
    snapshot = graph.snapshot()
    nodes = sorted(cast(dict[str, object], snapshot["nodes"]))  # every node seen, dst too
    assert len(nodes) > 3
    return {
        "snapshot": snapshot,
        "p_continue": {n: graph.p_continue(n) for n in nodes},
        "successors": {n: graph.successors(n) for n in nodes},
        "output": {n: graph.output_tokens(n) for n in nodes},
        "growth": {n: graph.growth_tokens(n) for n in nodes},
        "duration": {t: graph.duration(t) for t in ("bash", "grep", "-", "never")},
        "gap": {n: (graph.gap(n).p_continue, graph.gap(n).mixture) for n in nodes},
        "remaining": {n: graph.remaining(n) for n in nodes},
        "observations": graph.observations,
    }


def test_graph_store_records_what_it_learns_and_applies_it_elsewhere_exactly() -> None:
    cfg = SagaConfig(depth_buckets=4)
    sent: list[Observation] = []
    here = GraphStore(cfg, sink=sent.append)
    _feed_random(here, seed=1)
    assert len(sent) == here.get("coder").observations + here.get("browser").observations
    # through the wire format: JSON rows, as the store carries them
    wire = json.loads(json.dumps([o.to_row() for o in sent]))
    echoed: list[Observation] = []
    there = GraphStore(cfg, sink=echoed.append)
    assert there.apply(Observation.from_row(row) for row in wire) == len(sent)
    assert echoed == []  # learned from elsewhere: not sent back
    for agent in ("coder", "browser"):
        assert _estimates(there.get(agent)) == _estimates(here.get(agent))  # exact, not approx


def test_no_sink_learns_as_before_and_a_late_sink_sees_new_observations() -> None:
    plain, recorded = GraphStore(SagaConfig()), GraphStore(SagaConfig())
    _feed_random(plain, seed=2)
    _feed_random(recorded, seed=2)
    sent: list[Observation] = []
    recorded.set_sink(sent.append)  # graphs that exist already pass it on too
    recorded.get("coder").observe_end("^#0")
    plain.get("coder").observe_end("^#0")
    assert sent == [Observation("coder", "end", "^#0")]
    assert _estimates(recorded.get("coder")) == _estimates(plain.get("coder"))


def test_a_store_that_does_not_learn_ignores_applied_observations() -> None:
    store = GraphStore(SagaConfig(graph=False))
    assert store.apply([Observation("coder", "end", "^#0")]) == 0
    assert store.snapshot() == {} and store.get("coder").observations == 0


@pytest.mark.parametrize("row", [
    None, [], ["t", "a"], ["x", "a", "n"], ["e", "a", "n", 1], ["t", "a", "n", "m", 1.0],
    ["t", "a", "n", "m", float("nan"), 1.0], ["t", "a", "n", "m", "1", 1.0],
    ["o", "a", "n", 1.5], ["o", "a", "n", True], [1, "a", "n"],
])
def test_observation_rows_refuse_anything_else(row: object) -> None:
    with pytest.raises(ValueError):
        Observation.from_row(row)


def test_only_learning_saga_policies_offer_their_graphs() -> None:
    from saga.sched.registry import build_policy

    assert build_policy("saga").learned_graphs() is not None
    assert build_policy("saga-no-graph").learned_graphs() is None
    assert build_policy("vllm-rr").learned_graphs() is None


def _observations(seed: int) -> list[Observation]:
    sent: list[Observation] = []
    _feed_random(GraphStore(SagaConfig(depth_buckets=4), sink=sent.append), seed)
    return sent


def _read_some(store: GraphStore, rng: random.Random) -> None:
    """Reads a policy might make between observations: any estimate of any node."""
    for _ in range(rng.randint(0, 3)):
        graph = store.get(rng.choice(("coder", "browser")))
        node = node_key(rng.choice(("bash", "grep", None)), rng.randint(0, 9), 4)
        read = rng.randrange(4)
        if read == 0:
            graph.remaining(node)
        elif read == 1:
            graph.gap(node).quantile(rng.random())
        elif read == 2:
            graph.gap(node).ttl_table(600.0, (0.5, 0.9))
        else:
            graph.p_continue(node)


@pytest.mark.parametrize("seed", [3, 4, 5, 6])
def test_estimates_do_not_depend_on_which_reads_came_before(seed: int) -> None:
    """The same observations with reads interleaved differently (none, after every
    observation, at random) give exactly the same estimates at every checkpoint."""
    observations = _observations(seed)
    cfg = SagaConfig(depth_buckets=4, refresh_every=4)
    stores = [GraphStore(cfg) for _ in range(3)]
    rngs = [random.Random(seed * 10 + i) for i in range(3)]
    checkpoints = sorted(random.Random(seed).sample(range(1, len(observations)), 6))
    checkpoints.append(len(observations))
    done = 0
    for checkpoint in checkpoints:
        for obs in observations[done:checkpoint]:
            for i, store in enumerate(stores):
                store.apply([obs])
                if i == 1:
                    _read_some(store, rngs[i])  # after every observation
                elif i == 2 and rngs[i].random() < 0.3:
                    _read_some(store, rngs[i])  # now and then
        done = checkpoint
        for agent in ("coder", "browser"):
            first = _estimates(stores[0].get(agent))
            assert all(_estimates(s.get(agent)) == first for s in stores[1:])  # exact


def test_refresh_points_are_fixed_by_the_count_of_observations() -> None:
    """remaining() and gap() answer as of the last refresh point (the 1st observation,
    then every refresh_every), whether or not they were read in between."""
    observations = [o for o in _observations(7) if o.agent == "coder"]
    cfg = SagaConfig(depth_buckets=4, refresh_every=4)
    node = observations[0].node

    def learned(count: int) -> AgentGraph:
        store = GraphStore(cfg)
        store.apply(observations[:count])
        return store.get("coder")

    # points at 1, 5, 9: after 8 observations the estimates are those of the first 5
    late = learned(8)
    assert late.remaining(node) == learned(5).remaining(node)
    assert late.gap(node) == learned(5).gap(node)
    assert late.p_continue(node) == learned(8).p_continue(node)  # the others are current
    assert learned(4).remaining(node) == learned(1).remaining(node)
    assert learned(9).remaining(node) != learned(8).remaining(node)


def test_a_young_graph_answers_from_every_observation_by_default() -> None:
    """refresh_every = 1: up to the 128th observation every one is a refresh point, so
    remaining() is the solve of the graph as it is."""
    observations = [o for o in _observations(8) if o.agent == "coder"]
    assert 20 < len(observations) < 128
    store = GraphStore(SagaConfig(depth_buckets=4))
    graph = store.get("coder")
    for count, obs in enumerate(observations, 1):
        store.apply([obs])
        if count % 7 == 0:
            assert {n: graph.remaining(n) for n in graph.expected_remaining()} == \
                graph.expected_remaining()


def test_a_gap_keeps_its_answers_until_the_graph_refreshes_then_a_new_gap_answers() -> None:
    # a Gap keeps its mean, quantiles and TTL tables; the graph hands out the same Gap
    # until its next refresh, then a new one built from what it has learned since
    g = AgentGraph(SagaConfig(prior_weight=0.0, depth_buckets=1, min_samples=2,
                              refresh_every=4))
    for duration in (1.0, 2.0, 4.0):
        g.observe_transition("^#0", "bash#0", duration, 100)
        g.observe_transition("^#0", "read#0", 10 * duration, 100)
    gap = g.gap("^#0")
    answers = (gap.mean(), gap.quantile(0.9), gap.ttl_table(120.0, (0.5, 0.9)))
    fresh = Gap(gap.p_continue, gap.mixture)  # nothing kept yet
    assert answers == (fresh.mean(), fresh.quantile(0.9), fresh.ttl_table(120.0, (0.5, 0.9)))
    assert (gap.mean(), gap.quantile(0.9)) == answers[:2]  # asked again: kept
    # six observations so far: the refresh points are the 1st, 5th and 9th (refresh_every)
    for _ in range(2):  # longer bash runs: the 7th and 8th observations refresh nothing
        g.observe_transition("^#0", "bash#0", 60.0, 100)
    assert g.gap("^#0") is gap
    g.observe_transition("^#0", "bash#0", 60.0, 100)  # the 9th: a refresh point
    refreshed = g.gap("^#0")
    assert refreshed is not gap
    assert refreshed.mixture != gap.mixture
    rebuilt = Gap(refreshed.p_continue, refreshed.mixture)
    assert refreshed.mean() == rebuilt.mean() > answers[0]
    assert refreshed.quantile(0.9) == rebuilt.quantile(0.9) != answers[1]


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_a_gap_asked_ever_new_quantiles_keeps_a_bounded_few_and_answers_the_same(
    seed: int,
) -> None:
    """Predicted ends ask a gap a new quantile at nearly every call: it keeps at most
    KEPT_QUANTILES answers and KEPT_CDFS bisection CDFs at any time, forgetting them
    when full (issue 19), and every answer, asked before or after a cache was full, again
    or anew, is bit for bit that of a gap that kept nothing."""
    store = GraphStore(SagaConfig(depth_buckets=4, refresh_every=4))
    _feed_random(store, seed)
    graph = store.get("coder")
    rng = random.Random(seed)
    gaps = [graph.gap(n) for n in sorted(graph.expected_remaining())]
    assert any(len(g.mixture) > 1 for g in gaps)  # some bisect
    asked = [rng.uniform(0.01, 0.999) for _ in range(4 * KEPT_QUANTILES)]
    for q in [*asked, *asked[:5], *rng.sample(asked, 10)]:
        for gap in gaps:
            assert gap.quantile(q) == Gap(gap.p_continue, gap.mixture).quantile(q)
        for gap in gaps:
            assert 0 < len(gap._quantiles) <= KEPT_QUANTILES
            assert len(gap._bisected) <= KEPT_CDFS


def test_a_refresh_frees_the_copy_it_replaces_without_the_cyclic_collector() -> None:
    """A graph's copy at a refresh point holds no reference to itself: the next refresh
    frees it, and the gaps it kept, at once, not at the cyclic collector's next full
    pass (issue 19: those waited, and the allocators kept their peaks)."""
    graph = AgentGraph(SagaConfig(depth_buckets=4, refresh_every=1))
    graph.observe_transition("^#0", "bash#1", 2.0, 100)
    graph.gap("^#0").quantile(0.5)
    graph.remaining("^#0")
    enabled = gc.isenabled()
    gc.disable()
    try:
        copy = weakref.ref(graph._settled)  # type: ignore[arg-type]
        assert copy() is not None
        graph.observe_end("bash#1")  # a refresh point: a new copy replaces the old
        assert copy() is None
    finally:
        if enabled:
            gc.enable()
