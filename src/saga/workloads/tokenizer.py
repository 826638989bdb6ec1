"""An offline byte-level BPE tokenizer, trained deterministically on the text it will encode.

No model hub is reachable at run time, so the LMCache readers train a small byte-level BPE
(the ``tokenizers`` package, GPT-2 style pre-tokenization) on a fixed sample of the trace's
own text: the first ``sample_chars`` characters of its records in file order. Training is
deterministic (same text, same vocabulary) and takes well under a second.

Text is encoded line by line (each line keeps its newline) with a cache per distinct line:
agent prompts repeat earlier prompts almost entirely, so this makes encoding a trace cheap,
and it makes tokenization prefix-stable at line boundaries: two prompts that agree up to a
line break get the same token ids up to there, as a real engine's prefix cache needs.
Token counts are close to, not equal to, a production tokenizer's.
"""

from __future__ import annotations

from collections.abc import Iterable

from saga.errors import UserError


class LineBPE:
    """Byte-level BPE trained on ``texts``; :meth:`encode` returns token ids."""

    def __init__(self, texts: Iterable[str], *, vocab_size: int = 8192,
                 sample_chars: int = 2_000_000) -> None:
        try:
            from tokenizers import Tokenizer, models, pre_tokenizers, trainers
        except ImportError:  # pragma: no cover - depends on the environment
            raise UserError("the LMCache readers need the 'tokenizers' package: "
                            "pip install tokenizers") from None
        sample: list[str] = []
        size = 0
        for t in texts:
            if size >= sample_chars:
                break
            sample.append(t[: sample_chars - size])
            size += len(sample[-1])
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
        tok.train_from_iterator(sample, trainer)
        self._tok = tok
        self._cache: dict[str, list[int]] = {}

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, encoded line by line."""
        lines = text.splitlines(keepends=True)
        missing = [ln for ln in dict.fromkeys(lines) if ln not in self._cache]
        if missing:
            for ln, enc in zip(missing, self._tok.encode_batch(missing), strict=True):
                self._cache[ln] = list(enc.ids)
        out: list[int] = []
        for ln in lines:
            out.extend(self._cache[ln])
        return out
