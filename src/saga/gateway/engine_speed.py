"""How much slower (or faster) the engines serve than the gateway's cost model predicts.

The gateway sees no progress inside an engine: it ages each running call's prefill backlog
by the cost model's predicted prefill time (saga.gateway.view.RemoteReplicaView.age). When
the engines run slower than that prediction (CPU replicas on a busy host, a preset fitted
on another machine), a call still prefilling looks done, its replica looks free, and a
placement moves workflows away from their KV towards a replica that is in fact busy. The
answers say how long calls took: each finished call is a sample of its observed time from
its slot to its answer over the time the view predicted for it (its prefill after the ones
sent before it on that replica, then its decode alone, in the tokens the engine counted),
and the views age their backlogs by the learned factor. One factor for the gateway's
engines (``GatewayConfig.learn_engine_speed``): on the CPU replicas of one host a slow
spell slows them all, and a replica that has answered nothing yet borrows what the others
showed (docs/gateway.md, "Engine speed").
"""

from __future__ import annotations

import math

#: Weight of a new sample in the running mean of log ratios.
RATE = 0.2
#: One sample's ratio is clipped to this range (a lost or stalled answer is one sample).
LOW, HIGH = 0.25, 8.0


class EngineSpeed:
    """The engines' time over the cost model's: 1.0 until an answer says otherwise."""

    def __init__(self) -> None:
        self._log = 0.0
        self.samples = 0

    @property
    def factor(self) -> float:
        return math.exp(self._log)

    def observe(self, predicted: float, observed: float) -> None:
        """A call the view predicted would take ``predicted`` seconds took ``observed``."""
        if not (predicted > 0 and observed > 0 and math.isfinite(predicted)):
            return
        ratio = min(max(observed / predicted, LOW), HIGH)
        self._log += RATE * (math.log(ratio) - self._log)
        self.samples += 1
