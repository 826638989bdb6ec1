"""Typed, validated configuration of one engine replica."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class EngineConfig(BaseModel):
    """How one replica batches and stores KV. Defaults follow vLLM v1 online serving."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_num_seqs: int = Field(
        256, ge=1, description="Most sequences in one batch (vLLM `--max-num-seqs`)."
    )
    max_num_batched_tokens: int = Field(
        8192,
        ge=16,
        description="Token budget of one step: prefill chunk tokens plus one per decode "
        "(vLLM `--max-num-batched-tokens`; chunked prefill is always on, as in vLLM v1).",
    )
    scheduler_reserve_full_isl: bool = Field(
        True,
        description="Admit a waiting call only if blocks for its whole prompt (plus any "
        "output it already made) fit in the free and evictable blocks, not just its first "
        "chunk (vLLM `--scheduler-reserve-full-isl`, on by default: "
        "vllm/config/scheduler.py). Retention pins count as taken; the check gives them "
        "up (in the policy's unpin order) only on a replica where no call runs, which "
        "is a SAGA choice: vLLM has no pins (but see pins_yield_to_waiting).",
    )
    pins_yield_to_waiting: bool = Field(
        False,
        description="Give up retention pins (in the policy's unpin order) for a waiting "
        "call's admission even while other calls run, as SAGA's scheduler inside vLLM "
        "does (saga.integrations.vllm_scheduler: a failed allocate_slots releases pins "
        "while releasing them all could let it fit). Off: only on an idle replica.",
    )
    gpu_memory_utilization: float = Field(
        0.9, gt=0.0, le=1.0, description="Share of GPU memory vLLM may use (weights + KV)."
    )
    kv_capacity_blocks: int | None = Field(
        None,
        ge=1,
        description="Override the GPU KV capacity in blocks (tests, what-if studies); by "
        "default it follows from GPU memory, weights and gpu_memory_utilization.",
    )
    host_kv_gb: float = Field(
        0.0,
        ge=0.0,
        description="Host (CPU) KV tier per replica in GiB; 0 disables offload and swap.",
    )
    preemption: Literal["recompute", "swap"] = Field(
        "recompute",
        description="What a preempted call loses: recompute drops its KV (vLLM v1's "
        "only mode); swap copies it to the host tier first (needs host_kv_gb > 0).",
    )
