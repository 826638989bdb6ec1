"""A call's retention step, which its workflow's next call waits for.

Once a call has finished, the gateway asks the policy what to do with its KV and carries
the decision out through the backend (:meth:`~saga.gateway.backends.Backend.retain`): a
KV control call to the emulator or llama.cpp, or, for vLLM, the ``saga_ttl`` hint that the
workflow's next call carries. That step runs after the client may already hold the whole
answer (a stream's last bytes go out before the call's bookkeeping), so an agent's next
call could be sent before it ends, and miss the hint or overtake the pin.

A step begins when the answer is complete at the gateway, before its end is written to the
client; the next call of the workflow waits for it, at most ``retain_wait`` seconds (a hung
backend must not stall a workflow). A call sent while an earlier one is still being
answered (parallel calls of one workflow) does not wait.
"""

from __future__ import annotations

import asyncio


class RetainStep:
    """The retention step of one call: not begun, running, or over."""

    __slots__ = ("_done",)

    def __init__(self) -> None:
        self._done: asyncio.Future[None] | None = None

    def begin(self) -> None:
        """The call's answer is complete at the gateway (its end not yet sent)."""
        if self._done is None:
            self._done = asyncio.get_running_loop().create_future()

    def end(self) -> None:
        """The step is over (carried out, failed, or nothing to do)."""
        if self._done is not None and not self._done.done():
            self._done.set_result(None)

    @property
    def running(self) -> bool:
        return self._done is not None and not self._done.done()

    async def wait(self, timeout: float) -> bool:
        """Wait until the step is over; False if ``timeout`` seconds passed first."""
        if self._done is None or self._done.done():
            return True
        try:
            await asyncio.wait_for(asyncio.shield(self._done), timeout)
        except TimeoutError:
            return False
        return True
