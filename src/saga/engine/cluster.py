"""Cluster presets: how many replicas of which model on which GPUs, and their engine."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from saga.engine.config import EngineConfig
from saga.engine.costmodel import CostModel, Efficiency, cost_model_for
from saga.engine.hardware import PCIE_BANDWIDTH, get_gpu, get_model
from saga.errors import UserError

GIB = 1024**3

# vLLM v1's API-server defaults by GPU (docs/baselines.md): large GPUs other than
# the A100 get 8192 batched tokens and 1024 sequences, the A100 2048 and 256.
_A100_ENGINE = EngineConfig(max_num_batched_tokens=2048, max_num_seqs=256, host_kv_gb=256)
_H100_ENGINE = EngineConfig(max_num_batched_tokens=8192, max_num_seqs=1024, host_kv_gb=256)


class ClusterSpec(BaseModel):
    """A homogeneous cluster of engine replicas."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(description="Preset name.")
    replicas: int = Field(ge=1, description="Number of engine replicas.")
    gpu: str = Field(description="GPU preset (see saga.engine.hardware.GPUS).")
    model: str = Field(description="Model preset (see saga.engine.hardware.MODELS).")
    tp: int = Field(1, ge=1, description="Tensor-parallel GPUs per replica.")
    host_link: str = Field("gen4", description="Host link for the KV host tier: gen4 or gen5.")
    engine: EngineConfig = Field(default_factory=EngineConfig, description="Engine settings.")
    end_idle_timeout: float = Field(
        600.0, gt=0,
        description="Seconds with no call after which the gateway takes a workflow without "
        "an end marker (end_signal = idle) as finished: the gateway's workflow_idle_timeout.",
    )
    efficiency: Efficiency | None = Field(
        None,
        description="How much of the hardware the engines achieve, when measured for this "
        "cluster (a calibration probe's fit, saga.engine.speedfit); None: the GPU's "
        "calibrated preset (saga.engine.costmodel.DEFAULT_EFFICIENCY).",
    )
    host_contention: float = Field(
        0.0, ge=0.0,
        description="Replicas that share one host's cores (the CPU presets): a step started "
        "while other replicas are busy takes 1 + host_contention x (the share of the other "
        "replicas busy) times as long (saga.engine.contention); 0: independent replicas.",
    )
    description: str = ""

    @property
    def gpus(self) -> int:
        return self.replicas * self.tp

    def cost_model(self) -> CostModel:
        if self.efficiency is None:
            cost = cost_model_for(self.model, self.gpu, self.tp)
        else:
            cost = CostModel(get_model(self.model), get_gpu(self.gpu), self.tp, self.efficiency)
        cost.host_link_bandwidth = PCIE_BANDWIDTH[self.host_link]
        return cost

    def kv_capacity_blocks(self, block_tokens: int) -> int:
        if self.engine.kv_capacity_blocks is not None:
            return self.engine.kv_capacity_blocks
        tokens = self.cost_model().kv_capacity_tokens(self.engine.gpu_memory_utilization)
        return tokens // block_tokens

    def host_capacity_blocks(self, block_tokens: int) -> int:
        per_block = self.cost_model().model.kv_bytes_per_token() * block_tokens
        return int(self.engine.host_kv_gb * GIB // per_block)


CLUSTERS: dict[str, ClusterSpec] = {
    c.name: c
    for c in [
        ClusterSpec(
            name="paper-a100-64",
            replicas=16,
            gpu="a100-80gb",
            model="llama-3.1-70b",
            tp=4,
            engine=_A100_ENGINE,
            description="The paper's setup: 16 replicas of Llama-3.1-70B, TP 4 on A100-80GB.",
        ),
        ClusterSpec(
            name="h100-64-70b",
            replicas=8,
            gpu="h100-sxm",
            model="llama-3.1-70b",
            tp=8,
            engine=_H100_ENGINE,
            description="8 replicas of Llama-3.1-70B, TP 8 on H100-SXM.",
        ),
        ClusterSpec(
            name="h100-64-8b",
            replicas=64,
            gpu="h100-sxm",
            model="llama-3.1-8b",
            tp=1,
            engine=_H100_ENGINE,
            description="64 single-H100 replicas of Llama-3.1-8B.",
        ),
        ClusterSpec(
            name="h100-8-8b",
            replicas=8,
            gpu="h100-sxm",
            model="llama-3.1-8b",
            tp=1,
            engine=_H100_ENGINE,
            description="8 single-H100 replicas of Llama-3.1-8B (quick runs).",
        ),
        ClusterSpec(
            name="a100-8-70b",
            replicas=2,
            gpu="a100-80gb",
            model="llama-3.1-70b",
            tp=4,
            engine=_A100_ENGINE,
            description="2 replicas of Llama-3.1-70B, TP 4 on A100-80GB (the paper's replica).",
        ),
        ClusterSpec(
            name="small",
            replicas=4,
            gpu="h100-sxm",
            model="llama-3.1-8b",
            tp=1,
            engine=EngineConfig(
                max_num_batched_tokens=8192, max_num_seqs=256, kv_capacity_blocks=4096,
                host_kv_gb=16,
            ),
            description="4 replicas of Llama-3.1-8B on H100 with 256k tokens of KV each: "
            "the default scenario, small enough to run in seconds and to feel memory pressure.",
        ),
        ClusterSpec(
            name="cpu-tiny",
            replicas=2,
            gpu="cpu-tiny",
            model="tiny-llama",
            engine=EngineConfig(
                max_num_batched_tokens=4096, max_num_seqs=256, kv_capacity_blocks=2048
            ),
            host_contention=0.29,
            description="2 vLLM-CPU replicas of the tiny-llama model, one core each, as the "
            "real-engine tests run them (docs/engines.md): 1 GiB of KV, 262,144 tokens, "
            "2048 blocks of 128 tokens (vLLM-CPU's block); 4096 batched tokens per step; "
            "the 2 cores shared, so a step is 1.29x as long while the other replica is busy.",
        ),
        ClusterSpec(
            name="test-2",
            replicas=2,
            gpu="h100-sxm",
            model="llama-3.1-8b",
            tp=1,
            engine=EngineConfig(
                max_num_batched_tokens=2048, max_num_seqs=16, kv_capacity_blocks=512
            ),
            description="2 tiny replicas for tests (512 blocks of KV each).",
        ),
    ]
}


def get_cluster(name: str) -> ClusterSpec:
    spec = CLUSTERS.get(name)
    if spec is None:
        raise UserError(f"unknown cluster {name!r}; choose one of: {', '.join(sorted(CLUSTERS))}")
    return spec
