"""The gateway's typed, validated configuration (a TOML or JSON file)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from saga.errors import UserError, validation_reasons


class BackendConfig(BaseModel):
    """One inference replica behind the gateway."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str = Field(description="Base URL, e.g. http://127.0.0.1:9000 (no /v1).")
    admin_key: str | None = Field(
        None, repr=False,
        description="kind = emulator: the emulator's --admin-key, sent as a Bearer token "
        "on KV control calls (/saga/kv/*).",
    )
    kind: Literal["emulator", "openai", "vllm", "llamacpp"] = Field(
        "emulator",
        description="emulator: SAGA's emulator (takes priorities and the KV control API); "
        "vllm: vLLM's OpenAI server (workflow id in vllm_xargs, priority with "
        "priority_scheduling, prefix-cache counters read); llamacpp: llama.cpp's server "
        "(a slot per workflow, offload as slot save and restore, drop as slot erase); "
        "openai: any OpenAI-compatible server, hints not sent.",
    )
    priority_scheduling: bool = Field(
        False,
        description="kind = vllm: the server runs --scheduling-policy priority, so the "
        "scheduler's queue key is sent as the request's priority (vLLM rejects a non-zero "
        "priority otherwise).",
    )
    slots: int = Field(
        4, ge=1,
        description="kind = llamacpp: the server's slots (its --parallel); one per active "
        "workflow, least recently used first to go.",
    )
    kv_tokens: int = Field(
        0, ge=0,
        description="kind = llamacpp: the server's KV in tokens when its slots share one "
        "buffer (--kv-unified: its --ctx-size). The gateway then follows the server's "
        "purge of idle slots (lowest slot first, when a prompt finds no room) and restores "
        "a saved workflow whose own slot was purged. 0: not followed.",
    )
    restore_kept: bool = Field(
        False,
        description="kind = llamacpp: restore a workflow's save before each of its calls "
        "when the save holds all its KV, even when its slot should still hold it: the "
        "server purges idle slots without telling, more often than kv_tokens' rule "
        "predicts, and a restore of the same KV costs one server step where a missed "
        "purge costs the whole prompt's prefill. Off by default: on the real benchmark it "
        "removed the misses but no gain in mean TCT was shown (docs/engines.md, llama.cpp, "
        "fifth session). False: restore only a slot handed on or followed as purged.",
    )
    name: str | None = Field(None, description="Name in metrics (default: the URL).")
    max_concurrency: int = Field(
        256, ge=1, description="Most calls in flight at this backend; more wait at the gateway."
    )
    slot_save_path: str | None = Field(
        None,
        description="kind = llamacpp: the server's --slot-save-path as this gateway sees it "
        "(same machine or a shared mount). With it the gateway deletes a workflow's slot "
        "file when the slot is erased and when the workflow ends, sweeps saga-*.bin files "
        "left there at start, and keeps the files within slot_save_budget.",
    )
    slot_save_budget: int = Field(
        8 * 1024**3, ge=0,
        description="kind = llamacpp with slot_save_path: most bytes of saved slots; beyond, "
        "the oldest saves are deleted (their workflows' next calls recompute).",
    )

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"backend url {url!r} must start with http:// or https://")
        return url.rstrip("/")

    @property
    def label(self) -> str:
        return self.name or self.url


class TenantConfig(BaseModel):
    """A tenant: its API keys, its weight in fair share and its SLO."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    keys: list[str] = Field(
        min_length=1, repr=False,
        description="API keys (Bearer tokens) of the tenant; compared in constant time, "
        "never logged.",
    )
    weight: float = Field(1.0, gt=0, description="Share weight when backends are saturated.")
    slo: float | None = Field(
        None, gt=1.0, description="TCT objective as a slowdown factor; none is best effort."
    )


class StoreConfig(BaseModel):
    """Where shared state lives (session affinity, tenant accounts, learned graphs)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["memory", "redis"] = Field(
        "memory", description="memory: this process only; redis: shared by several gateways."
    )
    url: str = Field("redis://127.0.0.1:6379/0", description="Redis URL (kind = redis).")
    prefix: str = Field("saga:", description="Key prefix in Redis.")
    max_sessions: int = Field(
        1_000_000, ge=1,
        description="Most workflow sessions kept (beside their TTL); beyond, the least "
        "recently placed go first, counted in saga_store_sessions_evicted_total.",
    )
    socket_timeout: float = Field(
        2.0, gt=0,
        description="kind = redis: seconds a command may take before it fails (a hung "
        "Redis must not stall the calls or graph sync; the gateway serves without the "
        "store meanwhile).",
    )
    connect_timeout: float = Field(
        1.0, gt=0, description="kind = redis: seconds to (re)connect.",
    )
    max_connections: int = Field(
        64, ge=1,
        description="kind = redis: most connections to Redis; a command waits for a free "
        "one (at most socket_timeout) rather than opening more.",
    )
    graph_log_length: int = Field(
        1000, ge=1,
        description="Entries kept in the log of learned-graph observations that gateways "
        "share (each a batch of at most 256 observations; Redis trims approximately). A "
        "gateway that falls further behind, or starts later, misses the older entries.",
    )


