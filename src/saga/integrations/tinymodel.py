"""A tiny seeded random Llama model with a locally trained tokenizer, for real CPU engines.

``build(out_dir, seed=0)`` writes, with numpy only (no torch, no model hub):

* a Hugging Face folder that vLLM loads: ``config.json`` (``LlamaForCausalLM``),
  ``model.safetensors`` (float32), ``tokenizer.json`` (byte-level BPE trained here with
  ``tokenizers``), ``tokenizer_config.json`` (with a chat template), ``special_tokens_map.json``
  and ``generation_config.json``;
* ``model.gguf``: the same weights and tokenizer for llama.cpp's ``llama-server`` (Q and K
  rows permuted into GGML's rotary layout, as llama.cpp's own converter does);
* ``saga_tinymodel.json``: how it was built (seed, shape, corpus and its SHA-256, file hashes).

The shape is :data:`TINY`, the ``tiny-llama`` preset of :mod:`saga.engine.hardware`, in float32
(the dtype both CPU engines run it in, so their greedy tokens agree). Weights come from one
``numpy.random.Generator(PCG64(seed))`` in a fixed order; the output head is scaled so that
logits spread several units and greedy decoding never hinges on a rounding difference.

The tokenizer is trained on ``corpus`` text: ``"traces"`` takes unique lines of the LMCache
agent traces (``lmcache_agent/*.jsonl.gz`` under the shared traces folder), ``"builtin"``
generates seeded pseudo-English and pseudo-code, and ``"auto"`` (the default) uses the traces
when they are present. The same seed and corpus give the same bytes in every file.

Command line: ``python -m saga.integrations.tinymodel --out DIR [--seed N] [--corpus C]``.
Needs the ``safetensors`` and ``gguf`` packages (the ``engines`` extra).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CHAT_TEMPLATE",
    "SPECIAL_TOKENS",
    "TINY",
    "TinySpec",
    "build",
    "corpus_text",
    "main",
]

# Control tokens, in id order (ids 0..7). No BOS is added to prompts, by either engine.
SPECIAL_TOKENS = (
    "<|pad|>",
    "<|bos|>",
    "<|eos|>",
    "<|end|>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|tool|>",
)
PAD_ID, BOS_ID, EOS_ID, END_ID = 0, 1, 2, 3

# A Jinja template both vLLM (transformers) and llama.cpp (minja, --jinja) can render.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>\\n' }}{%- endif -%}"
)


@dataclass(frozen=True, slots=True)
class TinySpec:
    """Shape of the tiny model; :data:`TINY` matches the ``tiny-llama`` cost-model preset.

    Attributes:
        layers, hidden, heads, kv_heads, head_dim, ffn, vocab: the Llama architecture.
        max_positions: context length the engines allow.
        rope_theta: rotary base.
        rms_eps: RMSNorm epsilon.
        logit_scale: standard deviation of the logits (about), set by the output head's scale.
    """

    layers: int = 4
    hidden: int = 256
    heads: int = 4
    kv_heads: int = 2
    head_dim: int = 64
    ffn: int = 688
    vocab: int = 2048
    max_positions: int = 32768
    rope_theta: float = 10000.0
    rms_eps: float = 1e-5
    logit_scale: float = 4.0


TINY = TinySpec()


# ---- corpus -------------------------------------------------------------------------------
_WORDS = (
    "the", "of", "and", "to", "in", "is", "that", "for", "it", "as", "with", "was", "on", "be",
    "by", "at", "this", "from", "or", "an", "are", "not", "have", "had", "but", "which", "one",
    "all", "were", "when", "we", "there", "can", "been", "has", "more", "if", "will", "so", "no",
    "would", "what", "up", "out", "about", "who", "get", "them", "some", "could", "into", "time",
    "than", "like", "other", "then", "its", "now", "only", "two", "may", "first", "new", "any",
    "these", "over", "such", "after", "also", "most", "made", "before", "must", "through",
    "back", "where", "much", "your", "way", "well", "down", "should", "because", "each", "just",
    "those", "people", "how", "too", "little", "state", "good", "very", "make", "world", "still",
    "own", "see", "men", "work", "long", "here", "between", "both", "life", "being", "under",
    "never", "day", "same", "another", "know", "while", "last", "might", "great", "old", "year",
    "off", "come", "since", "against", "go", "came", "right", "used", "take", "three", "agent",
    "tool", "call", "workflow", "request", "cache", "token", "model", "prompt", "reply", "task",
    "test", "file", "error", "result", "search", "page", "browser", "code", "function", "value",
    "return", "class", "import", "def", "self", "none", "true", "false", "list", "dict",
    "string", "number", "user", "assistant", "system", "server", "client", "replica", "queue",
)
_SYMBOLS = ("(", ")", "[", "]", "{", "}", ":", "=", "==", "+", "-", "*", "/", ",", ".", "_")


def _builtin_lines(seed: int, n_lines: int = 40_000) -> Iterator[str]:
    """Seeded pseudo-English sentences and pseudo-code lines (no outside data)."""
    rng = np.random.Generator(np.random.PCG64(seed))
    words = np.array(_WORDS)
    for i in range(n_lines):
        k = int(rng.integers(4, 18))
        picked = [str(w) for w in words[rng.integers(0, len(words), size=k)]]
        if i % 3 == 2:  # code-like
            sym = [_SYMBOLS[int(j)] for j in rng.integers(0, len(_SYMBOLS), size=k)]
            indent = "    " * int(rng.integers(0, 3))
            yield indent + " ".join(f"{w}{s}" for w, s in zip(picked, sym, strict=True))
        else:
            num = int(rng.integers(0, 10_000))
            yield " ".join(picked).capitalize() + f" {num}."


def _trace_lines(traces: Path, max_chars: int) -> Iterator[str]:
    """Unique non-empty lines of the LMCache agent traces, in file order, up to max_chars."""
    seen: set[str] = set()
    total = 0
    for name in ("miniswe", "magagent", "taubench"):
        path = traces / "lmcache_agent" / f"{name}.jsonl.gz"
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for raw in f:
                obj = json.loads(raw)
                for field in ("input", "output"):
                    for line in str(obj.get(field) or "").splitlines():
                        if line.strip() and line not in seen:
                            seen.add(line)
                            total += len(line) + 1
                            yield line
                            if total >= max_chars:
                                return


def _traces_dir() -> Path | None:
    """``$SAGA_TRACES_DIR`` or ``shared/traces`` beside a parent of this file or the cwd.

    The same lookup as :func:`saga.workloads.paths.traces_dir`, repeated here so that this
    module imports nothing of the project (it runs in the engines' environment too).
    """
    env = os.environ.get("SAGA_TRACES_DIR")
    candidates = [Path(env)] if env else [
        parent / "shared" / "traces"
        for start in (Path(__file__).resolve(), Path.cwd().resolve())
        for parent in start.parents
    ]
    for base in candidates:
        if (base / "lmcache_agent" / "miniswe.jsonl.gz").is_file():
            return base
    return None


def corpus_text(corpus: str = "auto", max_chars: int = 3_000_000) -> tuple[str, str]:
    """The tokenizer's training text and the corpus actually used (``traces`` or ``builtin``).

    The built-in text has a fixed seed of its own: the model's seed changes only the weights.
    """
    if corpus not in ("auto", "traces", "builtin"):
        raise ValueError(f"corpus must be auto, traces or builtin, got {corpus!r}")
    traces = _traces_dir() if corpus in ("auto", "traces") else None
    if corpus == "traces" and traces is None:
        raise FileNotFoundError(
            "no lmcache_agent traces found: set SAGA_TRACES_DIR or use --corpus builtin"
        )
    if traces is not None:
        return "\n".join(_trace_lines(traces, max_chars)), "traces"
    return "\n".join(_builtin_lines(seed=0)), "builtin"


# ---- tokenizer ----------------------------------------------------------------------------
def _train_tokenizer(text: str, vocab: int) -> Any:
    """Byte-level BPE (GPT-2 pre-tokenizer regex, no prefix space), trained on ``text``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_chunks(text), trainer=trainer, length=None)
    if tok.get_vocab_size() != vocab:
        raise RuntimeError(
            f"tokenizer learned {tok.get_vocab_size()} tokens, wanted {vocab}: corpus too small"
        )
    return tok


