"""The policy's view of a backend carries its slot count when the backend keeps slots."""

from __future__ import annotations

from saga.gateway.app import Gateway
from saga.gateway.config import GatewayConfig


def test_a_llamacpp_backend_shows_its_slots_and_others_none() -> None:
    gateway = Gateway(GatewayConfig.model_validate({
        "policy": "saga", "cluster": "test-2",
        "backends": [{"url": "http://127.0.0.1:1", "kind": "llamacpp", "slots": 3},
                     {"url": "http://127.0.0.1:2", "kind": "openai", "slots": 3}]}))
    assert [view.slots for view in gateway.views] == [3, None]
    # the policy reads the same views
    assert [r.slots for r in gateway.policy.ctx.replicas] == [3, None]
