"""From prompt text to the KV-block model: runs whose identity is exact prefix identity.

The gateway and the emulator see text, not token ids. Both map it the same way:

* a prompt's *text* is the ``prompt`` string of ``/v1/completions``, or for
  ``/v1/chat/completions`` every message rendered as ``<|role|>\\n{content}\\n`` in order;
* its *token count* is estimated as ``ceil(characters / 4)`` (no tokenizer: cheap and
  deterministic; real engines count differently, so this is approximate);
* the text is cut into blocks of ``4 * block_tokens`` characters; only full blocks are
  keyed (as vLLM keys only full blocks);
* block ``i`` is named by a hash chained on block ``i - 1`` (BLAKE2b, 8 bytes), as vLLM's
  block hashes, and becomes the run ``("h:" + hash, 0, 1)``.

Because each name covers its whole prefix, two prompts share exactly the blocks of
their common prefix, across workflows too (a shared system prompt is found by every
workflow that sends it, as in vLLM's prefix cache). A namespace per workflow is
therefore unnecessary for exactness, and would hide that sharing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from saga.engine.kvcache import Run

CHARS_PER_TOKEN = 4


def estimate_tokens(text: str) -> int:
    """Tokens of ``text``, estimated as ceil(characters / 4), at least 1."""
    return max(1, -(-len(text) // CHARS_PER_TOKEN))


def chat_text(messages: Iterable[Mapping[str, Any]]) -> str:
    """The text of a chat prompt: each message as ``<|role|>\\n{content}\\n``."""
    parts: list[str] = []
    for message in messages:
        parts.append(f"<|{message.get('role', '')}|>\n{content_text(message.get('content'))}\n")
    return "".join(parts)


def content_text(content: object) -> str:
    """A message's content as text: a string, or the ``text`` of its content parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(part.get("text", "")) for part in content if isinstance(part, Mapping)
        )
    return str(content)


def text_runs(text: str, block_tokens: int) -> tuple[Run, ...]:
    """The full blocks of ``text`` as chained-hash runs (see the module docstring)."""
    size = block_tokens * CHARS_PER_TOKEN
    data = text.encode("utf-8", "surrogatepass")
    # Cut on characters, not bytes, so that the estimate and the blocks agree.
    full = len(text) // size
    if full == 0:
        return ()
    if len(data) != len(text):  # non-ASCII: slice the str
        chunks: Sequence[bytes] = [
            text[i * size : (i + 1) * size].encode("utf-8", "surrogatepass") for i in range(full)
        ]
    else:
        chunks = [data[i * size : (i + 1) * size] for i in range(full)]
    runs: list[Run] = []
    previous = b""
    for chunk in chunks:
        digest = hashlib.blake2b(previous + chunk, digest_size=8).digest()
        runs.append(("h:" + digest.hex(), 0, 1))
        previous = digest
    return tuple(runs)
