"""Which idle slots llama.cpp's server has purged, followed by its own rule.

With ``--kv-unified`` the slots of a llama-server share one KV buffer of ``--ctx-size``
tokens. When a prompt's batch finds no room, the server purges idle slots, one at a time,
lowest slot id first, until it fits (``try_clear_idle_slots`` in
``tools/server/server-context.cpp``), and tells no client. A workflow whose slot was
purged but not handed on then recomputes its whole prompt on its next call, though its
saved slot file could be restored in milliseconds.

:class:`SlotPurges` keeps, per slot, the tokens its KV holds as the gateway counts them
(each call's prompt estimate plus its output limit: what the call may fill) and applies
that rule at each call: the buffer's size is what the operator configured (the
backend's ``kv_tokens``), the prompts are the gateway's own estimates, so it knows no more
than a deployment does. A slot it marks purged that the server kept costs its workflow a
restore it did not need (the same KV again, one server step); a purge it misses costs the
recomputation it would have cost anyway.
"""

from __future__ import annotations

from collections.abc import Sequence


class SlotPurges:
    """The KV each slot of one llama-server holds, and the slots purged since their last
    call (``kv_tokens`` 0: not followed, nothing is ever marked)."""

    def __init__(self, slots: int, kv_tokens: int) -> None:
        self.kv_tokens = kv_tokens
        self.held = [0] * slots
        self.purged = [False] * slots
        self.count = 0  # slots marked purged so far

    def charge(self, slot: int, tokens: int, busy: Sequence[int]) -> list[int]:
        """A call that may fill ``tokens`` goes to ``slot`` (``busy``: per slot, calls in
        flight): the idle slots the server purges to make room for it, marked purged."""
        self.held[slot] = tokens
        self.purged[slot] = False
        if not self.kv_tokens:
            return []
        gone = []
        while sum(self.held) > self.kv_tokens:
            idle = [s for s, held in enumerate(self.held)
                    if s != slot and held and not busy[s]]
            if not idle:  # only running calls: the server fails them, not a purge
                break
            victim = idle[0]  # lowest slot id first, as the server goes
            self.held[victim] = 0
            self.purged[victim] = True
            gone.append(victim)
        self.count += len(gone)
        return gone

    def emptied(self, slot: int) -> None:
        """``slot`` holds nothing now (erased)."""
        self.held[slot] = 0
        self.purged[slot] = False
