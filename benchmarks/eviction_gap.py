"""Where SAGA's eviction key and MIN part ways under the same retention (docs/baselines.md
section 7, "An eviction-only bound").

Runs the `belady` scenario's case (its quick version unless --full) under `saga`, watched,
and under `saga-min-eviction` (all of SAGA with MIN as the GPU eviction order). The watch
changes no decision: the same key, the same floor (the script checks that the watched
run's summary equals a plain `saga` run's). At every GPU eviction of the `saga` run (not
the frees of a retention drop) the evicted blocks are classed

* by what SAGA's key saw of their owner: a workflow finished, or taken as ended (both keyed
  -1), in a tool (predicted back later than it came, or not), with a call queued or running,
  or a shared prefix;
* by their true next use (read from the trace with the offline bounds' ``NextUse``, only to
  class, never to decide): never used again (MIN evicts those first: no loss), or used
  again while some evictable leaf was used later or never ("avoidable": MIN would have
  taken that one), or used again with every other leaf used sooner ("unavoidable");
* by whether they were also on the host tier (a miss then costs a reload, not a recompute);
* for the avoidable ones, whether the rebuild-cost weight decided: without it, SAGA's key
  would have ranked MIN's choice before the victim.

Then the GPU misses, host loads and recomputes of both runs, and how many workflows SAGA
took as ended that called again.

Run: PYTHONPATH=src python benchmarks/eviction_gap.py [--full] [--seeds 0,1] [--config JSON]
"""

from __future__ import annotations

import argparse
import math
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor

from saga.bench.scenario import load_scenario
from saga.bench.workloads import build_spec
from saga.core.workflow import Workflow
from saga.engine.cluster import ClusterSpec
from saga.engine.kvcache import EvictionOrder, KeyedEviction, KVNode, RadixKV, Run
from saga.metrics.summary import summarize
from saga.sched.baselines.belady import NextUse
from saga.sched.baselines.saga_min_eviction import SagaMinEviction
from saga.sched.decisions import Retention
from saga.sched.policy import CallInfo, Policy, PolicyContext, WorkflowInfo
from saga.sched.saga import SagaConfig, SagaPolicy
from saga.sched.view import CallView, ReplicaView
from saga.sim.simulator import Simulation

INF = math.inf


def path_runs(node: KVNode) -> tuple[Run, ...]:
    """The runs from the root down to ``node`` (what a host-tier lookup takes)."""
    chain: list[Run] = []
    walk: KVNode | None = node
    while walk is not None and walk.parent is not None:
        chain.append((walk.namespace, walk.first, walk.count))
        walk = walk.parent
    return tuple(reversed(chain))


class WatchedSaga(SagaPolicy):
    """``saga``, deciding exactly as it does, that classes each GPU eviction it makes."""

    name = "saga"

    def __init__(self, config: SagaConfig | None = None) -> None:
        super().__init__(config)
        self.truth = NextUse()  # the trace's next uses: to class evictions, never to decide
        self.now = 0.0
        self.dropping = ""  # the namespace a retention drop frees next (not an eviction)
        self.tokens: Counter[tuple[str, str, bool]] = Counter()  # (owner, next use, host)
        self.weight_decided = 0  # avoidable evicted tokens the rebuild weight ranked first
        self.ended_came_back = 0  # workflows taken as ended that called again

    def bind(self, ctx: PolicyContext) -> None:
        super().bind(ctx)
        for replica in ctx.replicas:
            kv = replica.kv
            assert isinstance(kv, RadixKV)  # the simulator's replicas: their own cache
            kv.on_evict = self._watcher(replica)

    def eviction_order(self, replica_index: int) -> EvictionOrder:
        base = super().eviction_order(replica_index)
        assert isinstance(base, KeyedEviction)
        return KeyedEviction(base.name, self._keyed, floor=base.floor)

    def _keyed(self, node: KVNode, now: float) -> float:
        self.now = now  # the engine asks a key before each eviction: the eviction's time
        return self._eviction_key(node, now)

    def retention(self, replica: ReplicaView, request: CallView, now: float) -> Retention:
        self.truth.call_done(request, now)
        decision = super().retention(replica, request, now)
        self.dropping = f"w:{request.workflow}" if decision.kind == "drop" else ""
        return decision

    def on_call_ready(self, call: CallInfo, now: float) -> None:
        flow = self.flows.get(call.workflow)
        if flow is not None and flow.predicted_end:
            self.ended_came_back += 1
        super().on_call_ready(call, now)
        self.truth.call_ready(call)

    def on_call_finished(self, call: CallInfo, replica: int, now: float) -> None:
        super().on_call_finished(call, replica, now)
        self.truth.call_finished(call)

    def on_workflow_finished(self, workflow: WorkflowInfo, now: float) -> None:
        super().on_workflow_finished(workflow, now)
        self.truth.workflow_finished(workflow.workflow)

    # ---- classing ---------------------------------------------------------------------
    def _watcher(self, replica: ReplicaView) -> Callable[[KVNode, int], None]:
        def evicted(node: KVNode, blocks: int) -> None:
            if node.namespace == self.dropping:
                return  # a retention drop frees the chain: SAGA's retention, not eviction
            self._class(replica, node, blocks * replica.block_tokens)

        return evicted

    def _class(self, replica: ReplicaView, node: KVNode, tokens: int) -> None:
        now = self.now
        used = self.truth.node_next_use(node, now)
        kv = replica.kv
        assert isinstance(kv, RadixKV)
        leaves = kv.evictable_leaves()
        latest = max(leaves, key=lambda leaf: self.truth.node_next_use(leaf, now))
        if used == INF:
            fate = "never used again"
        elif self.truth.node_next_use(latest, now) > used:
            fate = "avoidable"
            if self._unweighted(node) > self._unweighted(latest):
                self.weight_decided += tokens
        else:
            fate = "unavoidable"
        host = replica.host
        on_host = host is not None and host.match_blocks(path_runs(node)) >= sum(
            count for _, _, count in path_runs(node))
        self.tokens[(self._owner(node, used), fate, on_host)] += tokens

    def _owner(self, node: KVNode, used: float) -> str:
        if node.namespace.startswith("s:"):
            return "shared prefix"
        flow = self.flows.get(node.namespace[2:])
        if flow is None:
            return "finished"
        if flow.predicted_end:
            return "taken as ended"
        if not flow.in_tool:
            return "call queued or running"
        predicted = flow.next_use  # SAGA's predicted return, as its key reads it
        if self.config.eviction_by_elapsed_tool_time and flow.tool_gap is not None:
            predicted = self.now + flow.tool_gap.residual_mean(self.now - flow.tool_since)
        return "in a tool, predicted later" if predicted > used else (
            "in a tool, predicted no later")

    def _unweighted(self, node: KVNode) -> float:
        """SAGA's key of ``node`` without the rebuild-cost weight."""
        key = self._eviction_key(node, self.now)
        if key <= 0.0 or not self.config.eviction_by_rebuild_cost:
            return key
        return key / self._rebuild_weight(node)


