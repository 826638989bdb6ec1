"""SAGA's typed configuration: every knob, described and validated, one way to build.

Each mechanism of docs/saga.md has a switch so that ablations are
configurations, not forks of the code.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: the queue orders that learn session lengths and rank by saga/gittins.py's index
GITTINS_ORDERS = ("gittins", "gittins_heavy_tailed")


class SagaConfig(BaseModel):
    """Configuration of the ``saga`` policy (see :mod:`saga.sched.saga`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # ---- mechanism switches (ablations) --------------------------------------------
    graph: bool = Field(
        True,
        description="Learn Agent Execution Graphs. Off: every prediction uses the cold-start "
        "priors only (no per-agent learning).",
    )
    steal: bool = Field(
        True,
        description="Placement by predicted completion time (affinity that yields to load, "
        "work stealing at tool boundaries). Off: a workflow always returns to its home "
        "replica; only first calls are placed by predicted completion.",
    )
    afs: bool = Field(
        True,
        description="Agent Fair Share queue order. Off: first come first served by call "
        "readiness, as vLLM.",
    )
    retention: bool = Field(
        True,
        description="Graph-driven KV retention (pin / offload / release / drop) and "
        "next-use eviction. Off: release to the LRU free queue, as vLLM.",
    )
    admission: bool = Field(
        True,
        description="SLO admission control. Off: no SLO-driven deferral or rejection (the "
        "memory gate, a separate switch, still applies).",
    )
    memory_gate: bool = Field(
        True,
        description="Admit new workflows only while the active set's working set fits "
        "memory_budget x the cluster's KV capacity (queue first come first served, newest "
        "first past gate_lifo_after, interactive first).",
    )

    # ---- Agent Execution Graph -------------------------------------------------------
    depth_buckets: int = Field(
        8,
        ge=1,
        le=32,
        description="Call-site nodes are (preceding tool, log2 bucket of the call index), "
        "with this many buckets; 1 keys nodes by tool only. Buckets let the graph learn "
        "that the continuation hazard changes with progress (heavy-tailed sessions).",
    )
    prior_weight: float = Field(
        2.0,
        ge=0.0,
        description="Pseudo-observations of the pooled estimate mixed into each node's "
        "estimate (Bayesian smoothing): with n samples a node weighs its own data n/(n+w).",
    )
    prior_continue: float = Field(
        0.9,
        gt=0.0,
        lt=1.0,
        description="Cold-start probability that a workflow calls again after a call.",
    )
    prior_tool_median: float = Field(
        5.0, gt=0.0, description="Cold-start median tool duration (s), log-normal."
    )
    prior_tool_sigma: float = Field(
        1.0, gt=0.0, description="Cold-start log-space standard deviation of tool durations."
    )
    prior_output_tokens: float = Field(
        300.0, gt=0.0, description="Cold-start mean output tokens of a call."
    )
    prior_growth_tokens: float = Field(
        1000.0, ge=0.0, description="Cold-start mean tokens a call's prompt appends."
    )
    min_samples: int = Field(
        5,
        ge=1,
        description="Samples a tool needs before its own duration fit is used instead of "
        "the agent's pooled fit (and the pooled fit before the prior).",
    )
    max_continue: float = Field(
        0.995,
        gt=0.0,
        lt=1.0,
        description="Cap on any continuation probability, so the remaining-work system is "
        "regular (and its expectations finite).",
    )
    refresh_every: int = Field(
        1,
        ge=1,
        description="Observations between a graph's refresh points, where its remaining-work "
        "values and gaps are taken (at least; once a graph has seen n observations, every "
        "n/64). Fixed by the count of observations, never by reads. 1: a young graph's "
        "estimates are current (16 met 2x for 0.810 of quick capacity's coding workflows at "
        "0.02375 wf/s, 1 for 0.852; the same capacities: docs/saga.md).",
    )

    # ---- KV retention ---------------------------------------------------------------
    price_idle: float = Field(
        0.05,
        ge=0.0,
        description="Shadow price of GPU memory on an idle replica: seconds of others' "
        "delay per (share of the KV cache x second held).",
    )
    price_per_waiting: float = Field(
        1.0,
        ge=0.0,
        description="Price added per call waiting on the replica, scaled by memory pressure: "
        "each waiting call is slowed when memory is held.",
    )
    pressure_knee: float = Field(
        0.5,
        ge=0.0,
        lt=1.0,
        description="Memory pressure (held + waiting demand over capacity) below which "
        "memory is treated as free; the price rises linearly above it.",
    )
    ttl_max: float = Field(120.0, gt=0.0, description="Longest pin TTL in seconds.")
    pin_with_host: bool = Field(
        False,
        description="Let retention pin a workflow's KV on the GPU through a tool call when "
        "a host tier can hold it. Off: with a host tier that can, the KV is offloaded (and "
        "prefetched), never pinned; without one, pins as before. A pin there saves only the "
        "reload (under a second on PCIe) yet holds GPU blocks for the whole tool call, which "
        "a call waiting for memory cannot take while others run: on full coding at 0.09 "
        "wf/s it is the gate's and the queues' wait. Off by default since the sixth "
        "session (docs/saga.md, \"Coding agents at 0.09 wf/s\").",
    )
    pin_host_copy: bool = Field(
        False,
        description="With a host tier that can hold the blocks, a pin also copies them to "
        "the host (write-through), so a pin that expires or is given up before the workflow "
        "returns leaves a copy to reload instead of KV to recompute. Needs pin_with_host "
        "(without it no pin is taken over a host tier). Off by default (docs/saga.md, "
        "sixth session).",
    )
    drop_below: float = Field(
        0.02,
        ge=0.0,
        le=1.0,
        description="Drop a finished call's private KV when the chance its workflow calls "
        "again is below this.",
    )
    predict_end: bool = Field(
        True,
        description="Take a workflow without an end marker as ended once the graph's "
        "P(no return | no call since) reaches end_confidence (saga/ends.py), instead of "
        "waiting for the idle timeout: its working set leaves the gate, its KV is dropped.",
    )
    end_confidence: float = Field(
        0.5, gt=0.0, lt=1.0,
        description="P(the workflow has ended) at which a predicted end is acted on "
        "(0.5: when an end is likelier than a return; docs/saga.md has the sweep).",
    )
    gate_interactive_reserve: float = Field(
        0.1,
        ge=0.0,
        lt=1.0,
        description="Share of the memory gate's limit that best-effort workflows leave free "
        "while workflows with an SLO are in flight, so an interactive arrival under a "
        "best-effort flood finds room at once instead of waiting for the flood's working sets "
        "to leave (docs/saga.md, Memory gate).",
    )
    gate_end_min_ends: int = Field(
        0,
        ge=0,
        description="Ends of an agent type (of its tenant) to have been seen before the "
        "memory gate stops counting a silent workflow's working set at its predicted end "
        "(0: from its first call, on the graph's priors). Pins and eviction wait for "
        "min_samples seen ends: a wrong early guess there loses KV, in the gate only a "
        "place at the door. Seen ends come late (idle timeout), so waiting for them let "
        "finished best-effort work fill the gate for the timeout (docs/saga.md).",
    )
    gate_pause_quantile: float | None = Field(
        0.95,
        gt=0.0,
        lt=1.0,
        description="The memory gate stops counting a workflow silent in a gap (a tool "
        "running, no end predicted) once the silence outlasts this quantile of the gaps "
        "learned after its call site, and counts it again when it calls: a session paused "
        "for hours (a tool waiting on a human) no longer keeps new ones at the door. Only "
        "the count: its KV follows retention. None: counted until it calls or ends.",
    )
    prefetch_quantile: float = Field(
        0.2,
        gt=0.0,
        lt=1.0,
        description="Prefetch offloaded KV so that it is back by this quantile of the "
        "predicted tool duration.",
    )
    eviction_t0: float = Field(
        1.0,
        gt=0.0,
        description="Seconds added to the time until next use in the eviction key, so "
        "imminent reuses do not divide by zero.",
    )

    eviction_by_return_chance: bool = Field(
        False,
        description="Weight each workflow's cached leaf by the graph's chance that it calls "
        "again (P(continue)), not only by the time until its predicted next call. Off by "
        "default: ends are predicted apart (a workflow taken as ended is evicted first), "
        "and on the belady scenario (seed 0) the weight missed 10 % more GPU tokens "
        "(quick: 5.34 M against 4.52 M; full: 57.3 M against 51.5 M) at the same TCT.",
    )
    eviction_by_rebuild_cost: bool = Field(
        False,
        description="Weight each cached leaf's eviction key by what recomputing its last "
        "block costs, per token of a prefill chunk at that depth over one at the start of a "
        "context (attention makes deep blocks dearer). Off by default: on the belady "
        "scenario (quick) it missed 1.17x saga-belady's GPU prefix tokens against 1.11x "
        "unweighted, for 1.3 % lower mean TCT.",
    )

    # ---- placement ------------------------------------------------------------------
    steal_margin: float = Field(
        0.15,
        ge=0.0,
        description="A call leaves the replica holding its KV only when another replica's "
        "predicted completion is better by this share (hysteresis against flapping).",
    )
    steal_min_gain: float = Field(
        0.5,
        ge=0.0,
        description="... and by at least this many seconds.",
    )
    # True since 2026-12-06 (docs/saga.md, "Steals on a large fleet"): on the full capacity
    # case's coding agents (16 replicas, spread measured 0.07-0.12) it took the share within
    # 2x from 0.884 to 0.950 at 0.085 wf/s and from 0.764 to 0.842 at 0.09 (seeds 0 and 1),
    # steals 8.7-9.7k -> 0.44-0.47k a seed at 0.09; on two replicas (the quick cases, full
    # Claude Code) decisions are the same; the interference scenario keeps 100 % of SLOs.
    steal_curse: bool = Field(
        True,
        description="Correct the steal margin for the winner's curse (saga/steal_noise.py): "
        "the best of k rivals' noisy predictions is biased low, so a steal needs the best "
        "to beat home by 1 - (1 - steal_margin) x exp(-sigma x E[max of k standard "
        "normals]), sigma the measured spread of log(actual / predicted) completion of the "
        "calls placed (re-priced with their real output). One rival: steal_margin exactly.",
    )
    steal_noise_window: int = Field(
        256,
        ge=1,
        description="Calls over which the prediction spread that steal_curse uses is "
        "averaged (an exponential moving variance).",
    )
    steal_imposed: bool = Field(
        True,
        description="Weigh a steal by the delay it imposes: each candidate's predicted "
        "completion plus its reload and prefill seconds times the calls running there "
        "(every step of theirs carries the call's prefill chunks). Off: the call's own "
        "completion only.",
    )
    backlog_price: Literal["queue", "fixed"] = Field(
        "queue",
        description="Seconds per token of the prefill queued ahead on a replica (its "
        "backlog), the unit placement weighs a replica's queue in. 'queue': a token of a "
        "prefill as long as the mean prefill ahead per queued call (waiting and running), "
        "from an empty context: a queue of short calls costs what short prefills cost. "
        "'fixed': a token of an 8,192-token chunk at a 16,384-token context (Predictor."
        "t_token) whatever the calls' size, which priced the queue of 2-7k-token calls on the "
        "real vLLM-CPU engines at 4-9x their prefill and made 8-14 of 64 later calls a run "
        "leave the replica holding their KV (docs/engines.md).",
    )
    colocate_slack: float = Field(
        0.25,
        ge=0.0,
        description="A new workflow may go to a replica (e.g. one holding its shared prefix) "
        "only if the working set homed there (context tokens of its workflows) is within "
        "this share, plus colocate_abs, of the least.",
    )
    colocate_abs: float = Field(
        16384.0, ge=0.0, description="Absolute working-set slack in tokens for co-location."
    )
    slot_fit: bool = Field(
        True,
        description="On replicas that declare a slot count (llama.cpp's --parallel; the "
        "simulator's and vLLM's declare none: no effect there), a new workflow goes to a "
        "replica with a free slot, else to one already beyond its slots within "
        "slot_fit_slack workflows of the least loaded, else anywhere (slot_fit.py).",
    )
    slot_fit_slack: int = Field(
        1,
        ge=1,
        description="With slot_fit, the most workflows a replica beyond its slots may home "
        "over the least loaded replica when a new workflow packs onto it (1: never pack; "
        "2 packed 10 sessions on 4-slot llama.cpp replicas 4 and 6, measured slower than "
        "1: docs/engines.md, sixth session).",
    )
    # Off until measured on real llama.cpp (docs/engines.md, "The gate by slots").
    gate_slots: bool = Field(
        False,
        description="With the memory gate, also hold a new workflow at the door while "
        "every slot of every up replica is homed by a workflow in flight (replicas that "
        "declare a slot count: llama.cpp's --parallel; vLLM's and the simulator's declare "
        "none: no effect there), until one ends or is judged ended (slot_gate.py).",
    )
    # On since 2026-12-07 (docs/engines.md, "The gate by slots"): 4 interleaved pairs of the
    # quick llama.cpp memory case, saga's within-run ratio over continuum x1.21 (1.05-1.39).
    steal_slots: bool = Field(
        True,
        description="On replicas that declare a slot count, a workflow moves off its home "
        "only to a replica whose homed workflows leave a slot free (no effect where none "
        "is declared: slot_fit.steal_targets).",
    )
    placement_candidates: int = Field(
        16,
        ge=2,
        description="Replicas a call's placement evaluates: all of them up to this many; on "
        "larger clusters the workflow's home, the replicas with the smallest working sets "
        "and a seeded random sample, this many in all (power of d choices).",
    )

    # ---- Agent Fair Share -----------------------------------------------------------
    tenant_weights: dict[str, float] = Field(
        default_factory=dict,
        description="Weight of each tenant's fair share; tenants not listed weigh 1.",
    )
    aging: float = Field(
        0.5,
        ge=0.0,
        description="Seconds of remaining-work priority a call gains per second it waits, "
        "so that no call starves behind shorter work.",
    )
    # "gittins_heavy_tailed" since 2026-12-07 (docs/saga.md, "The Gittins order where lengths
    # are heavy-tailed"): on the full capacity case's Claude Code sessions it met 2x for 0.920
    # against 0.898 at 0.0055 wf/s (the rate the full search failed) and 0.940 against 0.921
    # at 0.00525 (seeds 0 and 1); coding agents' lengths are alike, so there it orders by
    # remaining work as before (quick coding's probe, the interference run: identical).
    queue_order: Literal["remaining", "attained", "gittins", "gittins_heavy_tailed"] = Field(
        "gittins_heavy_tailed",
        description="Within a tenant, order an engine's queued calls by their workflow's "
        "expected remaining work (remaining: the Agent Execution Graph's calls left, "
        "shortest first) or by the work it has received so far (attained: least first, "
        "as Autellix's PLAS; a gateway counts it), each plus the call's own predicted "
        "service, or by a Gittins-like rank of the work received under the learned "
        "distribution of its agent type's session lengths (gittins: saga/gittins.py; "
        "least attained first where long sessions tend to run longer, oldest first where "
        "lengths are alike), or that rank only for agent types whose learned lengths are "
        "heavy-tailed, by remaining work for the others (gittins_heavy_tailed: squared "
        "coefficient of variation above 1, the exponential's; a decreasing hazard has at "
        "least that, an increasing one at most), each less the aging.",
    )
    # 60 s since 2026-12-06 (docs/saga.md, "The quick pool, fit first on Claude Code"): on
    # the quick capacity case's Claude Code sessions at 0.0055 wf/s it took the share within
    # 2x from 0.858 to 0.915 (seeds 0 and 1) and the capacity on seed 0 from 0.005 to 0.0055;
    # coding at 0.025 wf/s 0.786 -> 0.800, its capacities unchanged; the claude-code
    # scenario's mean TCT as it was.
    fit_first_wait: float | None = Field(
        60.0, ge=0.0,
        description="Within a tenant, queue the calls whose prompt fits the replica's free "
        "and evictable KV now ahead of those that do not (vLLM admits in queue order and "
        "stops at the first call that does not fit), for calls that waited less than this "
        "many seconds: past it a call keeps its place by remaining work and the calls behind "
        "it wait for the memory it needs. None: by remaining work only.",
    )
    # Off (docs/engines.md, "Warm first at the gateway's queue"): with 5 s, three interleaved
    # A/B pairs of the quick llama.cpp bench (load averages 7-15) did not show a gain: saga's
    # within-run ratio over sglang 1.17x, 95 % CI 0.99-1.37 by run pair; there SAGA's own key
    # started a cold first call ahead of a waiting later call within 5 s 0-2 times per
    # record, against 12-18 on a quiet machine, so little was left to reorder.
    warm_first_wait: float | None = Field(
        None, ge=0.0,
        description="At a gateway's queue in front of an engine that takes no priority "
        "(llama.cpp; never in the simulator or on vLLM), within a tenant, start the calls "
        "at least half of whose prompt blocks are cached on the replica ahead of those "
        "that are not, for calls that waited less than this many seconds: past it a cold "
        "call keeps its place by remaining work. None: by remaining work only.",
    )
    # 1/16 since 2026-12-06 (docs/saga.md, "The decode guard"): 128 tokens of a 2,048 budget
    # (a100-8-70b) took the quick capacity case's Claude Code sessions at 0.0055 wf/s from 0.872
    # to 0.943 within 2x (seeds 0 and 1), coding at 0.025 wf/s from 0.825 to 0.920; 512 of an
    # 8,192 budget (h100-8-8b) took the interference scenario's TCT mean from 82.4 to 46.7 s,
    # where 128 tokens made TTFT p50 25 s. 3/64 since 2026-12-07 (docs/saga.md, "The full
    # search with a 3/64 decode guard"): 96 tokens of 2,048 took the full capacity search's
    # saga from 0.0875 to 0.095 wf/s on coding and from 0.004375 to 0.005 on Claude Code, the
    # +guard baselines (which take this share) one step each, the interference scenario's
    # SLO attainment staying 100 %. 7/128 from 2 decoding calls since 2026-12-07 (docs/saga.md,
    # "A guard by replica state" and "The full search with a 7/128 guard from 2 decodes"):
    # 112 tokens of 2,048 while 2 or more decode passed the full search's next rates (coding
    # 0.0975: 0.881 -> 0.910; Claude Code 0.00525: 0.898 -> 0.921) and lost at no rate checked
    # (interference SLO attainment 100 %, its TCT mean 40.7 -> 33.3 s).
    decode_guard_share: float | None = Field(
        0.0546875,
        gt=0.0,
        le=1.0,
        description="The decode guard (saga/chunking.py): while decode_guard_decodes or more "
        "calls on a replica are decoding, its step computes at most this share of the "
        "engine's step token budget (max_num_batched_tokens) in prompt tokens: each decode "
        "in a batch waits for the step's prefill chunks, so fewer prompt tokens a step keep "
        "decodes fast beside long prefills. A share, not a count: an engine's budget is sized "
        "to its GPU and model. None: the engine's step budget alone.",
    )
    decode_guard_decodes: int = Field(
        2,
        ge=1,
        description="Decoding calls on a replica from which the decode guard applies.",
    )
    decode_guard_backlog: int | None = Field(
        None,
        ge=1,
        description="Calls waiting in a replica's queue from which the decode guard takes "
        "decode_guard_backlog_share instead of decode_guard_share. None: the queue does "
        "not change the guard.",
    )
    decode_guard_backlog_share: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="The decode guard's share while decode_guard_backlog or more calls wait "
        "on the replica. None: no guard then (the step's whole budget).",
    )
    decode_guard_per_decode: bool = Field(
        False,
        description="Scale the decode guard's tokens by decode_guard_decodes over the calls "
        "decoding (at least a block): the more decodes wait out a step, the smaller its "
        "prefill.",
    )
    preempt_gap: float | None = Field(
        30.0,
        gt=0.0,
        description="Fair-share preemption: on a full replica (every sequence slot taken, or "
        "no blocks for the next call), the last running call is preempted for the first "
        "waiting one when the waiting call's tenant is below the running call's tenant by "
        "more than this many seconds of normalized service (estimated GPU seconds over "
        "weight). None: never preempt for fairness.",
    )
    max_fair_preemptions: int = Field(
        1,
        ge=0,
        description="A call already preempted this many times (for memory or fairness) is "
        "not preempted for fairness again: each time its KV goes back to the cache and may "
        "have to be recomputed.",
    )
    gittins_window: int = Field(
        256,
        ge=1,
        description="queue_order gittins(_heavy_tailed): the last this many session "
        "lengths (work received, learned when the gateway sees a session end) of each agent "
        "type form the distribution its rank is computed on.",
    )
    gittins_min_sessions: int = Field(
        16,
        ge=1,
        description="queue_order gittins(_heavy_tailed): until this many sessions of an "
        "agent type were seen to end, and for a session longer than every one in the window, "
        "its calls are ordered by expected remaining work plus their own service (as "
        "remaining).",
    )
    # ---- SLO admission --------------------------------------------------------------
    defer_best_effort_at: float = Field(
        0.5,
        gt=0.0,
        description="Defer best-effort workflows when the predicted slowdown of interactive "
        "work reaches this share of the tightest interactive SLO. The prediction is a mean, "
        "and the short workflows in its tail miss first: 0.8 let 1-2 % of interactive "
        "workflows miss under a flood, 0.5 none (interference scenario, 3 seeds).",
    )
    retry_after: float = Field(2.0, gt=0.0, description="Seconds before a deferred retry.")
    max_queue: float = Field(
        30.0,
        ge=0.0,
        description="Seconds an interactive workflow may wait for admission before it is "
        "rejected with a reason.",
    )
    max_defer_best_effort: float = Field(
        600.0,
        ge=0.0,
        description="Seconds a best-effort workflow may be deferred; then it is admitted, "
        "so deferral never starves it.",
    )
    # 1.1, not 1.0: the working set counts each workflow's whole context, so a system
    # prompt shared by many workflows is counted once per workflow though the prefix cache
    # holds it once. Measured (docs/saga.md, Memory gate): 1.1 beat 1.0 on the real Claude
    # Code sessions (3 seeds), at 120 % load and at peak throughput; 1.4 thrashed.
    memory_budget: float = Field(
        1.1,
        gt=0.0,
        description="Working set of admitted workflows, as a multiple of the cluster's GPU "
        "KV capacity in tokens, beyond which new workflows wait at the door.",
    )
    # 0.25 (docs/saga.md, "The gate under vLLM's admission rule"): 0 queued short sessions
    # behind idle ones whose KV was long offloaded; 0.5 and 1.0 let too much in at 3x load.
    gate_host_share: float = Field(
        0.25,
        ge=0.0,
        description="Share of the host (CPU) KV tier counted beside the GPU KV in the memory "
        "gate's limit: a workflow in its tool gap may wait in the host tier and come back by "
        "a reload instead of a recompute. 0: the GPU KV only (the gate before 2026-12-05).",
    )
    # True (docs/saga.md, "Shared prefixes counted once"): on the quick capacity case's coding
    # agents, whose 15k-token system prompt was about a third of each workflow's count, the
    # gate held back work that memory had room for.
    gate_shared_once: bool = Field(
        True,
        description="Count a shared prompt prefix (an agent's system prompt and tool "
        "schemas: the simulator's `s:` runs, the gateway's block hashes sent by several "
        "workflows) once in the memory gate's working set, as the prefix cache holds it, "
        "instead of once per workflow that uses it. False: once per workflow (the gate "
        "before 2026-12-06).",
    )
    # "next" (docs/saga.md, "Growth in the working set"): on the real memory-bound vLLM case
    # the gate admitted on current contexts a set that outgrew the KV a call later; "rest"
    # helped there more but held long Claude Code sessions at the door (their remaining
    # growth is most of a window), "next" left those unchanged.
    gate_growth: Literal["none", "next", "rest"] = Field(
        "next",
        description="Expected context growth the memory gate counts beside each admitted "
        "workflow's current context (its call's prompt and output): none; next, the growth "
        "to its next call (the Agent Execution Graph's mean prompt growth at its node, at "
        "most its expected remaining tokens); rest, its expected remaining tokens over the "
        "rest of its run. An agent's context grows call by call, so a gate counting current "
        "contexts alone admits a set that outgrows the KV a call later.",
    )
    gate_work_conserving: bool = Field(
        False,
        description="Admit the head of the memory gate's queue past the limit while some "
        "replica has no call waiting and free KV for its expected context: the engine's "
        "own admission (vLLM's whole-prompt check) then waits instead of thrashing, so "
        "holding work at the door would only leave memory idle.",
    )
    # Off (docs/saga.md, "Decode, memory and the queues"): 2.0 with fit_first_wait 60 lifted
    # the share within 2x near the coding capacity on both seeds, but not the capacity.
    gate_saturation_waiting: float | None = Field(
        None, gt=0.0,
        description="The memory gate also holds new workflows while the calls waiting in "
        "the engines' queues (vLLM's num_requests_waiting) average this many or more per up "
        "replica: the working set may fit the budget while running contexts fill the KV. "
        "An empty cluster still admits. None: the working set alone decides.",
    )
    # 300 s since 2026-12-06 (docs/saga.md, "Claude Code at full size"): on the full capacity
    # case's Claude Code sessions it met 2x for 0.908 against 0.897 at 0.00425 wf/s and 0.865
    # against 0.830 at 0.005 (seeds 0 and 1), quick coding at 0.0275 0.819 against 0.802; the
    # quick Claude Code probe, full coding at 0.08 and the quick interference run identical.
    gate_lifo_after: float | None = Field(
        300.0, ge=0.0,
        description="Adaptive LIFO at the memory gate: once the first best-effort workflow "
        "in the gate's queue has waited this many seconds, admit the newest queued one "
        "first, so an overload burst costs a few workflows the whole wait instead of every "
        "workflow a share of it. None: first come first served.",
    )
    gate_cold_start: int = Field(
        4,
        ge=1,
        description="Until a first call of an agent type has been seen, the memory gate "
        "lets at most this many of its workflows in unplaced: a burst of an unknown agent "
        "is not admitted whole on the prior context.",
    )
    prior_context_tokens: float = Field(
        20_000.0,
        gt=0.0,
        description="Context a workflow is assumed to bring before its agent type's first "
        "call has been seen.",
    )
    slowdown_halflife: float = Field(
        30.0,
        gt=0.0,
        description="Half-life in seconds of the moving average of observed call slowdowns.",
    )
    eviction_by_elapsed_tool_time: bool = Field(
        False,
        description="Rank a workflow in a tool by the tool time still expected given the "
        "time it has already run (the graph's gap, E[gap - elapsed | gap > elapsed]), not "
        "by the return predicted when its call finished (its mean gap), which, once past, "
        "keeps an overdue workflow's KV first although heavy-tailed tool times make it "
        "likely to stay out long. Off by default (docs/baselines.md section 7).",
    )

    @model_validator(mode="after")
    def _weights_positive(self) -> SagaConfig:
        bad = {t: w for t, w in self.tenant_weights.items() if not w > 0}
        if bad:
            raise ValueError(f"tenant weights must be > 0: {bad}")
        return self

    @model_validator(mode="after")
    def _dependents_need_their_setting(self) -> SagaConfig:
        # else a silent no-op: a field set away from its default where the setting it acts
        # through is off would be accepted and change nothing (an ablation that measures
        # nothing). Defaults are left alone: an ablation switches one mechanism off whole.
        for name, needs, holds in DEPENDENT_FIELDS:
            value = getattr(self, name)
            if value != type(self).model_fields[name].default and not holds(self):
                raise ValueError(f"{name} needs {needs}: {name} = {value!r} does nothing "
                                 f"without it")
        return self

    def weight(self, tenant: str) -> float:
        return self.tenant_weights.get(tenant, 1.0)