def _chunks(text: str, size: int = 1 << 16) -> Iterable[str]:
    lines = text.split("\n")
    for i in range(0, len(lines), 512):
        yield "\n".join(lines[i : i + 512]) + "\n"


# ---- weights ------------------------------------------------------------------------------
def _weights(spec: TinySpec, seed: int) -> dict[str, np.ndarray]:
    """HF-named float32 tensors, drawn in a fixed order from one seeded generator."""
    rng = np.random.Generator(np.random.PCG64(seed))

    def normal(shape: tuple[int, ...], std: float) -> np.ndarray:
        return (rng.standard_normal(shape, dtype=np.float32) * np.float32(std)).astype(np.float32)

    def norm_weight() -> np.ndarray:
        return (1.0 + normal((spec.hidden,), 0.1)).astype(np.float32)

    h, q, kv = spec.hidden, spec.heads * spec.head_dim, spec.kv_heads * spec.head_dim
    w: dict[str, np.ndarray] = {"model.embed_tokens.weight": normal((spec.vocab, h), 1.0)}
    for i in range(spec.layers):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = norm_weight()
        w[p + "self_attn.q_proj.weight"] = normal((q, h), h**-0.5)
        w[p + "self_attn.k_proj.weight"] = normal((kv, h), h**-0.5)
        w[p + "self_attn.v_proj.weight"] = normal((kv, h), h**-0.5)
        w[p + "self_attn.o_proj.weight"] = normal((h, q), q**-0.5)
        w[p + "post_attention_layernorm.weight"] = norm_weight()
        w[p + "mlp.gate_proj.weight"] = normal((spec.ffn, h), h**-0.5)
        w[p + "mlp.up_proj.weight"] = normal((spec.ffn, h), h**-0.5)
        w[p + "mlp.down_proj.weight"] = normal((h, spec.ffn), spec.ffn**-0.5)
    w["model.norm.weight"] = norm_weight()
    w["lm_head.weight"] = normal((spec.vocab, h), spec.logit_scale * h**-0.5)
    return w


