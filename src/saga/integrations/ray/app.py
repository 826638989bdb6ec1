"""Build and run a SAGA application on Ray Serve (what ``saga ray`` does).

:func:`build_app` binds :class:`~.deployments.SagaIngress` (``routers`` replicas) to the
engine deployment (``replicas`` of :class:`~.deployments.EmulatorReplica` or
:class:`~.deployments.VLLMReplica`) configured with the chosen request router.
:func:`start` connects to a Ray cluster (``address``: ``auto`` for one started with
``ray start``, None for a local instance), ships this SAGA's sources to the workers, and
runs the application on Serve's HTTP proxy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import ray
from ray.serve.config import RequestRouterConfig

import saga
from saga.integrations.ray.config import ROUTERS, RayAppConfig
from saga.integrations.ray.deployments import EmulatorReplica, SagaIngress, VLLMReplica
from saga.integrations.ray.router import STATE_NAMESPACE, state_actor
from saga.integrations.ray.serve_ready import START_DEADLINE_S, run_app, start_serve


def router_config(config: RayAppConfig) -> RequestRouterConfig:
    kwargs: dict[str, Any] = {}
    if config.router == "saga-ray":
        kwargs = {"policy": config.policy, "slots": config.replicas,
                  "cluster": config.cluster, "block_tokens": config.block_tokens,
                  "state_actor": config.state_actor, "state_namespace": STATE_NAMESPACE,
                  # vLLM replicas pass a pin on as saga_ttl; emulator replicas take none
                  "retains": config.engine == "vllm",
                  "learn_token_scale": config.learn_token_scale}
    fields: dict[str, Any] = {
        "request_router_class": ROUTERS[config.router], "request_router_kwargs": kwargs,
        "request_routing_stats_period_s": config.stats_period,
        "request_routing_stats_timeout_s": max(1.0, 2 * config.stats_period),
        # a held request asks again soon: the gate opens when a call ends
        "initial_backoff_s": 0.01, "max_backoff_s": 0.1,
    }
    return RequestRouterConfig(**fields)


def build_app(config: RayAppConfig) -> Any:
    """The Serve application for ``config`` (bound, not yet running)."""
    options: dict[str, Any] = {
        "num_replicas": config.replicas,
        "max_ongoing_requests": config.max_ongoing_requests,
        "request_router_config": router_config(config),
    }
    # Serve's decorator makes deployments of the classes (its stubs do not say so)
    vllm, emulator, ingress = cast(Any, VLLMReplica), cast(Any, EmulatorReplica), \
        cast(Any, SagaIngress)
    if config.engine == "vllm":
        engine = vllm.options(**options).bind(
            config.vllm_urls, block_tokens=config.block_tokens,
            kv_events=config.vllm_kv_events or None)
    else:
        engine = emulator.options(**options).bind(
            config.cluster, config.time_scale, config.block_tokens)
    ingress_options: dict[str, Any] = {"num_replicas": config.routers,
                                       "max_ongoing_requests": 4096}
    if config.ingress_affinity:
        hashed: dict[str, Any] = {"request_router_class": CONSISTENT_HASH}
        ingress_options["request_router_config"] = RequestRouterConfig(**hashed)
    return ingress.options(**ingress_options).bind(engine, config.block_tokens, config.keys)


#: Ray's consistent-hash router, for the proxy's choice of ingress replica.
CONSISTENT_HASH = "ray.serve.experimental.consistent_hash_router.ConsistentHashRouter"
#: The header Serve's proxy reads a session id from (for the ingress's consistent hashing).
SESSION_HEADER_ENV = "RAY_SERVE_SESSION_ID_HEADER_KEY"


def runtime_env() -> dict[str, Any]:
    """Workers import the same SAGA as this process (its source directory), and Serve's
    proxy reads the workflow header as the session id."""
    src = str(Path(saga.__file__).resolve().parents[1])
    return {"env_vars": {"PYTHONPATH": src, SESSION_HEADER_ENV: "x-saga-workflow"}}


def start(config: RayAppConfig, *, address: str | None = None, port: int = 8000,
          num_cpus: int | None = None, deadline_s: float = START_DEADLINE_S) -> Any:
    """Connect to (or start) Ray, create the state actor, run the application; Serve's
    proxy is waited for up to ``deadline_s`` (not Serve's fixed 60 s: a loaded machine
    starts it slowly, :mod:`~.serve_ready`)."""
    if not ray.is_initialized():
        ray.init(address=address, num_cpus=num_cpus if address is None else None,
                 runtime_env=runtime_env(), namespace=STATE_NAMESPACE,
                 include_dashboard=False, log_to_driver=False)
    host = "0.0.0.0" if address else "127.0.0.1"
    start_serve({"host": host, "port": port}, deadline_s)
    if config.router == "saga-ray":
        actor = state_actor(config.state_actor)
        ray.get(actor.ping.remote())
    return run_app(build_app(config), name=config.name, route_prefix=config.route_prefix,
                   url=f"http://127.0.0.1:{port}", deadline_s=deadline_s)
