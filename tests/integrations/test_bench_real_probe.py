"""`saga bench real`'s calibration probe (saga.bench.probe) against a made-up engine: the
fit it gives, where its traffic goes (never into a policy's run), the summary's keys."""

from __future__ import annotations

import contextlib
import math
import threading
from pathlib import Path
from typing import Any

import pytest

from saga.bench.probe import ProbeSettings, fit_record, host_contention, probe
from saga.bench.real import RealBench, ranking, run_real, summarize
from saga.engine.costmodel import DEFAULT_EFFICIENCY, CostModel
from saga.engine.hardware import get_gpu, get_model
from saga.engine.speedfit import scaled

BASE = DEFAULT_EFFICIENCY["cpu-tiny"]
CHUNK = 4096
#: the made-up engines' speed over cpu-tiny: (prefill, decode) alone and all busy
SOLO, TOGETHER = (0.8, 0.7), (1.25, 1.12)


class FakeEngines:
    """Replicas that answer at once with the cost model's prefill and decode times at SOLO
    scales (calls from the probe's own thread) or TOGETHER scales (from the threads of
    its all-at-once rounds), advancing a clock by them (the probe's cost); every call and
    reset is logged in order."""

    def __init__(self, chunk: int = CHUNK) -> None:
        self.chunk = chunk
        self.log: list[tuple[Any, ...]] = []
        self.main = threading.get_ident()
        self.local = threading.local()
        self.lock = threading.Lock()

    def clock(self) -> float:
        return getattr(self.local, "now", 0.0)

    def call(self, url: str, prompt: list[int], max_tokens: int) -> tuple[float, float]:
        p, d = SOLO if threading.get_ident() == self.main else TOGETHER
        cost = CostModel(get_model("tiny-llama"), get_gpu("cpu-tiny"), 1, scaled(BASE, p, d))
        n = len(prompt)
        prefill = cost.prefill_time(n, 0, chunk=self.chunk)
        decode = cost.decode_steps_time(1, n + 1, max_tokens - 1)
        self.local.now = self.clock() + prefill + decode
        with self.lock:
            self.log.append(("call", url, n, max_tokens))
        return prefill, decode

    def reset(self, url: str) -> None:
        with self.lock:
            self.log.append(("reset", url))


def test_the_probe_fits_each_set_of_points_and_resets_around_its_traffic() -> None:
    fake = FakeEngines()
    settings = ProbeSettings(repeats=2)
    probed = probe(["a", "b"], fake.call, fake.reset, settings, clock=fake.clock)
    assert fake.log[:2] == [("reset", "a"), ("reset", "b")]
    assert fake.log[-2:] == [("reset", "a"), ("reset", "b")]
    calls = [e for e in fake.log if e[0] == "call"]
    # per replica: a warm-up, then per repeat alone and together: 3 prefills + a decode run
    assert len(calls) == 2 * (1 + 2 * 2 * 4)
    assert sorted({c[2:] for c in calls}) == [(256, 2), (512, 1), (1024, 48), (1536, 1),
                                              (3072, 1)]
    # 3 prefills and the decode run's prefill, per replica and repeat
    assert len(probed["solo"]["prefill"]) == len(probed["together"]["prefill"]) == 2 * 2 * 4
    assert len(probed["solo"]["decode"]) == 2 * 2
    record = fit_record(probed, BASE, CHUNK)
    for key, (p, d) in (("solo", SOLO), ("together", TOGETHER)):
        assert record[key]["prefill_scale"] == pytest.approx(p, rel=1e-9)
        assert record[key]["decode_scale"] == pytest.approx(d, rel=1e-9)
    assert record["preset"]["prefill_scale"] == pytest.approx(math.sqrt(0.8 * 1.25))
    assert record["preset"]["decode_scale"] == pytest.approx(math.sqrt(0.7 * 1.12))
    assert record["preset"]["efficiency"]["mfu"] == pytest.approx(
        BASE.mfu / math.sqrt(0.8 * 1.25))
    assert record["probe_seconds"] == pytest.approx(probed["seconds"])
    assert probed["seconds"] > 0
    # together over alone: x1.5625 prefill, x1.6 decode: the host contention between them
    assert record["contention"] == pytest.approx(math.sqrt(1.25 / 0.8 * 1.12 / 0.7) - 1)