def _hf_config(spec: TinySpec) -> dict[str, Any]:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": spec.hidden,
        "intermediate_size": spec.ffn,
        "num_hidden_layers": spec.layers,
        "num_attention_heads": spec.heads,
        "num_key_value_heads": spec.kv_heads,
        "head_dim": spec.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": spec.max_positions,
        "rms_norm_eps": spec.rms_eps,
        "rope_theta": spec.rope_theta,
        "rope_scaling": None,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "vocab_size": spec.vocab,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "pad_token_id": PAD_ID,
        "initializer_range": 0.02,
        "use_cache": True,
    }


def _permute_rope(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF's rotate-half Q/K rows to GGML's interleaved layout (llama.cpp's converter)."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def _gguf_name(hf: str) -> str:
    fixed = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    if hf in fixed:
        return fixed[hf]
    _, _, i, rest = hf.split(".", 3)
    part = {
        "input_layernorm.weight": "attn_norm.weight",
        "self_attn.q_proj.weight": "attn_q.weight",
        "self_attn.k_proj.weight": "attn_k.weight",
        "self_attn.v_proj.weight": "attn_v.weight",
        "self_attn.o_proj.weight": "attn_output.weight",
        "post_attention_layernorm.weight": "ffn_norm.weight",
        "mlp.gate_proj.weight": "ffn_gate.weight",
        "mlp.up_proj.weight": "ffn_up.weight",
        "mlp.down_proj.weight": "ffn_down.weight",
    }[rest]
    return f"blk.{i}.{part}"


def _write_gguf(
    path: Path, spec: TinySpec, weights: dict[str, np.ndarray], tokenizer_json: dict[str, Any]
) -> None:
    import gguf

    vocab: dict[str, int] = tokenizer_json["model"]["vocab"]
    for added in tokenizer_json["added_tokens"]:
        vocab[added["content"]] = added["id"]
    tokens = [""] * spec.vocab
    for piece, idx in vocab.items():
        tokens[idx] = piece
    types = [
        int(gguf.TokenType.CONTROL) if i < len(SPECIAL_TOKENS) else int(gguf.TokenType.NORMAL)
        for i in range(spec.vocab)
    ]
    merges = [m if isinstance(m, str) else " ".join(m) for m in tokenizer_json["model"]["merges"]]

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("saga-tiny-llama")
    writer.add_context_length(spec.max_positions)
    writer.add_embedding_length(spec.hidden)
    writer.add_block_count(spec.layers)
    writer.add_feed_forward_length(spec.ffn)
    writer.add_head_count(spec.heads)
    writer.add_head_count_kv(spec.kv_heads)
    writer.add_key_length(spec.head_dim)
    writer.add_value_length(spec.head_dim)
    writer.add_rope_dimension_count(spec.head_dim)
    writer.add_rope_freq_base(spec.rope_theta)
    writer.add_layer_norm_rms_eps(spec.rms_eps)
    writer.add_vocab_size(spec.vocab)
    writer.add_file_type(int(gguf.LlamaFileType.ALL_F32))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(BOS_ID)
    writer.add_eos_token_id(EOS_ID)
    writer.add_pad_token_id(PAD_ID)
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)
    for hf_name, array in weights.items():
        if hf_name.endswith("q_proj.weight"):
            array = _permute_rope(array, spec.heads)
        elif hf_name.endswith("k_proj.weight"):
            array = _permute_rope(array, spec.kv_heads)
        writer.add_tensor(_gguf_name(hf_name), np.ascontiguousarray(array, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


# ---- build --------------------------------------------------------------------------------
def _dump(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def build(
    out_dir: str | Path, seed: int = 0, corpus: str = "auto", spec: TinySpec = TINY
) -> Path:
    """Write the tiny model's HF folder and ``model.gguf`` into ``out_dir``; returns it.

    Deterministic: the same seed, corpus text and spec give byte-identical files.
    """
    from safetensors.numpy import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text, used = corpus_text(corpus)
    tok = _train_tokenizer(text, spec.vocab)
    tok_json = json.loads(tok.to_str())
    (out / "tokenizer.json").write_text(
        json.dumps(tok_json, ensure_ascii=False, indent=None, sort_keys=False) + "\n",
        encoding="utf-8",
    )
    _dump(
        out / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": SPECIAL_TOKENS[BOS_ID],
            "eos_token": SPECIAL_TOKENS[EOS_ID],
            "pad_token": SPECIAL_TOKENS[PAD_ID],
            "add_bos_token": False,
            "add_eos_token": False,
            "clean_up_tokenization_spaces": False,
            "model_max_length": spec.max_positions,
            "chat_template": CHAT_TEMPLATE,
        },
    )
    _dump(
        out / "special_tokens_map.json",
        {
            "bos_token": SPECIAL_TOKENS[BOS_ID],
            "eos_token": SPECIAL_TOKENS[EOS_ID],
            "pad_token": SPECIAL_TOKENS[PAD_ID],
        },
    )
    _dump(out / "config.json", _hf_config(spec))
    _dump(
        out / "generation_config.json",
        {"bos_token_id": BOS_ID, "eos_token_id": [EOS_ID, END_ID], "pad_token_id": PAD_ID,
         "do_sample": False},
    )
    weights = _weights(spec, seed)
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    _write_gguf(out / "model.gguf", spec, weights, json.loads(tok.to_str()))
    files = sorted(p.name for p in out.iterdir() if p.name != "saga_tinymodel.json")
    _dump(
        out / "saga_tinymodel.json",
        {
            "builder": "saga.integrations.tinymodel",
            "seed": seed,
            "spec": asdict(spec),
            "dtype": "float32",
            "corpus": used,
            "corpus_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
            "corpus_chars": len(text),
            "files": {name: _sha256(out / name) for name in files},
        },
    )
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m saga.integrations.tinymodel --out DIR [--seed N] [--corpus C]``."""
    parser = argparse.ArgumentParser(
        prog="python -m saga.integrations.tinymodel",
        description="Build the tiny random Llama model (HF folder + model.gguf), no hub needed.",
    )
    parser.add_argument("--out", required=True, help="output folder (created)")
    parser.add_argument("--seed", type=int, default=0, help="weights seed (default 0)")
    parser.add_argument(
        "--corpus",
        choices=("auto", "traces", "builtin"),
        default="auto",
        help="tokenizer training text: LMCache traces, built-in generated text, or traces "
        "when present (default)",
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        out = build(args.out, seed=args.seed, corpus=args.corpus)
    except (FileNotFoundError, RuntimeError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    manifest = json.loads((out / "saga_tinymodel.json").read_text(encoding="utf-8"))
    print(f"wrote {out} (seed {args.seed}, corpus {manifest['corpus']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
