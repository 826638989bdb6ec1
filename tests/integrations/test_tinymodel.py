"""The tiny model builds deterministically and matches the ``tiny-llama`` cost-model preset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("safetensors", reason="needs the `engines` extra (safetensors, gguf)")
gguf = pytest.importorskip("gguf", reason="needs the `engines` extra (safetensors, gguf)")

from safetensors.numpy import load_file  # noqa: E402

from saga.engine.hardware import get_model, llama_params  # noqa: E402
from saga.integrations.tinymodel import (  # noqa: E402
    SPECIAL_TOKENS,
    TINY,
    _permute_rope,
    build,
)

FILES = (
    "config.json",
    "generation_config.json",
    "model.gguf",
    "model.safetensors",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "saga_tinymodel.json",
)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """Seed 0 twice and seed 1 once, all on the built-in corpus (no traces needed)."""
    a = build(tmp_path_factory.mktemp("a"), seed=0, corpus="builtin")
    b = build(tmp_path_factory.mktemp("b"), seed=0, corpus="builtin")
    c = build(tmp_path_factory.mktemp("c"), seed=1, corpus="builtin")
    return a, b, c


def test_same_seed_same_bytes(built: tuple[Path, Path, Path]) -> None:
    a, b, c = built
    for name in FILES:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    # Another seed changes the weights, not the tokenizer (trained on the same text).
    assert (a / "model.safetensors").read_bytes() != (c / "model.safetensors").read_bytes()
    assert (a / "tokenizer.json").read_bytes() == (c / "tokenizer.json").read_bytes()


def test_shape_matches_the_cost_model_preset(built: tuple[Path, Path, Path]) -> None:
    a = built[0]
    config = json.loads((a / "config.json").read_text())
    spec = get_model("tiny-llama")
    assert (config["num_hidden_layers"], config["hidden_size"], config["num_attention_heads"],
            config["num_key_value_heads"], config["head_dim"], config["intermediate_size"],
            config["vocab_size"]) == (spec.layers, spec.hidden, spec.heads, spec.kv_heads,
                                      spec.head_dim, spec.ffn, spec.vocab)
    assert config["torch_dtype"] == "float32" and spec.dtype_bytes == 4
    weights = load_file(str(a / "model.safetensors"))
    n = sum(w.size for w in weights.values())
    assert n == spec.params == llama_params(4, 256, 4, 2, 64, 688, 2048)
    assert all(w.dtype == np.float32 for w in weights.values())


def test_gguf_holds_the_same_weights_and_tokenizer(built: tuple[Path, Path, Path]) -> None:
    a = built[0]
    reader = gguf.GGUFReader(str(a / "model.gguf"))
    tensors = {t.name: np.asarray(t.data) for t in reader.tensors}
    hf = load_file(str(a / "model.safetensors"))
    assert len(tensors) == len(hf)
    np.testing.assert_array_equal(tensors["token_embd.weight"], hf["model.embed_tokens.weight"])
    np.testing.assert_array_equal(tensors["output.weight"], hf["lm_head.weight"])
    np.testing.assert_array_equal(
        tensors["blk.2.ffn_down.weight"], hf["model.layers.2.mlp.down_proj.weight"]
    )
    np.testing.assert_array_equal(
        tensors["blk.0.attn_k.weight"],
        _permute_rope(hf["model.layers.0.self_attn.k_proj.weight"], TINY.kv_heads),
    )
    field = reader.fields["tokenizer.ggml.tokens"]
    tokens = [bytes(field.parts[i]).decode() for i in field.data]
    vocab = json.loads((a / "tokenizer.json").read_text())["model"]["vocab"]
    assert len(tokens) == TINY.vocab
    assert tokens[: len(SPECIAL_TOKENS)] == list(SPECIAL_TOKENS)
    assert all(tokens[i] == piece for piece, i in vocab.items())


def test_rope_permutation_is_a_row_permutation() -> None:
    w = np.arange(128 * 3, dtype=np.float32).reshape(128, 3)
    p = _permute_rope(w, 2)
    assert sorted(map(tuple, p.tolist())) == sorted(map(tuple, w.tolist()))
    # Within a head, GGML interleaves the two rotary halves: rows 0, 32, 1, 33, ...
    assert p[:4, 0].tolist() == [w[0, 0], w[32, 0], w[1, 0], w[33, 0]]


def test_tokenizer_round_trips_text(built: tuple[Path, Path, Path]) -> None:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(built[0] / "tokenizer.json"))
    text = "def call(self):\n    return 42  # ünïcode ✓ <|user|>"
    ids = tok.encode(text).ids
    assert tok.decode(ids, skip_special_tokens=False) == text
    assert tok.token_to_id("<|user|>") in ids
    assert tok.get_vocab_size() == TINY.vocab


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from saga.integrations.tinymodel import main

    assert main(["--out", str(tmp_path / "m"), "--seed", "3", "--corpus", "builtin"]) == 0
    assert "seed 3" in capsys.readouterr().out
    manifest = json.loads((tmp_path / "m" / "saga_tinymodel.json").read_text())
    assert manifest["seed"] == 3 and manifest["corpus"] == "builtin"
