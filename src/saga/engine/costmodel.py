"""Step-time cost model of one inference replica (docs/costmodel.md).

One continuous-batching step costs

    t = t_fixed + t_per_seq * n_seqs
        + max(flops / (peak_flops * mfu * tp), bytes / (hbm_bandwidth * mbu * tp))
        + t_comm

(``Efficiency.step_roofline = "sum"`` adds the two terms instead of taking the larger: a CPU
core that runs the GEMMs and the attention/KV reads one after the other.)

* flops: 2 x (parameters that multiply every token) x tokens (rounded up to whole GEMM
  tiles), plus 2 x vocab x hidden per sequence for the output head (logits are computed
  only where a token is sampled), plus 4 x layers x heads x head_dim per causal
  (query, key) pair of attention.
* bytes: the weights once (minus an untied input embedding, which is only gathered), the
  KV of every sequence's context, and the KV written for the new tokens.
* t_comm: two all-reduces per layer of tokens x hidden activations when tp > 1 (ring:
  2 (tp - 1) / tp of the message crosses each link), plus a fixed latency per all-reduce.

The efficiency factors are calibrated per GPU against published vLLM measurements; the
calibration points live in tests/engine/test_costmodel.py and docs/costmodel.md.

The hot paths (``step_time``, ``decode_steps_time``) use only floats precomputed in
``__init__``: the simulator calls them millions of times (compiled: saga.compiled). The
efficiency factors, a pydantic model mypyc does not compile, are in saga.engine.efficiency.
"""

from __future__ import annotations

import math

from saga.engine.efficiency import DEFAULT_EFFICIENCY, Efficiency
from saga.engine.hardware import GPU, ModelSpec, get_gpu, get_model

__all__ = ["DEFAULT_EFFICIENCY", "CostModel", "Efficiency", "cost_model_for"]

GIB = 1024**3
# vLLM reserves memory for the activations of its largest (profiling) step and for
# runtime state outside the KV cache (CUDA graphs, NCCL buffers, sampler). We estimate
# the former for a step of this many tokens and add a flat amount per GPU for the latter.
_ACTIVATION_TOKENS = 8192
_RUNTIME_RESERVE_BYTES = 1.0 * GIB


