"""Placement: the replica with the least predicted completion time, affinity with stealing.

A call's predicted completion on replica r is

    backlog(r) + reload/prefill of the part of its prompt not cached on r + decode,

where ``backlog`` is the prefill work queued or running there (its tokens priced as
prefills of the queued calls' mean size, ``backlog_price``) plus, when the call's blocks
do not fit beside the memory held and awaited there, the time for running calls to drain.
Session affinity falls out: on the replica holding a workflow's KV the prefill is short.
A workflow leaves its home (work stealing at a tool boundary) only when another
replica beats home by ``steal_margin`` and ``steal_min_gain`` (hysteresis, so
workflows do not flap), each side counting, beside the call's own completion, the delay its
reload and prefill impose on the calls running there (``steal_imposed``): a steal recomputes
the context on a replica whose every running call then waits out that prefill, a cost the
call's own completion does not see. With ``steal_curse`` the margin grows with the
rivals compared and the measured noise of the predictions (steal_noise.py): the best of
many noisy estimates looks better than it is. A new workflow goes to the best replica
among those whose working set (context tokens of the workflows homed there) is within
``colocate_slack`` of the least, so workflows sharing a prefix (an agent's system
prompt) co-locate, within load bounds, and working sets stay balanced.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import lru_cache, partial
from typing import TYPE_CHECKING, Literal, NamedTuple

from saga.sched.saga.config import SagaConfig
from saga.sched.saga.steal_noise import steal_share

if TYPE_CHECKING:
    from saga.engine.kvcache import Run
    from saga.sched.view import CostView, KVView, ReplicaView


#: how placement prices a token of a replica's backlog (SagaConfig.backlog_price)
BacklogPrice = Literal["queue", "fixed"]


class Estimate(NamedTuple):
    """Predicted seconds of one call on one replica (a tuple: placements make many)."""

    replica: int
    backlog: float
    service: float  # reload + prefill + decode
    #: seconds of delay the call's reload and prefill impose on the calls running there
    imposed: float = 0.0
    #: the decode part of ``service`` (its expected output at the replica's step time):
    #: what re-prices the prediction with the output the call produced (steal_noise.py)
    drain: float = 0.0

    @property
    def completion(self) -> float:
        return self.backlog + self.service


class Predictor:
    """Turns replica state into seconds with the cost model."""

    def __init__(
        self, cost: CostView, block_tokens: int, backlog_price: BacklogPrice = "fixed",
    ) -> None:
        self.cost = cost
        self.block_tokens = block_tokens
        self.backlog_price = backlog_price
        # Seconds per prefill token at a typical context, and per decode step of a
        # lone sequence: the units of expected work (and of backlog when it is "fixed").
        chunk, ctx = 8192, 16384
        self.t_token = cost.prefill_time(ctx + chunk, ctx) / chunk
        self.t_decode = cost.decode_steps_time(1, ctx, 1)
        # A placement asks the same few questions of every candidate (a candidate that
        # does not hold the workflow's KV has the same prefill ahead of it): memoized,
        # the cost model runs once per distinct question, not once per candidate.
        self._prefill = lru_cache(maxsize=4096)(cost.prefill_time)
        self._decode_step = lru_cache(maxsize=4096)(cost.decode_steps_time)
        # backlog seconds by (backlog tokens, queued calls): a placement prices the backlog
        # of every candidate, twice when it steals, and the arithmetic took a third of a
        # busy placement at 1,024 replicas (benchmarks/sched_overhead.py); cleared when full
        self._backlog_memo: dict[tuple[int, int], float] = {}

    def prefill(self, prompt: int, cached: int) -> float:
        return float(self._prefill(prompt, min(cached, prompt)))

    def backlog_seconds(self, replica: ReplicaView) -> float:
        """Seconds of the prefill queued or running on ``replica`` (its ``backlog_tokens``),
        priced as :attr:`SagaConfig.backlog_price` says: "queue", per token of a prefill
        as long as the mean prefill ahead per queued call (waiting and running; whole
        blocks) from an empty context; "fixed", at :attr:`t_token`."""
        tokens = replica.backlog_tokens
        if tokens <= 0:
            return 0.0
        if self.backlog_price == "fixed":
            return tokens * self.t_token
        key = (tokens, len(replica.waiting) + len(replica.running))
        memo = self._backlog_memo
        seconds = memo.get(key)
        if seconds is None:
            bt = self.block_tokens
            size = -(-tokens // max(key[1], 1))
            size = -(-size // bt) * bt  # whole blocks: fewer distinct questions to the model
            seconds = tokens * self.prefill(size, 0) / size
            if len(memo) >= 4096:
                memo.clear()
            memo[key] = seconds
        return seconds

    def backlog(self, replica: ReplicaView, only_slo: bool = False) -> float:
        """Seconds of prefill work queued or running on ``replica`` (``only_slo``: of
        calls of interactive workflows only, those with an SLO: counted call by call)."""
        if not only_slo:
            return replica.backlog_tokens * self.t_token
        tokens = 0
        for r in replica.waiting:
            if r.info is not None and r.info.slo is not None:
                tokens += r.prompt_tokens - min(r.computed, r.prompt_tokens)
        for r in replica.running:
            if r.info is not None and r.info.slo is not None:
                tokens += max(0, r.total_tokens - r.computed - 1)
        return tokens * self.t_token

    def estimate_all(
        self,
        replicas: Iterable[ReplicaView],
        runs: Sequence[Run],
        prompt: int,
        output: float,
    ) -> list[Estimate]:
        """The call's estimate on each of ``replicas``: the hot loop of a placement, so
        what does not depend on the replica is computed once and the queues are read as
        the sums each replica keeps (:class:`~saga.engine.replica.QueueTokens`), not call
        by call. Its prefill is :meth:`prefill`'s and its backlog :meth:`backlog_seconds`;
        a call whose blocks do not fit beside what is held and awaited waits
        :func:`_short`."""
        bt = self.block_tokens
        blocks = -(-(prompt + int(output)) // bt)  # the call's blocks, prompt and output
        decode_step, prefill = self._decode_step, self._prefill
        estimates = []
        for replica in replicas:
            kv, running, host = replica.kv, replica.running, replica.host
            cached, reload = kv.match_blocks(runs), 0.0
            if host is not None and host.cached_blocks:  # (an empty tier holds nothing)
                cached, reload = self._host_hit(host, replica.block_bytes, runs, cached)
            context, demand = replica.context_tokens, replica.demand_tokens
            drain = output * decode_step(len(running) + 1, prompt + context, 1)
            hit = cached * bt  # tokens, clamped to the prompt as prefill() does
            load = reload + prefill(prompt, hit if hit < prompt else prompt)
            service = load + drain
            need = blocks - cached
            free = kv.capacity - kv.locked_blocks - kv.anonymous_blocks - demand // bt
            wait = 0.0 if need <= free else _short(need, free, drain)
            wait += self.backlog_seconds(replica)  # 0 on an idle replica
            estimates.append(_estimate((replica.index, wait, service, load * len(running), drain)))
        return estimates

    def _host_hit(
        self, tier: KVView, block_bytes: int, runs: Sequence[Run], gpu: int
    ) -> tuple[int, float]:
        """Blocks of ``runs`` cached on a replica with ``gpu`` of them on its GPU: more if
        its host ``tier`` has more, with the seconds to load those."""
        host = tier.match_blocks(runs)
        if host > gpu:
            return host, self.cost.host_transfer_time((host - gpu) * block_bytes)
        return gpu, 0.0


# Estimate(*fields) without the Python-level __new__ of a NamedTuple (as Estimate._make,
# less its length check): a placement makes one per candidate
_estimate = partial(tuple.__new__, Estimate)


def _short(need: int, free: int, drain: float) -> float:
    """The expected wait for ``need`` blocks when only ``free`` are free (counting the
    blocks the waiting calls still need as taken): the share of the call that does not
    fit times ``drain``, the time for the running calls to finish and give theirs back."""
    return drain * min(1.0, (need - max(free, 0)) / max(need, 1))


def choose(
    predictor: Predictor,
    candidates: Sequence[ReplicaView],
    home: int | None,
    runs: Sequence[Run],
    prompt: int,
    output: float,
    homed: Sequence[float],
    config: SagaConfig,
    sigma: float = 0.0,
) -> Estimate:
    """``pick(predictor.estimate_all(candidates, ...), home, homed, config, share)``, with fewer
    estimates: a call whose workflow has a home among the candidates (almost every call)
    stays there unless another candidate's completion beats home's by the steal
    thresholds, and a lower bound of each candidate's completion, cheaper than its
    estimate, proves for most candidates that it cannot (:func:`_rivals`). Only the
    others are estimated, and picked from with home. The choice is the same estimate,
    bit for bit (tests/sched/test_saga_choose.py compares them): the candidate ``pick``
    ranks first among all either is among those estimated, and ranks first there too, or
    was proven unable to beat home by the thresholds, and then neither can any candidate
    estimated (each completes no sooner), so both ways the call stays home.

    The steal's share is ``steal_margin``, or with ``steal_curse`` :func:`steal_share` of
    it for ``sigma`` (the measured spread of the predictions) and the candidates other
    than home, all of them compared whether estimated or bounded."""
    if home is not None:
        at = next((r for r in candidates if r.index == home), None)
        if at is not None:
            at_home = predictor.estimate_all((at,), runs, prompt, output)[0]
            if not config.steal:
                return at_home
            share = config.steal_margin
            if config.steal_curse:
                share = steal_share(share, sigma, len(candidates) - 1)
            rivals = _rivals(predictor, candidates, at_home, runs, prompt, output, config,
                             share)
            if not rivals:
                return at_home
            estimates = [at_home, *predictor.estimate_all(rivals, runs, prompt, output)]
            return pick(estimates, home, homed, config, share)
    return pick(predictor.estimate_all(candidates, runs, prompt, output), home, homed, config)


def _rivals(
    predictor: Predictor,
    candidates: Sequence[ReplicaView],
    at_home: Estimate,
    runs: Sequence[Run],
    prompt: int,
    output: float,
    config: SagaConfig,
    share: float,
) -> list[ReplicaView]:
    """The candidates other than home whose completion a lower bound cannot prove unable
    to beat home's by what :func:`pick` needs to steal (more than ``share`` of
    home's and more than ``steal_min_gain``).

    A candidate's estimated completion is ``wait + (load + drain)`` (plus ``imposed =
    load x running`` when steals weigh it), each term at least 0, with ``wait >=
    predictor.backlog_seconds(candidate)`` (whichever ``backlog_price``) and ``drain =
    output * decode_step(running + 1, prompt + context, 1) >= output * decode_step(1,
    prompt, 1)`` (a step's time never falls with
    more sequences or more context). Float rounding is monotone, so the same sums of
    the smaller terms are at most the estimate's float, and home's gain over them at
    least its gain over the estimate: a bound that cannot steal proves the estimate
    cannot. The first bound drops ``load`` and takes the lone decode; the second, asked
    only when the first fails, adds the prefill of the part of the prompt the
    candidate's GPU does not hold (``load`` itself when it has no host tier to load
    from; with one, the candidate is a rival), the candidate's own drain and the delay
    it imposes."""
    stay = at_home.backlog + at_home.service  # as pick computes home's completion
    imposed = config.steal_imposed
    if imposed:
        stay = stay + at_home.imposed
    margin, least = share * stay, config.steal_min_gain
    bt, backlog = predictor.block_tokens, predictor.backlog_seconds
    prefill, decode_step = predictor._prefill, predictor._decode_step
    decode = output * decode_step(1, prompt, 1)
    home = at_home.replica
    rivals = []
    for replica in candidates:
        if replica.index == home:
            continue
        wait = backlog(replica)  # the estimate's own backlog term, the same float
        gain = stay - (wait + decode)
        if gain <= margin or gain <= least:
            continue
        host = replica.host
        if host is not None and host.cached_blocks:
            rivals.append(replica)
            continue
        running = len(replica.running)
        hit = replica.kv.match_blocks(runs) * bt
        load = prefill(prompt, hit if hit < prompt else prompt)
        drain = output * decode_step(running + 1, prompt + replica.context_tokens, 1)
        bound = wait + (load + drain)
        if imposed:
            bound = bound + load * running
        gain = stay - bound
        if gain <= margin or gain <= least:
            continue
        rivals.append(replica)
    return rivals


def pick(
    estimates: Sequence[Estimate],
    home: int | None,
    homed: Sequence[float],
    config: SagaConfig,
    share: float | None = None,
) -> Estimate:
    """The estimate of the replica for a call, given its estimate on every up replica
    (the caller wants the choice's service time too).

    A workflow with a home leaves it for the best candidate only when that one's
    completion beats home's by more than ``share`` of home's (``steal_margin`` when
    None; :func:`choose` passes the winner's-curse share, steal_noise.py) and by more
    than ``steal_min_gain`` seconds.

    ``home`` is the replica holding the workflow's KV (None for a new workflow);
    ``homed`` the context tokens of the workflows homed on each replica (their
    working set: they will come back to it).

    Candidates are ranked by (completion, replica): ties go to the lowest index; a new
    workflow's, first to the least working set homed there (a replica whose workflows are
    all in their tools looks as idle as an empty one, but they come back to it: the new
    workflow's prefill would then run beside their calls while the other replica idles).
    The index into ``estimates`` rides along in the ranked tuples, never compared (the
    replicas of a placement are distinct)."""
    completions = [e.backlog + e.service for e in estimates]
    replicas = [e.replica for e in estimates]
    if home is not None and home in replicas:
        at_home = estimates[replicas.index(home)]
        if not config.steal:
            return at_home
        if config.steal_imposed:
            # a steal's recompute stalls the calls running where it goes: weigh it in
            completions = [c + e.imposed for c, e in zip(completions, estimates, strict=True)]
        stay = completions[replicas.index(home)]
        completion, _, best = min(zip(completions, replicas, range(len(estimates)), strict=True))
        gain = stay - completion
        if share is None:
            share = config.steal_margin
        if gain > share * stay and gain > config.steal_min_gain:
            return estimates[best]
        return at_home
    load = [homed[r] for r in replicas]
    bound = min(load) * (1.0 + config.colocate_slack) + config.colocate_abs
    ranked = zip(completions, load, replicas, range(len(estimates)), strict=True)
    *_, best = min(rank for rank in ranked if rank[1] <= bound)
    return estimates[best]
