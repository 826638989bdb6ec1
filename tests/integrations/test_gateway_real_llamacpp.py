"""The openai client through the gateway to two real llama.cpp servers (skips without them).

A slot per workflow (``id_slot``, ``cache_prompt``): a workflow's next call reuses its slot's
KV. Retention ``offload`` saves the slot; when the slot has gone to other workflows, the
workflow's next call restores it first and reuses the restored KV; ``drop`` erases it.
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator

import openai
import pytest

from saga.engine.replica import Replica, Request
from saga.gateway.backends import LlamaCppBackend
from saga.gateway.config import GatewayConfig
from saga.integrations.replay import GatewayThread
from saga.sched.decisions import Retention
from saga.sched.registry import register
from saga.sched.vllm import VLLMAffinity

pytestmark = [pytest.mark.engines, pytest.mark.timeout(600)]

TEXT = "".join(f"line {i}: grep found a match in lib/part_{i}.c; " for i in range(60))


class OffloadAlways(VLLMAffinity):
    """Affinity placement; every finished call's KV is offloaded (the last one dropped)."""

    name = "test-real-offload"

    def retention(self, replica: Replica, request: Request, now: float) -> Retention:
        info = request.info
        return Retention("drop" if info is not None and info.ends_workflow else "offload")


register(OffloadAlways.name, OffloadAlways)


@pytest.fixture(scope="module")
def gateway(llama_pair: list[str]) -> Iterator[GatewayThread]:
    config = GatewayConfig.model_validate({
        "policy": OffloadAlways.name, "cluster": "cpu-tiny", "served_models": ["tiny-llama"],
        "backends": [{"url": u, "kind": "llamacpp", "slots": 2, "max_concurrency": 2,
                      "restore_kept": True}
                     for u in llama_pair],
    })
    with GatewayThread(config) as gw:
        yield gw


def _call(gw: GatewayThread, workflow: str, text: str, end: bool = False) -> tuple[int, int]:
    """One chat call; returns (backend index, prompt tokens llama.cpp found cached)."""
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", timeout=300,
                           max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="tiny-llama", messages=[{"role": "user", "content": text}], max_tokens=4,
        extra_headers={"x-saga-workflow": workflow, "x-saga-end": str(end).lower()},
    )
    reply = raw.parse()
    assert reply.usage is not None
    details = reply.usage.prompt_tokens_details
    cached = details.cached_tokens if details is not None else 0
    return int(raw.headers["x-saga-backend"]), cached or 0


def _backend(gw: GatewayThread, index: int) -> LlamaCppBackend:
    backend = gw.gateway.backends[index]
    assert isinstance(backend, LlamaCppBackend)
    return backend


def _wait(predicate: object, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_slot_per_workflow_and_its_kv_reused(gateway: GatewayThread) -> None:
    placed: dict[str, int] = {}
    for wf in ("s-a", "s-b"):
        placed[wf], cached = _call(gateway, wf, f"{wf} {TEXT}")
        assert cached == 0
    for wf in ("s-a", "s-b"):
        index, cached = _call(gateway, wf, f"{wf} {TEXT} and then?")
        assert index == placed[wf]
        assert cached > 200  # its own slot kept its prompt
    by_backend: dict[int, list[int | None]] = {}
    for wf, index in placed.items():
        by_backend.setdefault(index, []).append(_backend(gateway, index).slot_of(f"default/{wf}"))
    for slots in by_backend.values():
        assert None not in slots and len(set(slots)) == len(slots)


def test_offload_saves_and_the_next_call_restores(gateway: GatewayThread) -> None:
    saved = [_backend(gateway, i).actions["save"] for i in range(2)]
    home, _ = _call(gateway, "o-main", f"o-main {TEXT}")
    backend = _backend(gateway, home)
    # the save is recorded as its step starts; wait for the server to have done it
    _wait(lambda: "default/o-main" in backend._saved and backend.actions["save"] > saved[home])
    restores = backend.actions["restore"]
    # other workflows take both of that replica's slots
    taken = 0
    for k in range(20):
        index, _ = _call(gateway, f"o-other-{k}", f"other {k} " + TEXT[:500])
        taken += index == home
        if backend.slot_of("default/o-main") is None:
            break
    assert backend.slot_of("default/o-main") is None, "the slot was never taken"
    index, cached = _call(gateway, "o-main", f"o-main {TEXT} more", end=True)
    assert index == home
    assert backend.actions["restore"] == restores + 1
    assert cached > 200  # the restored KV served the prompt's prefix
    # the last call's drop erases the slot and forgets the workflow
    # the slot is forgotten before the erase request returns: wait for the erase itself
    _wait(lambda: backend.actions["erase"] >= 1)
    assert backend.slot_of("default/o-main") is None


def test_a_slot_purged_unseen_is_restored_from_its_save(gateway: GatewayThread) -> None:
    # the server clears an idle slot without telling the gateway (a purge; here an erase
    # sent past the gateway): the workflow's fresh save goes back in before its next call
    home, _ = _call(gateway, "p-main", f"p-main {TEXT}")
    backend = _backend(gateway, home)
    _wait(lambda: "default/p-main" in backend._fresh and not any(backend._saving))
    slot = backend.slot_of("default/p-main")
    assert slot is not None
    erase = urllib.request.Request(f"{backend.config.url}/slots/{slot}?action=erase",
                                   data=b"{}", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(erase, timeout=60) as answer:
        assert answer.status == 200
    kept, restores = backend.kept_restores, backend.actions["restore"]
    index, cached = _call(gateway, "p-main", f"p-main {TEXT} more", end=True)
    assert index == home
    assert backend.kept_restores == kept + 1 and backend.actions["restore"] == restores + 1
    assert cached > 200  # the restored KV served the prompt's prefix, not a recompute