def test_host_contention_is_the_together_over_alone_slowdown_never_below_zero() -> None:
    def record(solo: tuple[float, float], together: tuple[float, float]) -> dict[str, Any]:
        return {k: {"prefill_scale": p, "decode_scale": d}
                for k, (p, d) in (("solo", solo), ("together", together))}

    assert host_contention(record((0.8, 0.8), (1.0, 1.0))) == pytest.approx(0.25)
    assert host_contention(record((1.0, 1.0), (1.44, 1.0))) == pytest.approx(0.2)
    assert host_contention(record((1.0, 1.0), (0.9, 1.0))) == 0.0  # faster together: noise


def test_the_simulator_runs_the_engines_alone_slowed_by_the_presets_contention() -> None:
    from saga.bench.real import calibrated_cluster
    from saga.engine.cluster import get_cluster

    fake = FakeEngines()
    record = fit_record(probe(["a", "b"], fake.call, fake.reset, clock=fake.clock), BASE, CHUNK)
    spec = RealBench()
    assert spec.contention == "preset"
    cluster = get_cluster(calibrated_cluster(spec, record))
    assert cluster.efficiency is not None
    assert cluster.efficiency.model_dump() == record["solo"]["efficiency"]
    # the probe measured x1.56 prefill and x1.6 decode together; the simulator takes
    # cpu-tiny's contention (0.29), not the probe's (it lacks the runs' serving stack)
    assert record["contention"] == pytest.approx(math.sqrt(1.25 / 0.8 * 1.12 / 0.7) - 1)
    assert cluster.host_contention == get_cluster("cpu-tiny").host_contention == 0.29
    assert "-hc" not in cluster.name
    assert cluster.engine.kv_capacity_blocks == spec.kv_blocks - 1


def test_the_probes_contention_runs_when_asked() -> None:
    from saga.bench.real import calibrated_cluster
    from saga.engine.cluster import get_cluster

    fake = FakeEngines()
    record = fit_record(probe(["a", "b"], fake.call, fake.reset, clock=fake.clock), BASE, CHUNK)
    spec = RealBench(contention="probe")
    cluster = get_cluster(calibrated_cluster(spec, record))
    assert cluster.efficiency is not None
    assert cluster.efficiency.model_dump() == record["solo"]["efficiency"]
    assert cluster.host_contention == round(record["contention"], 4)
    assert cluster.name.endswith(f"-hc{round(record['contention'], 4):g}")
    # a record from before the contention was recorded: the same, from its two fits
    old = {k: v for k, v in record.items() if k != "contention"}
    assert calibrated_cluster(spec, old) == cluster.name


def _run(case: str, policy: str, tct: float) -> dict[str, Any]:
    return {"tct": {"s000": tct}, "failed": [], "calls": 4, "errors": 0, "wall": 5.0,
            "load": [1.0, 1.0], "prefix_queries": 100.0, "prefix_hits": 20.0,
            "retentions": {}, "prefix_lookups": [], "backends": [0], "deferred": {}}


def _stub_bench(
    monkeypatch: pytest.MonkeyPatch, fake: FakeEngines, case: str,
) -> list[str]:
    """run_real's engines and runs stubbed (the probe's calls answered by ``fake``, which
    logs each probe's start, its calls and resets, and each run); returns the clusters the
    runs were given, in order."""
    import saga.bench.real as real

    if not real.trace_path("miniswe").exists():
        pytest.skip("needs the LMCache agent traces (../shared/traces)")
    clusters: list[str] = []

    @contextlib.contextmanager
    def engines(*_: object) -> Any:
        out = real.Engines()
        out.sets = {"saga": [("saga0", None), ("saga1", None)],
                    "stock": [("stock0", None), ("stock1", None)]}
        yield out

    def run_once(_spec: object, replicas: Any, policy: str, _wfs: object, _salt: str,
                 cluster: str) -> dict[str, Any]:
        fake.log.append(("run", policy))
        clusters.append(cluster)
        return _run(case, policy, 10.0 if policy == "saga" else 20.0)

    original = real.calibrate_engines

    def calibrate(spec: RealBench, urls: Any, *, seed: int) -> Any:
        fake.log.append(("probe", str(seed)))
        return original(spec, urls, seed=seed, clock=fake.clock)

    monkeypatch.setattr(real, "start_engines", engines)
    monkeypatch.setattr(real, "_run_once", run_once)
    monkeypatch.setattr(real, "_vllm_call", fake.call)
    monkeypatch.setattr(real, "reset_prefix_cache", fake.reset)
    monkeypatch.setattr(real, "calibrate_engines", calibrate)
    return clusters


