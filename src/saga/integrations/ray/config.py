"""The typed configuration of a SAGA application on Ray Serve (``saga ray --config``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: The request routers a deployment may use, by the names the benchmark reports.
ROUTERS: dict[str, str] = {
    "saga-ray": "saga.integrations.ray.router.SagaRequestRouter",
    "ray-pow2": "ray.serve._private.request_router.pow_2_router."
                "PowerOfTwoChoicesRequestRouter",
    "ray-consistent-hash": "ray.serve.experimental.consistent_hash_router.ConsistentHashRouter",
    # the class ray.serve.llm.request_router re-exports (that module needs ray[llm])
    "ray-prefix-affinity": "ray.llm._internal.serve.routing_policies.prefix_aware."
                           "prefix_aware_router.PrefixCacheAffinityRouter",
}


class RayAppConfig(BaseModel):
    """One application: an ingress (the router replicas) in front of engine replicas."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("saga", description="The Serve application's name.")
    route_prefix: str = Field("/", description="Where the OpenAI API is served.")
    router: str = Field("saga-ray", description=f"One of {', '.join(ROUTERS)}.")
    policy: str = Field("saga", description="SAGA's policy (saga-ray only), by name.")
    routers: int = Field(2, ge=1, description="Ingress replicas, each with its own router.")
    replicas: int = Field(2, ge=1, description="Engine replicas.")
    engine: Literal["emulator", "vllm"] = "emulator"
    cluster: str = Field("small", description="The emulator's (and the policy's) preset.")
    time_scale: float = Field(1.0, gt=0, description="Emulated model seconds per second.")
    block_tokens: int = Field(64, ge=1)
    vllm_urls: list[str] = Field(default_factory=list,
                                 description="vLLM servers, one per replica (engine vllm).")
    max_ongoing_requests: int = Field(64, ge=1, description="Calls a replica takes at once.")
    stats_period: float = Field(0.5, gt=0, description="record_routing_stats period, s.")
    state_actor: str = Field("saga-ray-state", description="The shared state actor's name.")
    keys: dict[str, str] = Field(default_factory=dict, description="API key -> tenant.")

    @model_validator(mode="after")
    def _check(self) -> RayAppConfig:
        if self.router not in ROUTERS:
            raise ValueError(f"router {self.router!r}: choose one of {', '.join(ROUTERS)}")
        if self.engine == "vllm" and not self.vllm_urls:
            raise ValueError("engine vllm needs vllm_urls (one per replica)")
        return self

    @classmethod
    def load(cls, path: Path) -> RayAppConfig:
        import tomllib

        return cls.model_validate(tomllib.loads(path.read_text()))
