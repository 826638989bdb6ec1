"""A replica's report of its engine's KV events, as the index a router's view reads.

SAGA's gateway reads vLLM's KV events itself (:mod:`saga.gateway.kv_events`); on Ray
Serve the replica deployment subscribes to its engine's events and reports, through
``record_routing_stats()``, how many tokens of each workflow's last prompt the engine
still holds, in the engine's tokens (:class:`~.vllm.PrefixReport`). The router's view
(:class:`saga.gateway.view.ApproxPrefixIndex`) cuts its prefix estimate with an
index's :meth:`~saga.gateway.kv_events.KVIndex.session_prefix_blocks`;
:class:`ReportedPrefixes` answers it from the last report, so the gateway's matching
code runs unchanged. A workflow the report does not name (the replica has not served it
lately, or the report predates its first call there) is not cut: the estimate stands.
"""

from __future__ import annotations

from collections.abc import Mapping

from saga.gateway.kv_events import KVIndex

#: What "not cut" reads as: more blocks than any estimate can match.
_UNKNOWN = 1 << 40


class ReportedPrefixes(KVIndex):
    """The last report of one replica (tokens per workflow), read in blocks of
    ``block_tokens``. Only :meth:`session_prefix_blocks` is meaningful (the view reads
    nothing else); nothing is applied to it."""

    def __init__(
        self, prefix_tokens: Mapping[str, int], block_tokens: int, ratio: float = 1.0,
    ) -> None:
        super().__init__()
        self.prefix_tokens = dict(prefix_tokens)
        self.block_tokens = block_tokens
        #: The view's tokens per engine token (1: the view counts in the engine's tokens).
        self.ratio = ratio

    def session_prefix_blocks(self, session: str) -> int:
        tokens = self.prefix_tokens.get(session)
        if tokens is None:
            return _UNKNOWN
        return int(tokens * self.ratio) // self.block_tokens