def test_the_repetitions_only_a_case_of_its_own_count_runs_take_no_probe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = FakeEngines()
    clusters = _stub_bench(monkeypatch, fake, "light")
    quick = RealBench(policies=("saga", "vllm-affinity")).quick()
    light = quick.cases[1].model_copy(update={"repetitions": 3})
    spec = quick.model_copy(update={"cases": (quick.cases[0], light)})
    summary = run_real(tmp_path, bench=spec, simulate=False, progress=lambda _: None)

    steps = [e for e in fake.log if e[0] in ("probe", "run")]
    assert steps == [("probe", "0"), *[("run", p) for p in ("saga", "vllm-affinity") * 2],
                     ("run", "vllm-affinity"), ("run", "saga"),
                     ("run", "saga"), ("run", "vllm-affinity"), ("probe", "3")]
    # each run simulated at the speed of the probe before it: the only one
    assert len(set(clusters)) == 1 and summary["sim_clusters"] == [clusters[0]] * 3
    assert len(summary["calibration"]["repetitions"]) == 1


def test_run_real_probes_before_each_repetition_and_keeps_it_out_of_their_figures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = FakeEngines()
    clusters = _stub_bench(monkeypatch, fake, "memory")
    spec = RealBench(policies=("saga", "vllm-affinity"), repetitions=2).quick()
    spec = spec.model_copy(update={"cases": spec.cases[:1], "repetitions": 2})
    summary = run_real(tmp_path, bench=spec, simulate=False, progress=lambda _: None)

    # the probes: the stock replicas, before each repetition and after the last run, the
    # caches reset after each; none between two runs of one repetition
    kinds = [e[0] for e in fake.log]
    runs = [i for i, k in enumerate(kinds) if k == "run"]
    assert len(runs) == 4
    assert kinds[runs[0]:runs[1] + 1] == ["run", "run"]
    assert kinds[runs[2]:runs[3] + 1] == ["run", "run"]
    assert "call" in kinds[:runs[0]] and "call" in kinds[runs[1]:runs[2]]
    assert "call" in kinds[runs[3]:]  # the end probe
    for i in (runs[0], runs[2]):
        assert fake.log[i - 2:i] == [("reset", "stock0"), ("reset", "stock1")]
    assert {e[1] for e in fake.log if e[0] == "call"} == {"stock0", "stock1"}
    # the runs' figures are the runs' own: as summarized without any probe
    bare = summarize(spec, [
        {**_run("memory", p, 10.0 if p == "saga" else 20.0), "case": "memory", "policy": p,
         "repetition": r} for r, p in ((0, "saga"), (0, "vllm-affinity"),
                                       (1, "vllm-affinity"), (1, "saga"))],
        {}, quick=True, wall=1.0)
    assert summary["cases"] == bare["cases"]
    assert summary["speedup"] == bare["speedup"]
    # each repetition's preset: cpu-tiny with the engines' KV and its probe's speed,
    # gateways and simulator alike (the same made-up engines: the same preset)
    assert set(clusters) == set(summary["sim_clusters"])
    assert len(summary["sim_clusters"]) == 2
    assert summary["sim_clusters"][0].startswith(f"cpu-tiny-kv{spec.kv_blocks - 1}-fit")
    from saga.engine.cluster import get_cluster

    c = summary["calibration"]
    assert set(c) == {"repetitions", "end", "drift", "probe_seconds", "spread"}
    assert len(c["repetitions"]) == 2
    first = c["repetitions"][0]
    assert set(first) == {"solo", "together", "preset", "probe_seconds", "points",
                          "contention"}
    simulated = get_cluster(summary["sim_clusters"][0])
    efficiency = simulated.efficiency
    assert efficiency is not None and efficiency.model_dump() == first["solo"]["efficiency"]
    assert first["contention"] > 0  # recorded, not simulated: cpu-tiny's runs
    assert simulated.host_contention == get_cluster("cpu-tiny").host_contention
    assert first["solo"]["prefill_scale"] == pytest.approx(SOLO[0], rel=1e-9)
    assert first["together"]["decode_scale"] == pytest.approx(TOGETHER[1], rel=1e-9)
    assert c["probe_seconds"] == pytest.approx(sum(r["probe_seconds"] for r in c["repetitions"]))
    assert c["probe_seconds"] > 0
    # the same engines at the end: no drift
    assert c["drift"] == pytest.approx({f"{w}_{s}": 1.0 for w in ("solo", "together", "preset")
                                        for s in ("prefill", "decode")})
    assert c["spread"] == pytest.approx({"prefill": 1.0, "decode": 1.0})
    assert "Calibration probes" in (tmp_path / "real.md").read_text()