def _guard_share(config: SagaConfig) -> bool:
    """Some share of the decode guard can apply: its own, or the backlog's with a backlog."""
    return config.decode_guard_share is not None or (
        config.decode_guard_backlog is not None
        and config.decode_guard_backlog_share is not None)


#: The fields that act only through another setting (checked in code: chunking.py,
#: placement.py, policy.py, ends.py, admission.py): the field, what it needs (named in the
#: error), and whether a configuration has it.
DEPENDENT_FIELDS: tuple[tuple[str, str, Callable[[SagaConfig], bool]], ...] = (
    ("pin_host_copy", "pin_with_host = true (pins over a host tier, which it copies "
     "through)", lambda c: c.pin_with_host),
    ("decode_guard_backlog_share", "decode_guard_backlog set (the queue length from which "
     "it applies)", lambda c: c.decode_guard_backlog is not None),
    ("decode_guard_backlog", "decode_guard_share or decode_guard_backlog_share set (a guard "
     "for the backlog to change)",
     lambda c: c.decode_guard_share is not None or c.decode_guard_backlog_share is not None),
    ("decode_guard_decodes", "a decode guard (decode_guard_share, or decode_guard_backlog "
     "with decode_guard_backlog_share)", _guard_share),
    ("decode_guard_per_decode", "a decode guard (decode_guard_share, or decode_guard_backlog "
     "with decode_guard_backlog_share)", _guard_share),
    *((name, "steal = true (steals)", lambda c: c.steal)
      for name in ("steal_margin", "steal_min_gain", "steal_curse", "steal_imposed",
                   "steal_noise_window")),
    ("steal_noise_window", "steal_curse = true (the spread it averages)",
     lambda c: c.steal_curse),
    ("slot_fit_slack", "slot_fit = true", lambda c: c.slot_fit),
    *((name, "afs = true (Agent Fair Share)", lambda c: c.afs)
      for name in ("queue_order", "fit_first_wait", "warm_first_wait", "preempt_gap",
                   "max_fair_preemptions")),
    ("max_fair_preemptions", "preempt_gap set (fair-share preemption)",
     lambda c: c.preempt_gap is not None),
    *((name, 'queue_order = "gittins" or "gittins_heavy_tailed"',
       lambda c: c.queue_order in GITTINS_ORDERS)
      for name in ("gittins_window", "gittins_min_sessions")),
    *((name, "predict_end = true (predicted ends)", lambda c: c.predict_end)
      for name in ("end_confidence", "gate_end_min_ends")),
    *((name, "admission = true (SLO admission)", lambda c: c.admission)
      for name in ("defer_best_effort_at", "max_queue", "max_defer_best_effort")),
)