class GatewayConfig(BaseModel):
    """``saga serve --config FILE``. Every field has a default but ``backends``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(8000, ge=0, le=65535, description="Port to listen on.")
    policy: str = Field("vllm-affinity", description="Scheduling policy (see `saga list`).")
    plugins: list[str] = Field(
        default_factory=list,
        description="Python modules imported before the policy is built (they may register "
        "policies with saga.sched.registry.register).",
    )
    cluster: str = Field(
        "small", description="Cluster preset whose cost model policies may use for predictions."
    )
    block_tokens: int = Field(64, ge=1, description="KV block size of the prefix model.")
    served_models: list[str] = Field(
        default_factory=list,
        description="Model names accepted (the first is listed first); empty accepts any.",
    )
    backends: list[BackendConfig] = Field(min_length=1, description="The replicas, in index order.")
    tenants: dict[str, TenantConfig] = Field(
        default_factory=dict,
        description="Tenants by name. Empty: no API key needed, every call is tenant 'default'.",
    )
    store: StoreConfig = Field(default_factory=StoreConfig, description="Shared state.")
    default_max_tokens: int = Field(
        256, ge=1, description="Output limit assumed for a call that sets none."
    )
    request_timeout: float = Field(600.0, gt=0, description="Seconds for a whole backend call.")
    connect_timeout: float = Field(5.0, gt=0, description="Seconds to connect to a backend.")
    health_interval: float = Field(2.0, gt=0, description="Seconds between health checks.")
    max_defer: float = Field(
        30.0, ge=0, description="Longest a deferred workflow waits at the gateway before a 429."
    )
    retain_wait: float = Field(
        1.0, ge=0, description="Longest a workflow's call waits for the retention step of "
        "its previous call (the pin hint it carries, a KV control call) before it goes on.",
    )
    # True: a gateway estimates prompts as characters / 4; on the real benchmark's agent
    # text the tiny model makes 2.5 characters a token, so SAGA's memory gate counted
    # working sets 0.6x what the engines held and admitted into thrashing (docs/gateway.md,
    # "Token scale").
    learn_token_scale: bool = Field(
        True,
        description="Scale the gateway's prompt-token estimates (characters / 4) by the "
        "ratio of the engines' prompt tokens (each answer's usage.prompt_tokens) to the "
        "estimates, over the calls answered so far (saga.wire.token_scale), so that the "
        "policy counts prompts, cached prefixes and KV in the engine's tokens. False: the "
        "plain estimate.",
    )
    token_scale_prior: float = Field(
        1.0, gt=0, le=16,
        description="With learn_token_scale, the engine tokens per estimated token assumed "
        "before the first answer (1: the plain estimate). Set it to 4 over your tokenizer's "
        "characters per token (1.6 for the tiny test model's 2.5) so that a burst arriving "
        "at a fresh gateway is counted as the engines will count it.",
    )
    learn_engine_speed: bool = Field(
        False,
        description="Learn how much slower than the cluster preset's cost model the "
        "engines serve, from each answered call's time against the view's prediction of "
        "it, and age the running calls' prefill backlog by that factor (saga.gateway."
        "engine_speed): a placement then does not take a busy replica for a free one when "
        "the engines run slower than the preset. False: the preset's speed as it is.",
    )
    sticky_sessions: bool = Field(
        True,
        description="Keep a workflow whose home another gateway chose (shared through the "
        "store) on that replica while it is up; the policy places every call of the "
        "workflows this gateway placed (and may move them).",
    )
    session_ttl: float = Field(
        3600.0, gt=0, description="Seconds a workflow's state (affinity, admission) is kept."
    )
    workflow_idle_timeout: float = Field(
        600.0, gt=0,
        description="A workflow with no call for this long (and no x-saga-end) is finished.",
    )
    graph_sync_interval: float | None = Field(
        1.0, ge=0,
        description="Seconds between exchanges of learned Agent Execution Graph observations "
        "with the other gateways sharing the store (policies that learn graphs: the saga "
        "family): this gateway publishes what its graphs observed and learns what the "
        "others published. 0 or null: off (the graphs learn from this gateway's calls only).",
    )
    graph_sync_backlog: int = Field(
        100_000, ge=1,
        description="Most observations kept for publishing while the store cannot be "
        "reached; beyond, the oldest are dropped (and counted in /metrics).",
    )

    admin_keys: list[str] = Field(
        default_factory=list, repr=False,
        description="Keys that may read /metrics and /saga/* (the learned graphs); tenants' "
        "keys get 403 there, no key 401. Closed by default: with no admin key and "
        "public_metrics false, nobody may read them.",
    )
    public_metrics: bool = Field(
        False,
        description="Serve /metrics and /saga/* to anyone, no key needed (a gateway on a "
        "private network whose scraper sends no key). They show every tenant's traffic "
        "and learned agent graphs.",
    )
    max_body_bytes: int = Field(
        8 * 1024 * 1024, ge=1024, description="Largest request body; larger is a 413."
    )
    max_output_tokens: int = Field(
        32768, ge=1, description="Largest max_tokens a call may ask for; larger is a 400."
    )
    max_pending: int = Field(
        4096, ge=1,
        description="Most calls inside the gateway at once (waiting, deferred or forwarded); "
        "more get a 429 with Retry-After at once.",
    )
    max_queue: int = Field(
        1024, ge=0,
        description="Most calls waiting for a slot at one backend; more get a 429.",
    )
    max_workflows: int = Field(
        100_000, ge=1, description="Most workflows tracked at once; a new one beyond is a 429."
    )
    max_agents_per_tenant: int = Field(
        256, ge=1,
        description="Most distinct agent names each tenant's calls are learned under (graphs, "
        "call statistics, gate accounting); a tenant's later new names share its catch-all "
        "agent '(other)', counted in saga_agent_names_folded_total (saga.gateway.agent_names).",
    )
    retries: int = Field(
        2, ge=0, le=10,
        description="Extra attempts, on another replica when one is up, for a call whose "
        "backend failed (unreachable, timed out, 5xx) before any byte reached the client.",
    )
    retry_budget: float = Field(
        0.2, ge=0.0, le=1.0,
        description="Retries allowed as a fraction of calls (a token bucket with a reserve "
        "of 10), so that retries cannot multiply the load of a failing cluster.",
    )
    retry_backoff: float = Field(
        0.05, ge=0.0, description="Seconds before the first retry (doubled for each next)."
    )

    @model_validator(mode="after")
    def _limits(self) -> GatewayConfig:
        if self.default_max_tokens > self.max_output_tokens:
            raise ValueError("default_max_tokens exceeds max_output_tokens")
        return self

    @model_validator(mode="after")
    def _unique_keys(self) -> GatewayConfig:
        seen: dict[str, str] = {}
        for name, tenant in self.tenants.items():
            for key in tenant.keys:
                if key in seen:
                    raise ValueError(f"API key used by tenants {seen[key]!r} and {name!r}")
                seen[key] = name
        if set(self.admin_keys) & seen.keys():
            raise ValueError("an admin key is also a tenant's API key")
        return self


def load_config(path: Path) -> GatewayConfig:
    """Read and validate a config file (``.toml`` or ``.json``)."""
    if not path.exists():
        raise UserError(f"config file not found: {path}")
    try:
        if path.suffix == ".json":
            data = json.loads(path.read_text())
        else:
            data = tomllib.loads(path.read_text())
    except (ValueError, tomllib.TOMLDecodeError) as error:
        raise UserError(f"{path}: cannot parse: {error}") from None
    try:
        return GatewayConfig.model_validate(data)
    except ValidationError as error:
        raise UserError(f"{path}: invalid config: {validation_reasons(error)}") from None