class CostModel:
    """Seconds per engine step for one model on ``tp`` GPUs of one type."""

    def __init__(
        self,
        model: ModelSpec,
        gpu: GPU,
        tp: int = 1,
        efficiency: Efficiency | None = None,
        host_link_bandwidth: float = 25e9,
    ) -> None:
        if tp < 1:
            raise ValueError(f"tp must be >= 1, got {tp}")
        if tp > 1 and gpu.interconnect_bandwidth <= 0:
            raise ValueError(f"{gpu.name} has no interconnect for tensor parallelism")
        if host_link_bandwidth <= 0:
            raise ValueError("host_link_bandwidth must be > 0")
        self.model = model
        self.gpu = gpu
        self.tp = tp
        self.efficiency = efficiency if efficiency is not None else _default_efficiency(gpu)
        self.host_link_bandwidth = host_link_bandwidth
        eff = self.efficiency

        # With tp > kv_heads vLLM replicates KV heads, so KV traffic splits kv_heads ways.
        kv_split = min(tp, model.kv_heads)
        inv_compute = 1.0 / (gpu.peak_flops * eff.mfu * tp)
        attn_mfu = eff.attn_mfu if eff.attn_mfu is not None else eff.mfu
        inv_attention = 1.0 / (gpu.peak_flops * attn_mfu * tp)
        inv_memory = 1.0 / (gpu.hbm_bandwidth * eff.mbu)
        # Compute-side seconds per token, per sequence (output head), per attention pair.
        self._c_tok = 2.0 * model.body_params() * inv_compute
        self._c_seq = 2.0 * model.embedding_params() * inv_compute
        self._c_attn = 4.0 * model.layers * model.heads * model.head_dim * inv_attention
        # Memory-side seconds: weights once per step, KV per token read or written.
        self._m_weights = model.streamed_weight_bytes() / tp * inv_memory
        self._m_kv = model.kv_bytes_per_token() / kv_split * inv_memory
        # Overheads: fixed, per sequence, and the all-reduces (latency + ring bandwidth).
        all_reduces = 2 * model.layers if tp > 1 else 0
        self._t0 = eff.t_fixed + all_reduces * eff.t_allreduce
        self._s_seq = eff.t_per_seq
        self._tile = eff.gemm_tile_tokens
        # One core: compute and memory one after the other (see Efficiency.step_roofline).
        self._serial = eff.step_roofline == "sum"
        if tp > 1:
            ring_bytes_per_token = 2.0 * (tp - 1) / tp * model.hidden * model.dtype_bytes
            link = gpu.interconnect_bandwidth * eff.comm_efficiency
            self._comm_tok = all_reduces * ring_bytes_per_token / link
        else:
            self._comm_tok = 0.0

    def __repr__(self) -> str:
        return f"CostModel({self.model.name!r}, {self.gpu.name!r}, tp={self.tp})"

    # ---- the hot paths ------------------------------------------------------------------
    def step_time(self, tokens: int, attn_work: float, kv_read_tokens: int, n_seqs: int) -> float:
        """Seconds for one continuous-batching step.

        Args:
            tokens: query tokens processed this step (prefill chunk tokens plus one per
                decoding sequence).
            attn_work: sum over sequences of q_i * (c_i + (q_i + 1) / 2), where q_i is the
                query tokens of sequence i this step and c_i its context length before the
                step: the exact number of causal (query, key) pairs.
            kv_read_tokens: sum over sequences of the tokens whose KV is read (c_i + q_i).
            n_seqs: number of sequences in the batch.

        A step with no tokens does not run and costs 0.
        """
        if tokens <= 0:
            return 0.0
        tile = self._tile
        gemm_tokens = -(-tokens // tile) * tile  # whole GEMM tiles
        compute = self._c_tok * gemm_tokens + self._c_seq * n_seqs + self._c_attn * attn_work
        memory = self._m_weights + self._m_kv * (kv_read_tokens + tokens)
        if self._serial:
            return self._t0 + self._s_seq * n_seqs + self._comm_tok * tokens + (compute + memory)
        return (
            self._t0
            + self._s_seq * n_seqs
            + self._comm_tok * tokens
            + (compute if compute > memory else memory)
        )

    def decode_steps_time(self, n_seqs: int, ctx_sum: int, k: int) -> float:
        """Seconds for ``k`` consecutive pure-decode steps of ``n_seqs`` sequences.

        ``ctx_sum`` is the summed context (tokens already in KV) before the first step;
        every step adds one token per sequence. Equals the sum of ``step_time(n_seqs,
        C_j + n_seqs, C_j + n_seqs, n_seqs)`` with ``C_j = ctx_sum + j * n_seqs`` for
        j < k, in closed form: each step's time is the max of two affine functions of j,
        so the sum splits at their crossing into two arithmetic series (with
        ``step_roofline = "sum"``, their sum: one series).
        """
        if k <= 0 or n_seqs <= 0:
            return 0.0
        if k == 1:
            # A placement asks this of every candidate. One step is the larger of the two
            # terms at j = 0: what the closed form below gives at k = 1 (its crossing is 0
            # exactly when a0 - b0 >= 0), bit for bit, in a third of the operations.
            n = n_seqs
            first = ctx_sum + n
            gemm_tokens = -(-n // self._tile) * self._tile
            a0 = self._c_tok * gemm_tokens + self._c_seq * n + self._c_attn * first
            b0 = self._m_weights + self._m_kv * (first + n)
            base = self._t0 + self._s_seq * n + self._comm_tok * n
            if self._serial:
                return base + (a0 + b0)
            return base + (a0 if a0 - b0 >= 0.0 else b0)
        return self._decode_series(n_seqs, ctx_sum, k)

    def _decode_series(self, n_seqs: int, ctx_sum: int, k: int) -> float:
        """:meth:`decode_steps_time` as two arithmetic series split at the crossing."""
        n = n_seqs
        first = ctx_sum + n  # attn_work and kv_read_tokens of step 0
        base = self._t0 + self._s_seq * n + self._comm_tok * n
        gemm_tokens = -(-n // self._tile) * self._tile
        a0 = self._c_tok * gemm_tokens + self._c_seq * n + self._c_attn * first
        a1 = self._c_attn * n
        b0 = self._m_weights + self._m_kv * (first + n)
        b1 = self._m_kv * n
        if self._serial:  # no crossing: every step pays both terms
            return k * base + _series(a0 + b0, a1 + b1, 0, k)
        split = self._crossing(a0 - b0, a1 - b1, k)
        if a1 >= b1:  # memory-bound on [0, split), compute-bound on [split, k)
            total = _series(b0, b1, 0, split) + _series(a0, a1, split, k)
        else:  # compute-bound on [0, split), memory-bound on [split, k)
            total = _series(a0, a1, 0, split) + _series(b0, b1, split, k)
        return k * base + total

    @staticmethod
    def _crossing(d0: float, d1: float, k: int) -> int:
        """Where the sign of d0 + d1 * j changes within [0, k].

        For d1 >= 0: the first j with d0 + d1 j >= 0 (compute-bound from there on).
        For d1 < 0: the first j with d0 + d1 j < 0 (memory-bound from there on).
        """
        if d1 == 0.0:
            if d0 >= 0.0:
                return 0
            return k
        root = -d0 / d1
        j = math.ceil(root) if d1 > 0.0 else math.floor(root) + 1
        return min(max(j, 0), k)

    def decode_steps_within(self, n_seqs: int, ctx_sum: int, seconds: float) -> int:
        """Largest k >= 0 with ``decode_steps_time(n_seqs, ctx_sum, k) <= seconds``."""
        if seconds <= 0.0 or n_seqs <= 0:
            return 0
        if not math.isfinite(seconds):
            raise ValueError(f"seconds must be finite, got {seconds}")
        first = self.decode_steps_time(n_seqs, ctx_sum, 1)
        if first > seconds:
            return 0
        # Step times never shrink (contexts only grow), so k <= seconds / first. They grow
        # at most by `slope` per step, which bounds k from below; bisect in between.
        hi = int(seconds / first) + 1
        per_token = self._c_attn + self._m_kv if self._serial else max(self._c_attn, self._m_kv)
        slope = per_token * n_seqs
        lo = 1
        if slope > 0.0:
            # k * first + slope * k (k - 1) / 2 <= seconds  =>  k <= root of the quadratic
            b = first - slope / 2.0
            guess = (-b + math.sqrt(b * b + 2.0 * slope * seconds)) / slope
            lo = max(lo, min(int(guess), hi))
        else:
            lo = max(lo, hi - 1)
        while lo > 1 and self.decode_steps_time(n_seqs, ctx_sum, lo) > seconds:
            lo -= 1  # float rounding in the guess
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self.decode_steps_time(n_seqs, ctx_sum, mid) <= seconds:
                lo = mid
            else:
                hi = mid
        return lo

    # ---- conveniences -------------------------------------------------------------------
    def prefill_time(self, prompt_tokens: int, cached_tokens: int = 0, chunk: int = 8192) -> float:
        """Seconds to prefill one prompt alone, in chunks of ``chunk`` tokens.

        The first ``cached_tokens`` are already in the KV cache (a prefix hit) and only
        read, not recomputed. The step that finishes the prompt samples its first token.
        """
        if chunk <= 0:
            raise ValueError(f"chunk must be > 0, got {chunk}")
        done = min(max(cached_tokens, 0), prompt_tokens)
        total = 0.0
        # Each chunk is step_time(q, q * (done + (q + 1) / 2), done + q, 1), inlined (a
        # placement, a retention decision and the cache's rebuild weights ask this): the
        # same operations in the same order, so the same floats (tests/engine/
        # test_costmodel.py compares them).
        tile, c_tok, c_attn = self._tile, self._c_tok, self._c_attn
        c_seq, m_weights, m_kv = self._c_seq * 1, self._m_weights, self._m_kv
        fixed, comm_tok, serial = self._t0 + self._s_seq * 1, self._comm_tok, self._serial
        while done < prompt_tokens:
            left = prompt_tokens - done
            q = chunk if chunk < left else left
            compute = c_tok * (-(-q // tile) * tile) + c_seq + c_attn * (q * (done + (q + 1) / 2))
            memory = m_weights + m_kv * (done + q + q)
            if serial:
                total += fixed + comm_tok * q + (compute + memory)
            else:
                total += fixed + comm_tok * q + (compute if compute > memory else memory)
            done += q
        return total

    def host_transfer_time(self, nbytes: float) -> float:
        """Seconds to move ``nbytes`` of KV between host memory and the GPUs."""
        return nbytes / self.host_link_bandwidth

    def kv_capacity_tokens(self, gpu_memory_utilization: float = 0.9) -> int:
        """Tokens of KV that fit in the share of GPU memory vLLM may use.

        Usable memory (all ``tp`` GPUs) minus the weights and an activation/runtime
        reserve, divided by the KV bytes of one token. Raises ValueError when the
        weights do not fit.
        """
        if not 0.0 < gpu_memory_utilization <= 1.0:
            raise ValueError(
                f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}"
            )
        model, tp = self.model, self.tp
        usable = self.gpu.hbm_bytes * tp * gpu_memory_utilization
        activations = _ACTIVATION_TOKENS * (2 * model.ffn / tp + 4 * model.hidden)
        reserve = tp * (_RUNTIME_RESERVE_BYTES + activations * model.dtype_bytes)
        free = usable - model.weight_bytes() - reserve
        # Replicated KV heads (tp > kv_heads) store each token's KV more than once.
        per_token = model.kv_bytes_per_token() * tp / min(tp, model.kv_heads)
        if free < per_token:
            raise ValueError(
                f"{model.name} weights ({model.weight_bytes() / 1e9:.1f} GB) do not fit in "
                f"{tp} x {self.gpu.name} at gpu_memory_utilization={gpu_memory_utilization} "
                f"({usable / 1e9:.1f} GB usable, {reserve / 1e9:.1f} GB reserved for "
                f"activations and runtime); use a larger tp or a bigger GPU"
            )
        return int(free // per_token)


def _series(x0: float, x1: float, start: int, stop: int) -> float:
    """Sum of x0 + x1 * j for j in [start, stop)."""
    count = stop - start
    if count <= 0:
        return 0.0
    return count * x0 + x1 * (count * (start + stop - 1) / 2.0)


def _default_efficiency(gpu: GPU) -> Efficiency:
    try:
        return DEFAULT_EFFICIENCY[gpu.name]
    except KeyError:
        raise ValueError(
            f"no calibrated efficiency for GPU {gpu.name!r}; pass efficiency= "
            f"(calibrated: {', '.join(sorted(DEFAULT_EFFICIENCY))})"
        ) from None


def cost_model_for(model_name: str, gpu_name: str, tp: int) -> CostModel:
    """Cost model of a preset model on ``tp`` preset GPUs with the calibrated efficiency."""
    gpu = get_gpu(gpu_name)
    return CostModel(get_model(model_name), gpu, tp, _default_efficiency(gpu))
