"""Hardware and model presets for the engine cost model.

Every number here is a public specification (sources in docs/costmodel.md), except the
``cpu-tiny`` device, which stands for the 2-core CPU machines the real-engine tests run on, and
the ``tiny-llama`` model, our own (``saga.integrations.tinymodel``).
The presets say what the hardware *is*; how much of it vLLM achieves lives in
:mod:`saga.engine.costmodel` (``Efficiency``), calibrated against published measurements.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

__all__ = [
    "GPU",
    "GPUS",
    "MODELS",
    "PCIE_BANDWIDTH",
    "ModelSpec",
    "get_gpu",
    "get_model",
    "llama_params",
]

GIB = 1024**3


@dataclass(frozen=True, slots=True)
class GPU:
    """One accelerator (or, for ``cpu-tiny``, a CPU standing in for one).

    Attributes:
        name: preset key.
        peak_flops: dense bf16 tensor FLOP/s (no sparsity).
        hbm_bandwidth: device memory bandwidth, bytes/s.
        hbm_bytes: device memory, bytes.
        interconnect_bandwidth: NVLink bandwidth per GPU in bytes/s as the vendor quotes
            it (both directions added up); 0 when the device has none.
    """

    name: str
    peak_flops: float
    hbm_bandwidth: float
    hbm_bytes: float
    interconnect_bandwidth: float


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """Shape of a decoder-only transformer, enough to count its FLOPs and bytes.

    Attributes:
        name: preset key.
        layers, hidden, heads, kv_heads, head_dim, ffn: the architecture.
        params: total parameters (all experts for a mixture of experts).
        active_params: parameters used per token (equals ``params`` for dense models).
        dtype_bytes: bytes per weight and per KV element (2 for bf16/fp16).
        vocab: vocabulary size; 0 when unknown, and then embeddings are not treated apart.
        tied_embeddings: whether the output projection reuses the input embedding.
        max_context: the longest sequence (prompt plus output, in tokens) the model serves:
            its config's ``max_position_embeddings``, vLLM's default ``max_model_len``; a
            request longer than this gets an HTTP 400 from vLLM. 0 when unknown (no limit).
    """

    name: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    params: float
    active_params: float
    dtype_bytes: int = 2
    vocab: int = 0
    tied_embeddings: bool = False
    max_context: int = 0

    def kv_bytes_per_token(self) -> int:
        """Bytes of KV cache one token occupies: K and V for every layer and KV head."""
        return 2 * self.layers * self.kv_heads * self.head_dim * self.dtype_bytes

    def weight_bytes(self) -> float:
        """Bytes the weights occupy in device memory (summed over tensor-parallel ranks)."""
        return self.params * self.dtype_bytes

    def embedding_params(self) -> float:
        """Parameters of one vocab x hidden matrix (input embedding or output head)."""
        return float(self.vocab * self.hidden)

    def streamed_weight_bytes(self) -> float:
        """Bytes of weights a forward step reads from memory.

        An untied input embedding is only gathered (a few rows per token), never read in
        full, so it is left out; everything else, the output head included, is read once.
        """
        skipped = 0.0 if self.tied_embeddings else self.embedding_params()
        return (self.params - skipped) * self.dtype_bytes

    def body_params(self) -> float:
        """Active parameters that multiply every token: all but the embedding and head."""
        heads_and_embeddings = self.embedding_params() * (1 if self.tied_embeddings else 2)
        return self.active_params - heads_and_embeddings


def llama_params(
    layers: int,
    hidden: int,
    heads: int,
    kv_heads: int,
    head_dim: int,
    ffn: int,
    vocab: int,
    *,
    tied_embeddings: bool = False,
    qkv_bias: bool = False,
) -> int:
    """Parameter count of a Llama-style model (GQA attention, SwiGLU MLP, RMSNorm).

    ``qkv_bias`` adds the query/key/value biases that Qwen2 models carry.
    """
    q = hidden * heads * head_dim
    kv = 2 * hidden * kv_heads * head_dim
    o = heads * head_dim * hidden
    bias = (heads + 2 * kv_heads) * head_dim if qkv_bias else 0
    mlp = 3 * hidden * ffn
    norms = 2 * hidden
    per_layer = q + kv + o + bias + mlp + norms
    embeddings = vocab * hidden * (1 if tied_embeddings else 2)
    return layers * per_layer + embeddings + hidden  # + the final norm


# ---- GPUs -------------------------------------------------------------------------------
# Memory sizes: "80GB" parts expose 80 GiB (A100: 81920 MiB, H100: 81559 MiB in nvidia-smi);
# the H200's "141GB" is 143771 MiB, about 140.4 GiB. The A100's NVLink 3 is 600 GB/s per
# GPU, the H100's and H200's NVLink 4 900 GB/s (both directions added up).
GPUS: dict[str, GPU] = {
    g.name: g
    for g in (
        GPU("a100-80gb", 312e12, 2.039e12, 80 * GIB, 600e9),
        GPU("h100-sxm", 989e12, 3.35e12, 80 * GIB, 900e9),
        GPU("h200", 989e12, 4.8e12, 143771 * 1024**2, 900e9),
        # The 2-core Intel Xeon (AVX-512) VMs this project runs on since December 2026
        # (before: AMD EPYC Zen 3, AVX2 only, 32 FLOP/cycle at ~2.45 GHz), as vLLM-CPU
        # uses them: it serves with one OpenMP thread (the other core runs its front
        # end), so the peak is one core's fp32 FMA rate, 2 x 512-bit FMA per cycle = 64
        # FLOP/cycle at 2.6 GHz (the tiny model runs in float32).
        # ~20 GB/s is a nominal share of DDR4 bandwidth for one VM; the achieved fraction
        # is fitted in efficiency.py. "HBM" is the memory vLLM-CPU may use for weights and
        # KV (VLLM_CPU_KVCACHE_SPACE). No interconnect.
        GPU("cpu-tiny", 1 * 2.6e9 * 64, 20e9, 8 * GIB, 0.0),
    )
}

# Effective host<->device copy bandwidth of a x16 link (pinned memory, large transfers).
PCIE_BANDWIDTH: dict[str, float] = {"gen4": 25e9, "gen5": 50e9}


# ---- models -----------------------------------------------------------------------------
def _llama(
    name: str,
    layers: int,
    hidden: int,
    heads: int,
    kv_heads: int,
    head_dim: int,
    ffn: int,
    vocab: int,
    *,
    qkv_bias: bool = False,
    tied_embeddings: bool = False,
    max_context: int = 0,
) -> ModelSpec:
    params = float(
        llama_params(
            layers,
            hidden,
            heads,
            kv_heads,
            head_dim,
            ffn,
            vocab,
            tied_embeddings=tied_embeddings,
            qkv_bias=qkv_bias,
        )
    )
    return ModelSpec(
        name=name,
        layers=layers,
        hidden=hidden,
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        ffn=ffn,
        params=params,
        active_params=params,
        dtype_bytes=2,
        vocab=vocab,
        tied_embeddings=tied_embeddings,
        max_context=max_context,
    )


def _tiny_llama() -> ModelSpec:
    spec = _llama("tiny-llama", 4, 256, 4, 2, 64, 688, 2048, max_context=32768)
    return replace(spec, dtype_bytes=4)


# Shapes from each model's published config.json; parameter counts computed from them
# (8,030,261,248 / 70,553,706,496 / 32,763,876,352: the published 8.0 B, 70.6 B, 32.8 B).
# max_context is the config's max_position_embeddings (what vLLM takes as max_model_len):
# 131,072 for Llama-3.1-8B and -70B; 32,768 for Qwen2.5-32B (its 131,072 needs YaRN rope
# scaling, which vLLM enables only when asked); the tiny model's own config says 32,768.
MODELS: dict[str, ModelSpec] = {
    m.name: m
    for m in (
        _llama("llama-3.1-8b", 32, 4096, 32, 8, 128, 14336, 128256, max_context=131072),
        _llama("llama-3.1-70b", 80, 8192, 64, 8, 128, 28672, 128256, max_context=131072),
        _llama("qwen2.5-32b", 64, 5120, 40, 8, 128, 27648, 152064, qkv_bias=True,
               max_context=32768),
        # The tiny random model that saga.integrations.tinymodel builds for real CPU engines
        # (a few MB of weights), in float32 as both CPU engines serve it.
        _tiny_llama(),
    )
}


def get_gpu(name: str) -> GPU:
    """The GPU preset called ``name``; ValueError naming the valid presets otherwise."""
    try:
        return GPUS[name]
    except KeyError:
        raise ValueError(f"unknown GPU {name!r}; known: {', '.join(sorted(GPUS))}") from None


def get_model(name: str) -> ModelSpec:
    """The model preset called ``name``; ValueError naming the valid presets otherwise."""
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}") from None
