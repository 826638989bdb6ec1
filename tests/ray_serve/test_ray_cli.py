"""``saga ray``'s configuration (the launch itself is tested end to end)."""

from __future__ import annotations

from pathlib import Path

import pytest

from saga.cli import build_parser
from saga.errors import UserError
from saga.integrations.ray.cli import config_from


def test_flags_override_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "ray.toml"
    path.write_text('router = "ray-pow2"\nreplicas = 3\ncluster = "test-2"\n')
    args = build_parser().parse_args(["ray", "--config", str(path), "--replicas", "4"])
    config = config_from(args)
    assert (config.router, config.replicas, config.cluster) == ("ray-pow2", 4, "test-2")


def test_a_vllm_engine_needs_its_servers() -> None:
    args = build_parser().parse_args(["ray", "--engine", "vllm"])
    with pytest.raises(UserError, match="vllm_urls"):
        config_from(args)


def test_an_unknown_router_is_refused() -> None:
    args = build_parser().parse_args(["ray", "--router", "nope"])
    with pytest.raises(UserError, match="saga-ray"):
        config_from(args)


def test_kv_event_endpoints_are_one_per_replica() -> None:
    args = build_parser().parse_args([
        "ray", "--engine", "vllm", "--replicas", "2", "--vllm-url", "http://a:1",
        "--vllm-url", "http://b:1", "--vllm-kv-events", "tcp://127.0.0.1:5601"])
    with pytest.raises(UserError, match="one endpoint per replica"):
        config_from(args)
    args.vllm_kv_events.append("tcp://127.0.0.1:5602")
    assert config_from(args).vllm_kv_events == ["tcp://127.0.0.1:5601", "tcp://127.0.0.1:5602"]


def test_only_vllm_replicas_are_sent_the_retention_decision() -> None:
    pytest.importorskip("ray.serve", reason="Ray Serve is not installed")
    from saga.integrations.ray.app import router_config
    from saga.integrations.ray.config import RayAppConfig

    vllm = RayAppConfig(engine="vllm", vllm_urls=["http://a:1", "http://b:1"])
    assert router_config(vllm).request_router_kwargs["retains"] is True
    assert router_config(RayAppConfig()).request_router_kwargs["retains"] is False