def test_without_calibration_the_fixed_preset_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from saga.bench.real import calibrate_engines, calibrated_cluster

    spec = RealBench(calibrate=False)
    assert calibrate_engines(spec, ["nowhere"], seed=0) is None
    assert calibrated_cluster(spec, None) == f"cpu-tiny-kv{spec.kv_blocks - 1}"


def test_summary_gives_the_simulators_error_and_ranking_per_case() -> None:
    spec = RealBench(policies=("saga", "vllm-affinity", "llm-d"), repetitions=1)
    runs = [{**_run(case, p, t), "case": case, "policy": p, "repetition": 0}
            for case, tcts in (("memory", {"saga": 10.0, "vllm-affinity": 20.0, "llm-d": 12.0}),
                               ("light", {"saga": 2.0, "vllm-affinity": 1.6, "llm-d": 1.5}))
            for p, t in tcts.items()]
    sim = {"memory": {"saga": 9.0, "vllm-affinity": 25.0, "llm-d": 12.6},
           "light": {"saga": 2.2, "vllm-affinity": 2.0, "llm-d": 2.1}}
    s = summarize(spec, runs, sim, quick=False, wall=1.0, clusters=["cpu-tiny-kv80"])
    assert s["sim_error"] == pytest.approx({"saga": -0.1, "vllm-affinity": 0.25, "llm-d": 0.05})
    assert s["sim_error_light"] == pytest.approx({"saga": 0.1, "vllm-affinity": 0.25,
                                                  "llm-d": 0.4})
    memory = s["sim_ranking"]["memory"]
    assert {k: memory[k] for k in ("real", "sim", "same")} == {
        "real": ["saga", "llm-d", "vllm-affinity"], "sim": ["saga", "llm-d", "vllm-affinity"],
        "same": True}
    # one workflow a run: every interval is the one ratio, so every pair is separated
    assert [(x["faster"], x["slower"]) for x in memory["separated"]] == [
        ("saga", "vllm-affinity"), ("saga", "llm-d"), ("llm-d", "vllm-affinity")]
    assert memory["ties"] == [] and memory["separated_same"] is True
    assert s["sim_ranking"]["light"]["same"] is False
    assert s["sim_clusters"] == ["cpu-tiny-kv80"] and "calibration" not in s
    assert ranking({"a": 1.0, "b": 2.0}, {"a": 3.0, "b": 1.0}) == {
        "real": ["a", "b"], "sim": ["b", "a"], "same": False}