def case(full: bool, seed: int) -> tuple[ClusterSpec, list[Workflow]]:
    scenario = load_scenario("belady")
    spec = scenario if full else scenario.quick_version()
    workload = spec.workloads[0]
    cluster = spec.cluster_for(workload)
    workflows, _ = build_spec(workload, seed, {}, cluster.cost_model().model.max_context)
    return cluster, workflows


Watch = dict[str, object]


def run(job: tuple[bool, int, str, str]) -> tuple[str, dict[str, object], Watch]:
    """One run: its summary, and for the watched one what it classed."""
    full, seed, which, fields = job
    cluster, workflows = case(full, seed)
    config = SagaConfig.model_validate_json(fields)
    policy: Policy = {"watched": WatchedSaga, "saga": SagaPolicy,
                      "saga-min-eviction": SagaMinEviction}[which](config)
    result = Simulation(cluster, policy, workflows, seed=seed).run()
    watch: Watch = {}
    if isinstance(policy, WatchedSaga):
        watch = {"tokens": dict(policy.tokens), "weight_decided": policy.weight_decided,
                 "ended_came_back": policy.ended_came_back,
                 "predicted_ends": policy.predicted_ends,
                 "weighted": policy.config.eviction_by_rebuild_cost}
    return which, summarize(result, {}), watch


def report(seed: int, runs: dict[str, tuple[dict[str, object], Watch]]) -> None:
    plain, watched = runs["saga"][0], runs["watched"][0]
    same = repr(plain) == repr(watched)  # repr: NaN (no TCTs alone here) equals itself
    print(f"seed {seed}: the watched run decides as saga does: {same}")
    for name in ("saga", "saga-min-eviction"):
        s = runs[name][0]
        print(f"  {name:18} GPU missed {s['gpu_missed_tokens']:>10,}  recomputed "
              f"{s['recomputed_tokens']:>9,}  host loads {s['host_loaded_tokens']:>10,}  "
              f"placement {s['placement_missed_tokens']:>8,}  evicted blocks "
              f"{s['evicted_blocks']:>7,}  TCT mean {s['tct_mean']:.1f}")
    watch = runs["watched"][1]
    tokens: dict[tuple[str, str, bool], int] = watch["tokens"]  # type: ignore[assignment]
    total = sum(tokens.values())
    print(f"  saga's evicted tokens by owner (SAGA's view), true next use, on host "
          f"(total {total:,}):")
    for (owner, fate, host), count in sorted(tokens.items(), key=lambda kv: -kv[1]):
        where = "on host" if host else "GPU only"
        print(f"    {owner:30} {fate:17} {where:8} {count:>10,}  {100 * count / total:5.1f} %")
    avoidable = sum(t for (_, fate, _), t in tokens.items() if fate == "avoidable")
    weighted = f"{watch['weight_decided']:,}" if watch["weighted"] else "none (weight off)"
    print(f"  avoidable: {avoidable:,} tokens, of which the rebuild weight ranked first "
          f"{weighted}; workflows taken as ended that called again: "
          f"{watch['ended_came_back']} (of {watch['predicted_ends']} taken as ended)")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="the full case, not the quick")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    parser.add_argument("--config", default="{}", help="SagaConfig fields as JSON, for all "
                        "three runs, e.g. '{\"eviction_by_elapsed_tool_time\": true}'")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    SagaConfig.model_validate_json(args.config)  # a wrong field fails here, not in a worker
    jobs = [(args.full, seed, which, args.config) for seed in seeds
            for which in ("watched", "saga", "saga-min-eviction")]
    with ProcessPoolExecutor(2) as pool:
        done = list(pool.map(run, jobs))
    for i, seed in enumerate(seeds):
        part = done[3 * i: 3 * i + 3]
        report(seed, {which: (summary, watch) for which, summary, watch in part})


if __name__ == "__main__":
    main()
