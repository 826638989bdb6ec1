"""The typed configuration of a SAGA application on Ray Serve (``saga ray --config``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: The request routers a deployment may use, by the names the benchmark reports. Ray's
#: own are timed subclasses (:mod:`.timed`): unchanged but for recording decision times.
ROUTERS: dict[str, str] = {
    "saga-ray": "saga.integrations.ray.router.SagaRequestRouter",
    "ray-pow2": "saga.integrations.ray.timed.TimedPow2Router",
    "ray-consistent-hash": "saga.integrations.ray.timed.TimedConsistentHashRouter",
    "ray-prefix-affinity": "saga.integrations.ray.timed.TimedPrefixAffinityRouter",
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
    vllm_kv_events: list[str] = Field(
        default_factory=list,
        description="Per replica, the endpoint (tcp://HOST:PORT on the replica's node) its "
        "subscriber to vLLM's KV cache events binds; start vLLM i with --kv-events-config "
        "naming endpoint i. Empty: no events, the routers keep their prefix estimate.")
    learn_token_scale: bool = Field(
        True, description="The routers count prompts in the engines' tokens: their text "
        "estimate (characters / 4) scaled by the ratio the replicas report of the calls "
        "they answered (usage.prompt_tokens over the estimates), as the gateway's "
        "learn_token_scale. Off: the plain estimate.")
    max_ongoing_requests: int = Field(64, ge=1, description="Calls a replica takes at once.")
    stats_period: float = Field(0.5, gt=0, description="record_routing_stats period, s.")
    state_actor: str = Field("saga-ray-state", description="The shared state actor's name.")
    keys: dict[str, str] = Field(default_factory=dict, description="API key -> tenant.")
    ingress_affinity: bool = Field(
        True, description="Serve's proxy sends a workflow's calls to one ingress replica "
        "(consistent hashing of x-saga-workflow; needs RAY_SERVE_SESSION_ID_HEADER_KEY="
        "x-saga-workflow in the proxy's environment, which `saga ray` sets when it starts "
        "Ray): its router then knows the workflow and asks the shared state only for a "
        "workflow's first call, or after a router replica died. Off: calls spread over the "
        "ingress replicas and the routers agree through the shared state alone.")

    @model_validator(mode="after")
    def _check(self) -> RayAppConfig:
        if self.router not in ROUTERS:
            raise ValueError(f"router {self.router!r}: choose one of {', '.join(ROUTERS)}")
        if self.engine == "vllm" and not self.vllm_urls:
            raise ValueError("engine vllm needs vllm_urls (one per replica)")
        if self.vllm_kv_events and len(self.vllm_kv_events) != self.replicas:
            raise ValueError("vllm_kv_events: one endpoint per replica "
                             f"({len(self.vllm_kv_events)} for {self.replicas} replicas)")
        return self

    @classmethod
    def load(cls, path: Path) -> RayAppConfig:
        import tomllib

        return cls.model_validate(tomllib.loads(path.read_text()))