def test_the_llama_cpp_probe_reads_the_servers_timings_on_fresh_slots(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import saga.bench.real_llama as real_llama
    from saga.integrations import engines as eng

    fake = FakeEngines(chunk=512)  # llama.cpp's micro-batch

    def completion(url: str, prompt: list[int], n_predict: int, *, cache_prompt: bool,
                   ) -> dict[str, Any]:
        assert cache_prompt is False
        prefill, decode = fake.call(url, prompt, n_predict)
        return {"timings": {"prompt_ms": prefill * 1e3, "predicted_ms": decode * 1e3}}

    monkeypatch.setattr(eng, "llama_completion", completion)
    monkeypatch.setattr(real_llama, "erase_slots",
                        lambda url, slots: fake.log.append(("reset", url, slots)))
    spec = RealBench()
    record = real_llama.calibrate_llama(spec, ["l0", "l1"], seed=0)
    assert record is not None
    assert fake.log[:2] == [("reset", "l0", spec.llama.slots), ("reset", "l1", spec.llama.slots)]
    assert fake.log[-1] == ("reset", "l1", spec.llama.slots)
    assert record["solo"]["prefill_scale"] == pytest.approx(SOLO[0], rel=1e-9)
    assert record["together"]["decode_scale"] == pytest.approx(TOGETHER[1], rel=1e-9)
    assert real_llama.calibrate_llama(RealBench(calibrate=False), ["l0"], seed=0) is None


def test_the_record_says_which_contention_the_simulator_ran() -> None:
    from saga.bench.real import render_markdown

    spec = RealBench(policies=("saga", "vllm-affinity"), repetitions=1)
    runs = [{**_run("memory", p, t), "case": "memory", "policy": p, "repetition": 0}
            for p, t in (("saga", 10.0), ("vllm-affinity", 20.0))]
    sim = {"memory": {"saga": 9.0, "vllm-affinity": 25.0}}

    def simulator_line(clusters: list[str]) -> str:
        text = render_markdown(summarize(spec, runs, sim, quick=False, wall=1.0,
                                         clusters=clusters))
        return next(x for x in text.splitlines() if x.startswith("Simulator ("))

    assert ("each repetition at the engines' speed alone its calibration probe measured, "
            "each step slowed while the other replica is busy by cpu-tiny's host contention"
            ", 0.29) error") in simulator_line(["cpu-tiny-kv80-fit0123abcd"])
    assert ("slowed while the other replica is busy by the contention the probe measured) "
            "error") in simulator_line(["cpu-tiny-kv80-fit0123abcd-hc0.05"])
    assert "(cpu-tiny, same KV, the fixed preset) error" in simulator_line(["cpu-tiny-kv80"])


def _probe_record(prefill: float, decode: float) -> dict[str, Any]:
    """A fitted probe record at these scales over cpu-tiny, alone and (x1.5) together."""
    def row(p: float, d: float) -> dict[str, Any]:
        return {"prefill_scale": p, "decode_scale": d,
                "efficiency": scaled(BASE, p, d).model_dump()}

    record = {"solo": row(prefill, decode), "together": row(1.5 * prefill, 1.5 * decode)}
    return {**record, "contention": host_contention(record)}


def test_each_repetition_is_simulated_midway_between_the_probes_around_it() -> None:
    from saga.bench.real import bracketed, calibrated_cluster
    from saga.engine.cluster import get_cluster

    spec = RealBench()
    a, b, end = _probe_record(1.0, 1.0), _probe_record(4.0, 2.0), _probe_record(1.0, 8.0)
    calibration = {"repetitions": [a, b], "end": end}
    # what the gateways ran: each repetition its probe's; the third (a case's own count)
    # the last probe's
    ran = {0: calibrated_cluster(spec, a), 1: calibrated_cluster(spec, b),
           2: calibrated_cluster(spec, b)}
    simulated = bracketed(spec, calibration, ran)

    def scales(name: str) -> tuple[float, float]:
        efficiency = get_cluster(name).efficiency
        assert efficiency is not None
        return BASE.mfu / efficiency.mfu, efficiency.t_per_seq / BASE.t_per_seq

    # the geometric mean of each scale: a to b, then b to the end for the rest
    assert scales(simulated[0]) == pytest.approx((2.0, math.sqrt(2.0)), rel=1e-9)
    assert scales(simulated[1]) == pytest.approx((2.0, 4.0), rel=1e-9)
    assert simulated[2] == simulated[1]
    assert scales(ran[1]) == pytest.approx((4.0, 2.0), rel=1e-9)  # the gateways' own


def test_without_a_probe_after_it_a_repetition_keeps_its_own_preset() -> None:
    from saga.bench.real import bracketed, calibrated_cluster

    spec = RealBench()
    a, b = _probe_record(1.0, 1.0), _probe_record(4.0, 2.0)
    ran = {0: calibrated_cluster(spec, a), 1: calibrated_cluster(spec, b)}
    assert bracketed(spec, None, ran) == ran
    assert bracketed(spec, {"repetitions": [a, b]}, ran) == ran  # no end probe
    unfitted = {"error": "past the hardware's peak", "probe_seconds": 1.0}
    kept = bracketed(spec, {"repetitions": [a, b], "end": unfitted}, ran)
    assert kept[1] == ran[1] and kept[0] != ran[0]


def test_the_record_says_the_simulator_ran_between_the_probes() -> None:
    from saga.bench.real import render_markdown

    spec = RealBench(policies=("saga", "vllm-affinity"), repetitions=1)
    runs = [{**_run("memory", p, t), "case": "memory", "policy": p, "repetition": 0}
            for p, t in (("saga", 10.0), ("vllm-affinity", 20.0))]
    sim = {"memory": {"saga": 9.0, "vllm-affinity": 25.0}}
    calibration = {"repetitions": [_probe_record(1.0, 1.0)], "end": _probe_record(2.0, 2.0),
                   "bracketed": True, "probe_seconds": 1.0}
    text = render_markdown(summarize(spec, runs, sim, quick=False, wall=1.0,
                                     calibration=calibration,
                                     clusters=["cpu-tiny-kv80-fit0123abcd"]))
    assert ("each repetition at the engines' speed alone midway between the calibration "
            "probes before and after it, each step slowed") in text


def test_the_probes_speeds_and_their_spread_are_each_fitted_probe_in_order() -> None:
    from saga.bench.real import calibrated_cluster, probe_clusters, probe_spread

    spec = RealBench()
    a, b, end = _probe_record(1.0, 1.0), _probe_record(4.0, 2.0), _probe_record(1.0, 8.0)
    unfitted = {"error": "past the hardware's peak", "probe_seconds": 1.0}
    calibration = {"repetitions": [a, unfitted, b, a], "end": end}
    # each fitted probe once, in the order they ran; the unfitted one is left out
    assert probe_clusters(spec, calibration) == [
        calibrated_cluster(spec, a), calibrated_cluster(spec, b), calibrated_cluster(spec, end)]
    # the slowest over the fastest of each scale, over every fitted probe
    assert probe_spread(calibration) == pytest.approx({"prefill": 4.0, "decode": 8.0})
    assert probe_spread({"repetitions": [a, unfitted]}) == {}
    assert probe_spread(None) == {} and probe_clusters(spec, None) == []


def test_the_summary_gives_the_simulators_error_at_the_fastest_and_slowest_probe() -> None:
    from saga.bench.real import render_markdown

    spec = RealBench(policies=("saga", "vllm-affinity"), repetitions=1)
    runs = [{**_run("memory", p, t), "case": "memory", "policy": p, "repetition": 0}
            for p, t in (("saga", 10.0), ("vllm-affinity", 20.0))]
    sim = {"memory": {"saga": 9.0, "vllm-affinity": 25.0}}
    band = {"memory": {"saga": [8.0, 12.0], "vllm-affinity": [19.0, 26.0]}}
    calibration = {"repetitions": [_probe_record(1.0, 1.0)], "end": _probe_record(2.0, 1.5),
                   "bracketed": True, "probe_seconds": 1.0}
    s = summarize(spec, runs, sim, quick=False, wall=1.0, calibration=calibration,
                  clusters=["cpu-tiny-kv80-fit0123abcd"], band=band)
    assert s["sim_band"]["memory"]["saga"] == {"mean_tct": [8.0, 12.0],
                                               "error": pytest.approx([-0.2, 0.2])}
    assert s["sim_band"]["memory"]["vllm-affinity"]["error"] == pytest.approx([-0.05, 0.3])
    assert s["calibration"]["spread"] == pytest.approx({"prefill": 2.0, "decode": 1.5})
    text = render_markdown(s)
    assert ("At each probe's speed in turn (alone, the slowest probe's decode took x1.50 the "
            "fastest's time, its prefill x2.00), the simulator's error spans memory-bound "
            "case: saga -20% to +20%, vllm-affinity -5% to +30%") in text
    # without a band (one probe), no such line and no key
    plain = summarize(spec, runs, sim, quick=False, wall=1.0, clusters=["cpu-tiny-kv80"])
    assert "sim_band" not in plain and "At each probe" not in render_markdown(plain)
